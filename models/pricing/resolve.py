"""Which price applies to one group of one meter at one instant (SPEC 1).

Precedence, first hit wins:
1. an explicit-price override in force for the meter whose ``match`` is a
   subset of the group's dimensions (most specific wins; among equally
   specific ones the one added last wins, as amendments append);
2. otherwise the rate-card price (most specific matching entry, ``{}`` is the
   fallback), discounted by the meter-level discount override in force
   (most specific matching, last added wins), else by the contract-wide
   discount in force, else undiscounted.
No rate-card entry and no explicit override -> ``None`` (unpriced), never 0.

A discount of d% multiplies every money figure of the price by
``(1 - d/100)``: unit prices, tier unit prices and flat fees, package prices.
Tier bounds and package sizes are unchanged. Results stay exact.

Override windows are half-open ``[effective, until)``. Spend-limit overrides
(``minimum_amount`` / ``maximum_amount``, SPEC 12) carry no price: they never
take part here (`models.spend_limits` reads them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from models.catalog import (
    Meter,
    PackagePrice,
    Price,
    UnitPrice,
    matches,
    price_of,
)
from models.contract import ContractTerms, RateOverride
from models.money import strip_zeros
from models.pricing.precision import exact

__all__ = [
    "ResolvedPrice",
    "apply_discount",
    "relevant_overrides",
    "resolve_for_terms",
    "resolve_price",
]


class ResolvedPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    price: Price
    unit_price_shown: Decimal | None  # the invoice's unit_price; None for tiers/packages
    source: str  # e.g. "rate_card[1]" or "rate_card[0] -50% (rate_overrides[0])"


@exact
def apply_discount(price: Price, percent: Decimal) -> Price:
    factor = 1 - percent / 100

    def d(x: Decimal) -> Decimal:
        return strip_zeros(x * factor)

    # model_copy, not a constructor: a discounted price is derived, not input,
    # and may carry more than the 12 decimals input prices are bounded to
    # (0.0012 x (1 - 33.333333333333%) has 18).
    if isinstance(price, UnitPrice):
        return price.model_copy(update={"unit_price": d(price.unit_price)})
    if isinstance(price, PackagePrice):
        return price.model_copy(update={"price": d(price.price)})
    return price.model_copy(update={"steps": [
        s.model_copy(update={"unit_price": d(s.unit_price), "flat_fee": d(s.flat_fee)})
        for s in price.steps
    ]})


def _shown(price: Price) -> Decimal | None:
    return price.unit_price if isinstance(price, UnitPrice) else None


def relevant_overrides(
    overrides: Sequence[RateOverride], meter_key: str
) -> list[tuple[int, RateOverride]]:
    """Overrides that can change ``meter_key``'s prices (its own and contract-wide,
    never a spend limit), with indexes."""
    return [(i, o) for i, o in enumerate(overrides)
            if o.meter in (None, meter_key) and not o.is_limit]


def _best(
    candidates: Sequence[tuple[int, RateOverride]], dims: Mapping[str, str]
) -> tuple[int, RateOverride] | None:
    best: tuple[int, RateOverride] | None = None
    for i, o in candidates:
        if not matches(o.match, dict(dims)):
            continue
        # ">=" so that among equally specific overrides the later one wins
        if best is None or len(o.match) >= len(best[1].match):
            best = (i, o)
    return best


def resolve_price(
    meter: Meter,
    overrides: Sequence[RateOverride],
    dimensions: Mapping[str, str],
    at: datetime,
) -> ResolvedPrice | None:
    live = [(i, o) for i, o in relevant_overrides(overrides, meter.key) if o.in_force(at)]
    explicit = _best([(i, o) for i, o in live if o.meter and not o.is_discount], dimensions)
    if explicit is not None:
        i, o = explicit
        p = price_of(o)
        return ResolvedPrice(price=p, unit_price_shown=_shown(p), source=f"rate_overrides[{i}]")

    entry_index: int | None = None
    for j, e in enumerate(meter.rate_card):
        if matches(e.match, dict(dimensions)) and (
            entry_index is None or len(e.match) > len(meter.rate_card[entry_index].match)
        ):
            entry_index = j
    if entry_index is None:
        return None
    base = price_of(meter.rate_card[entry_index])
    source = f"rate_card[{entry_index}]"

    discount = _best([(i, o) for i, o in live if o.meter and o.is_discount], dimensions)
    if discount is None:
        discount = _best([(i, o) for i, o in live if o.meter is None], dimensions)
    if discount is None:
        return ResolvedPrice(price=base, unit_price_shown=_shown(base), source=source)
    i, o = discount
    assert o.discount_percent is not None
    p = apply_discount(base, o.discount_percent)
    return ResolvedPrice(
        price=p,
        unit_price_shown=_shown(p),
        source=f"{source} -{o.discount_percent}% (rate_overrides[{i}])",
    )


def resolve_for_terms(
    terms: ContractTerms, meter_key: str, dimensions: Mapping[str, str], at: datetime
) -> ResolvedPrice | None:
    """`resolve_price` with the meter and overrides taken from contract terms."""
    return resolve_price(terms.meter(meter_key), terms.rate_overrides, dimensions, at)
