"""Billing calendar: cycles, anchors, period boundaries, term end.

Invariants:
- Periods are half-open ``[start, end)``; boundaries are the first instant of a
  local calendar day (local midnight) in the contract's IANA timezone, returned
  as UTC-aware datetimes so callers never need zoneinfo themselves.
- ``start`` anchor: boundary k is ``anchor + k*cycle months`` computed from
  the anchor every time (never chained), day clamped to the month length:
  Jan 31 -> Feb 28/29 -> Mar 31 -> Apr 30.
- ``calendar`` anchor: boundaries on the 1st of calendar months/quarters/
  halves/years; first and last periods may be partial.
- `billing_periods` tiles ``[from, term_end)`` exactly: consecutive periods
  share endpoints, the first starts at ``from`` and the last ends at term end.
- A period is *partial* when it is shorter than the full cycle period that
  contains it (``full_start_date``/``full_end_date``); fees are prorated by
  local calendar days, so a 23-hour DST day counts as one day.
- Termination at an instant that is not a local midnight ends the term at the
  NEXT local midnight (`termination_end_date`): the customer's last day is
  billed as a whole day, never half of one.

Temporal note: `zoneinfo` reads tz data from disk. Workflow code must either
call these functions through an activity / sandbox passthrough, or (the
intended way) receive the precomputed UTC instants in `Period`.
"""

from __future__ import annotations

import calendar as _calendar
import itertools
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict

__all__ = [
    "BillingAnchor",
    "BillingCycle",
    "Period",
    "add_months",
    "billing_periods",
    "boundary_dates",
    "full_period_containing",
    "local_date",
    "local_midnight_utc",
    "next_boundary_date",
    "term_end_date",
    "termination_end_date",
    "validate_timezone",
]


class BillingCycle(StrEnum):
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    SEMIANNUAL = "semiannual"
    ANNUAL = "annual"

    @property
    def months(self) -> int:
        return _CYCLE_MONTHS[self]


_CYCLE_MONTHS = {
    BillingCycle.MONTHLY: 1,
    BillingCycle.QUARTERLY: 3,
    BillingCycle.SEMIANNUAL: 6,
    BillingCycle.ANNUAL: 12,
}


class BillingAnchor(StrEnum):
    START = "start"
    CALENDAR = "calendar"


@lru_cache(maxsize=256)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


# Zone files that stand for the host's own setting, not a place: a contract
# billed in one would change its boundaries with the machine it runs on.
_HOST_ZONES = frozenset({"localtime", "posixrules"})


def validate_timezone(tz: str) -> str:
    """Return ``tz`` if it is a known IANA zone name, else raise ValueError."""
    if tz in _HOST_ZONES:
        raise ValueError(f"{tz!r} is the host's zone, not a place: name an IANA zone "
                         "like 'Europe/Paris'")
    try:
        _zone(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {tz!r} (expected an IANA name like 'Europe/Paris')"
        ) from None
    return tz


def add_months(d: date, months: int) -> date:
    """``d`` shifted by ``months`` calendar months, day clamped to the month length."""
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    last = _calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(d.day, last))


def _month_index(d: date) -> int:
    return d.year * 12 + (d.month - 1)


def term_end_date(starts_on: date, term_months: int) -> date:
    """Exclusive end date of a term: ``starts_on + term_months`` (clamped)."""
    return add_months(starts_on, term_months)


def local_midnight_utc(d: date, tz: str) -> datetime:
    """The first instant of local day ``d`` in ``tz``, as a UTC datetime.

    If midnight does not exist locally (a DST gap at 00:00), zoneinfo's fold=0
    resolution yields the first instant that does exist.
    """
    return datetime.combine(d, time(0), tzinfo=_zone(tz)).astimezone(UTC)


def local_date(instant: datetime, tz: str) -> date:
    """The local calendar date of an aware instant in ``tz``."""
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return instant.astimezone(_zone(tz)).date()


def termination_end_date(effective: datetime, tz: str) -> date:
    """Exclusive end date of a term terminated at ``effective``.

    At a local midnight the term ends there; otherwise at the next local
    midnight (the partly used day is billed whole).
    """
    d = local_date(effective, tz)
    if local_midnight_utc(d, tz) == effective.astimezone(UTC):
        return d
    return d + timedelta(days=1)


def _grid_point(anchor: date, months: int, anchor_kind: BillingAnchor, k: int,
                day: int | None = None) -> date:
    if anchor_kind is BillingAnchor.START:
        # Each point from the anchor's month with the start's day of month,
        # clamped per month, never chained (SPEC.md section 2).
        point = add_months(anchor, k * months)
        if day is None or day == point.day:
            return point
        last = _calendar.monthrange(point.year, point.month)[1]
        return point.replace(day=min(day, last))
    y, m0 = divmod(k * months, 12)
    return date(y, m0 + 1, 1)


def _grid_index_at_or_before(anchor: date, months: int, anchor_kind: BillingAnchor, d: date,
                             day: int | None = None) -> int:
    """Largest k with grid point k <= d."""
    if anchor_kind is BillingAnchor.START:
        k = (_month_index(d) - _month_index(anchor)) // months
    else:
        k = _month_index(d) // months
    # clamping can push a point past d by a few days; step back if so, forward if possible
    while _grid_point(anchor, months, anchor_kind, k, day) > d:
        k -= 1
    while _grid_point(anchor, months, anchor_kind, k + 1, day) <= d:
        k += 1
    return k


def full_period_containing(
    anchor: date, cycle: BillingCycle, anchor_kind: BillingAnchor, d: date,
    day: int | None = None,
) -> tuple[date, date]:
    """The full cycle period ``[start, end)`` of the anchor grid that contains ``d``.

    ``day`` is the day of month start-anchored points fall on (clamped), when
    it is not ``anchor``'s own: after a cycle change the grid counts months
    from the change's boundary but keeps the start's day.
    """
    k = _grid_index_at_or_before(anchor, cycle.months, anchor_kind, d, day)
    return (
        _grid_point(anchor, cycle.months, anchor_kind, k, day),
        _grid_point(anchor, cycle.months, anchor_kind, k + 1, day),
    )


def next_boundary_date(
    anchor: date, cycle: BillingCycle, anchor_kind: BillingAnchor, after: date,
    day: int | None = None,
) -> date:
    """The first grid boundary strictly after ``after``."""
    return full_period_containing(anchor, cycle, anchor_kind, after, day)[1]


def boundary_dates(
    anchor_date: date,
    cycle: BillingCycle,
    anchor_kind: BillingAnchor,
    from_date: date,
    until_date: date,
    day: int | None = None,
) -> list[date]:
    """Boundaries tiling ``[from_date, until_date]``: ``from_date``, every grid
    boundary strictly between, then ``until_date``. Strictly increasing."""
    if until_date <= from_date:
        raise ValueError(f"until_date {until_date} must be after from_date {from_date}")
    out = [from_date]
    nxt = next_boundary_date(anchor_date, cycle, anchor_kind, from_date, day)
    while nxt < until_date:
        out.append(nxt)
        nxt = next_boundary_date(anchor_date, cycle, anchor_kind, nxt, day)
    out.append(until_date)
    return out


class Period(BaseModel):
    """One billing period. ``start``/``end`` are UTC instants; dates are local."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: AwareDatetime
    end: AwareDatetime
    start_date: date
    end_date: date  # exclusive
    full_start_date: date
    full_end_date: date  # exclusive

    @property
    def is_partial(self) -> bool:
        return (self.start_date, self.end_date) != (self.full_start_date, self.full_end_date)

    @property
    def days(self) -> int:
        return (self.end_date - self.start_date).days

    @property
    def full_days(self) -> int:
        return (self.full_end_date - self.full_start_date).days

    @property
    def full_months(self) -> int:
        """Calendar months in the full period (the fee multiplier)."""
        return _month_index(self.full_end_date) - _month_index(self.full_start_date)

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def billing_periods(
    starts_on: date,
    term_end: date,
    cycle: BillingCycle,
    anchor_kind: BillingAnchor,
    timezone: str,
    *,
    cycle_anchor: date | None = None,
    from_date: date | None = None,
) -> list[Period]:
    """All periods from ``from_date`` (default ``starts_on``) to ``term_end``.

    ``cycle_anchor`` is the date start-anchored boundaries count months from:
    normally ``starts_on``; after a mid-term cycle change, the boundary at
    which the new cycle took effect. Boundaries keep ``starts_on``'s day of
    month (clamped), so a Jan 31 start changed to quarterly at the Feb 28
    boundary continues May 31, Aug 31, Nov 30.
    """
    anchor = cycle_anchor or starts_on
    day = starts_on.day  # a cycle change keeps the start's day of month
    first = from_date or starts_on
    dates = boundary_dates(anchor, cycle, anchor_kind, first, term_end, day)
    periods: list[Period] = []
    for s, e in itertools.pairwise(dates):
        fs, fe = full_period_containing(anchor, cycle, anchor_kind, s, day)
        periods.append(
            Period(
                start=local_midnight_utc(s, timezone),
                end=local_midnight_utc(e, timezone),
                start_date=s,
                end_date=e,
                full_start_date=fs,
                full_end_date=fe,
            )
        )
    return periods
