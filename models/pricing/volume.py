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
- Late usage (`volume_late_amounts`) moves the whole counter to the tier of
  its new total: the late lines bill the price of the new total minus what
  was billed, so units billed before are re-priced and a flat fee that
  changed is billed too. A difference below zero (a volume discount reached
  late) is not billed: lowering finalized amounts needs a credit note.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from models.catalog import TierStep
from models.pricing.precision import exact

__all__ = [
    "volume_amount",
    "volume_late_amounts",
    "volume_line_amount",
    "volume_price",
    "volume_step",
]

Lines = Sequence[tuple[Sequence[TierStep], Decimal]]
"""Lines sharing one tier counter: each line's price steps and quantity."""


def volume_step(steps: Sequence[TierStep], total: Decimal) -> TierStep:
    for step in steps:
        if step.up_to is None or total <= step.up_to:
            return step
    raise ValueError("tiers have no open-ended last step")  # prevented by TieredPrice


@exact
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


@exact
def volume_price(lines: Lines, total: Decimal) -> Decimal:
    """What ``lines`` cost together at the tier of ``total``: each line's
    quantity at its price's tier, plus each distinct price's flat fee once."""
    if total <= 0:
        return Decimal(0)
    amount = Decimal(0)
    flat_charged: set[tuple[TierStep, ...]] = set()
    for steps, quantity in lines:
        step = volume_step(steps, total)
        amount += quantity * step.unit_price
        if quantity > 0 and tuple(steps) not in flat_charged:
            flat_charged.add(tuple(steps))
            amount += step.flat_fee
    return amount


@exact
def volume_late_amounts(
    billed: Lines, billed_amount: Decimal, late: Lines, total: Decimal
) -> list[Decimal]:
    """Exact amounts of the ``late`` lines of one counter whose ``billed``
    lines were billed ``billed_amount`` in all, ``total`` being the counter's
    new period total: together they bill ``price(billed + late) -
    billed_amount``, never less than zero. Each late line pays its own
    quantity at the new tier; the re-pricing of the billed units and the flat
    fee difference go to the first late line (or, when negative, come off
    the late lines in order, none below zero)."""
    due = max(volume_price([*billed, *late], total) - billed_amount, Decimal(0))
    own = [q * volume_step(steps, total).unit_price if total > 0 else Decimal(0)
           for steps, q in late]
    rest = due - sum(own, Decimal(0))
    if not own:
        return own
    if rest >= 0:
        own[0] += rest
        return own
    for i, amount in enumerate(own):
        take = min(amount, -rest)
        own[i] -= take
        rest += take
    return own
