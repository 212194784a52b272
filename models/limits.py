"""Which spend limits of a meter are in force at an instant (SPEC 12).

Invariants:
- A meter's limits at an instant are the plan's (``meter_limits``), then
  each limit override of the meter in force then (``[effective, until)``),
  in list order, replacing the fields it sets: a contract override over the
  plan, a later override over an earlier one.
- `limit_conflicts` finds every override that leaves a meter with a minimum
  above its maximum at some instant; limits can only change where a limit
  override starts or ends, so those instants (and the term start) suffice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from models.catalog import MeterLimit

if TYPE_CHECKING:
    from models.contract import RateOverride

__all__ = ["limit_conflicts", "limits_at"]


def limits_at(
    plan_limits: Sequence[MeterLimit], overrides: Sequence[RateOverride], meter: str,
    at: datetime,
) -> tuple[Decimal | None, Decimal | None]:
    """``(minimum, maximum)`` of ``meter`` per full billing period, in force at ``at``."""
    lo: Decimal | None = None
    hi: Decimal | None = None
    for lim in plan_limits:
        if lim.meter == meter:
            lo, hi = lim.minimum_amount, lim.maximum_amount
    for ov in overrides:
        if ov.is_limit and ov.meter == meter and ov.in_force(at):
            lo = lo if ov.minimum_amount is None else ov.minimum_amount
            hi = hi if ov.maximum_amount is None else ov.maximum_amount
    return lo, hi


def limit_conflicts(
    plan_limits: Sequence[MeterLimit], overrides: Sequence[RateOverride], start: datetime
) -> list[tuple[int, str, str]]:
    """Limit overrides that put a meter's minimum above its maximum from ``start``
    on: ``(index into overrides, field, reason)``, each override once."""
    out: list[tuple[int, str, str]] = []
    seen: set[int] = set()
    meters = {lim.meter for lim in plan_limits}
    meters |= {ov.meter for ov in overrides if ov.is_limit and ov.meter}
    for meter in sorted(meters):
        own = [(i, ov) for i, ov in enumerate(overrides) if ov.is_limit and ov.meter == meter]
        instants = {t for _, ov in own for t in (ov.effective, ov.until) if t is not None}
        for t in sorted(instants | {start}):
            lo, hi = limits_at(plan_limits, overrides, meter, t)
            live = [(i, ov) for i, ov in own if ov.in_force(t)]
            if lo is None or hi is None or lo <= hi or not live:
                continue  # (the plan's own limits are checked with the catalog)
            i, ov = live[-1]
            if i not in seen:
                seen.add(i)
                field = "minimum_amount" if ov.minimum_amount is not None else "maximum_amount"
                out.append((i, field, f"meter {meter!r} would have minimum {lo} above "
                                      f"maximum {hi} from {t.isoformat()}"))
    return out
