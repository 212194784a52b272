"""Which days of a rating window come from rollups, and which from raw events.

Pure date arithmetic for `activities.usage_query`. Invariants:

- the rollup days (``[lo, hi)`` minus ``skipped``) and the ``raw`` ranges
  partition ``[start, end)`` exactly: no instant is read twice or missed;
- a rollup day is a whole UTC day inside the window, before the
  compaction's ``folded_before``, with no cut (a part bound) strictly inside
  it: all of its events belong to one part, whichever part holds its start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Final

__all__ = ["DayPlan", "day_plan", "floor_day"]

_DAY: Final = timedelta(days=1)


def floor_day(t: datetime) -> datetime:
    """The UTC midnight at or before ``t``."""
    u = t.astimezone(UTC)
    return datetime.combine(u.date(), time(), tzinfo=UTC)


@dataclass(frozen=True)
class DayPlan:
    """Where each instant of ``[start, end)`` is read from.

    Rollups: the UTC days in ``[lo, hi)`` except ``skipped`` (days a cut
    falls strictly inside). Raw events: everything else, as ``raw`` ranges.
    """

    lo: datetime
    hi: datetime
    skipped: list[datetime]
    raw: list[tuple[datetime, datetime]]


def day_plan(
    start: datetime, end: datetime, cuts: Iterable[datetime], folded_before: datetime
) -> DayPlan | None:
    """Which days of ``[start, end)`` can be read from rollups (None: none can).

    A UTC day is read from rollups when it lies inside ``[start, end)``,
    before ``folded_before``, and no cut (a part bound) falls strictly inside
    it: all its events then belong to one part. Everything else (partial days
    at the ends, days holding a cut, days not folded yet) is read raw.
    """
    lo = floor_day(start)
    if lo < start:
        lo += _DAY
    hi = min(floor_day(end), folded_before)
    if lo >= hi:
        return None
    skipped = sorted(
        {d for t in cuts if start < t < end and (d := floor_day(t)) != t and lo <= d < hi}
    )
    if len(skipped) == (hi - lo) // _DAY:
        return None
    # the complement of the rollup days within [start, end)
    raw = [(start, lo), (hi, end), *((d, d + _DAY) for d in skipped)]
    return DayPlan(lo, hi, skipped, _merge(raw))


def _merge(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for a, b in sorted(r for r in ranges if r[0] < r[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
