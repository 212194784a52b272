"""Volume tiers: all units are priced at the tier the *total* quantity falls in.

Invariants:
- ``up_to`` is inclusive: a total of exactly 1000 with ``up_to: 1000`` uses
  the first tier.
- Zero total costs 0 (no flat fee). Otherwise the chosen tier's ``flat_fee``
  is charged once per period.
- Across several lines (groups of one meter, parts of a split period) the
  tier is chosen by the meter's period total; each line pays its own
  quantity x that tier's unit price, and the flat fee goes to the first line
  with a non-zero quantity (``include_flat_fee``).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from models.catalog import TierStep

__all__ = ["volume_amount", "volume_line_amount", "volume_step"]


def volume_step(steps: Sequence[TierStep], total: Decimal) -> TierStep:
    for step in steps:
        if step.up_to is None or total <= step.up_to:
            return step
    raise ValueError("tiers have no open-ended last step")  # prevented by TieredPrice


def volume_line_amount(
    steps: Sequence[TierStep], quantity: Decimal, total: Decimal, include_flat_fee: bool
) -> Decimal:
    """One line's share: ``quantity`` at the tier of ``total`` (+ flat fee if asked)."""
    if total <= 0:
        return Decimal(0)
    step = volume_step(steps, total)
    return quantity * step.unit_price + (step.flat_fee if include_flat_fee else Decimal(0))


def volume_amount(steps: Sequence[TierStep], quantity: Decimal) -> Decimal:
    """Cost of ``quantity`` units priced alone."""
    return volume_line_amount(steps, quantity, quantity, include_flat_fee=True)
