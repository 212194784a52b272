"""Pricing models, one small pure module each, plus price resolution.

- `unit`: quantity x unit price.
- `graduated`: each unit priced by the tier it falls in; a counter that may
  start above zero (``already``) so tiers can span several invoice lines.
- `volume`: every unit priced by the tier the *total* falls in.
- `package`: price per started block of ``size`` units, blocks spanning lines.
- `resolve`: which price applies to a group at an instant (rate card,
  overrides, discounts).

All functions return exact (unrounded) Decimals; rounding to the currency's
minor unit happens once per invoice line in `models.rating`.
"""

from models.pricing.graduated import graduated_amount, graduated_cost
from models.pricing.package import package_amount, package_blocks
from models.pricing.resolve import (
    ResolvedPrice,
    apply_discount,
    resolve_for_terms,
    resolve_price,
)
from models.pricing.unit import unit_amount
from models.pricing.volume import (
    volume_amount,
    volume_late_amounts,
    volume_line_amount,
    volume_price,
    volume_step,
)

__all__ = [
    "ResolvedPrice",
    "apply_discount",
    "graduated_amount",
    "graduated_cost",
    "package_amount",
    "package_blocks",
    "resolve_for_terms",
    "resolve_price",
    "unit_amount",
    "volume_amount",
    "volume_late_amounts",
    "volume_line_amount",
    "volume_price",
    "volume_step",
]
