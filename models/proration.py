"""Fee proration by days (SPEC 2).

Invariant: ``prorate(full, days, full_days)`` = ``full x days / full_days``
rounded half up to the currency's minor unit; ``days == full_days`` returns
exactly ``round_money(full)``. Days are local calendar days.
"""

from __future__ import annotations

from decimal import Decimal

from models.money import mul_div, round_money

__all__ = ["prorate"]


def prorate(full_amount: Decimal, days: int, full_days: int, currency: str) -> Decimal:
    if full_days <= 0 or not 0 <= days <= full_days:
        raise ValueError(f"cannot prorate {days} of {full_days} days")
    return round_money(mul_div(full_amount, Decimal(days), Decimal(full_days)), currency)
