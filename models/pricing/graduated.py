"""Graduated tiers: each unit is priced by the tier its position falls in.

Invariants:
- ``up_to`` is an inclusive upper bound: with ``up_to: 1000`` unit 1000 is
  still in the first tier, unit 1000.x / 1001 in the second.
- A tier's ``flat_fee`` is charged once, when the counter first enters the
  tier (quantity strictly above the tier's lower bound); zero usage costs 0.
- ``graduated_amount(q, already)`` = ``cost(already + q) - cost(already)``:
  splitting a quantity across lines in any way sums to the same total, which
  is how one tier counter spans all groups of a meter.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from models.catalog import TierStep
from models.pricing.precision import exact

__all__ = ["graduated_amount", "graduated_cost"]


@exact
def graduated_cost(steps: Sequence[TierStep], quantity: Decimal) -> Decimal:
    """Cost of units ``(0, quantity]``."""
    total = Decimal(0)
    lower = Decimal(0)
    for step in steps:
        if quantity <= lower:
            break
        upper = quantity if step.up_to is None else min(quantity, step.up_to)
        total += (upper - lower) * step.unit_price + step.flat_fee
        if step.up_to is None:
            break
        lower = step.up_to
    return total


@exact
def graduated_amount(
    steps: Sequence[TierStep], quantity: Decimal, already: Decimal = Decimal(0)
) -> Decimal:
    """Cost of units ``(already, already + quantity]`` on the shared counter."""
    if quantity < 0 or already < 0:
        raise ValueError("quantities must not be negative")
    return graduated_cost(steps, already + quantity) - graduated_cost(steps, already)
