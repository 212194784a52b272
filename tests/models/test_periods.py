"""Billing calendar (SPEC 2)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.periods import (
    BillingAnchor,
    BillingCycle,
    add_months,
    billing_periods,
    boundary_dates,
    local_date,
    local_midnight_utc,
    term_end_date,
    termination_end_date,
    validate_timezone,
)

START = BillingAnchor.START
CAL = BillingAnchor.CALENDAR
M, Q, H, Y = (
    BillingCycle.MONTHLY,
    BillingCycle.QUARTERLY,
    BillingCycle.SEMIANNUAL,
    BillingCycle.ANNUAL,
)


def test_cycle_months() -> None:
    assert [c.months for c in BillingCycle] == [1, 3, 6, 12]


def test_jan_31_monthly_start_anchor_never_chains() -> None:
    got = boundary_dates(date(2027, 1, 31), M, START, date(2027, 1, 31), date(2027, 7, 31))
    assert got == [
        date(2027, 1, 31),
        date(2027, 2, 28),
        date(2027, 3, 31),
        date(2027, 4, 30),
        date(2027, 5, 31),
        date(2027, 6, 30),
        date(2027, 7, 31),
    ]


def test_jan_31_leap_year() -> None:
    got = boundary_dates(date(2028, 1, 31), M, START, date(2028, 1, 31), date(2028, 4, 30))
    assert got == [date(2028, 1, 31), date(2028, 2, 29), date(2028, 3, 31), date(2028, 4, 30)]


def test_feb_29_annual() -> None:
    assert term_end_date(date(2028, 2, 29), 12) == date(2029, 2, 28)
    assert term_end_date(date(2028, 2, 29), 48) == date(2032, 2, 29)


@pytest.mark.parametrize(
    ("d", "n", "expected"),
    [
        (date(2027, 1, 31), 1, date(2027, 2, 28)),
        (date(2027, 11, 30), 3, date(2028, 2, 29)),
        (date(2027, 3, 31), -1, date(2027, 2, 28)),
        (date(2027, 12, 15), 1, date(2028, 1, 15)),
    ],
)
def test_add_months(d: date, n: int, expected: date) -> None:
    assert add_months(d, n) == expected


def test_quarterly_start_anchor_acme() -> None:
    ps = billing_periods(date(2027, 1, 1), date(2028, 1, 1), Q, START, "UTC")
    assert [(p.start_date, p.end_date) for p in ps] == [
        (date(2027, 1, 1), date(2027, 4, 1)),
        (date(2027, 4, 1), date(2027, 7, 1)),
        (date(2027, 7, 1), date(2027, 10, 1)),
        (date(2027, 10, 1), date(2028, 1, 1)),
    ]
    assert ps[0].start == datetime(2027, 1, 1, tzinfo=UTC)
    assert not any(p.is_partial for p in ps)
    assert [p.full_months for p in ps] == [3, 3, 3, 3]


def test_calendar_anchor_partial_first_and_last() -> None:
    ps = billing_periods(date(2027, 1, 15), date(2027, 4, 15), M, CAL, "UTC")
    assert [(p.start_date, p.end_date) for p in ps] == [
        (date(2027, 1, 15), date(2027, 2, 1)),
        (date(2027, 2, 1), date(2027, 3, 1)),
        (date(2027, 3, 1), date(2027, 4, 1)),
        (date(2027, 4, 1), date(2027, 4, 15)),
    ]
    first, last = ps[0], ps[-1]
    assert first.is_partial and (first.days, first.full_days) == (17, 31)
    assert (first.full_start_date, first.full_end_date) == (date(2027, 1, 1), date(2027, 2, 1))
    assert last.is_partial and (last.days, last.full_days) == (14, 30)
    assert not ps[1].is_partial


def test_calendar_quarterly() -> None:
    ps = billing_periods(date(2027, 2, 10), date(2028, 2, 10), Q, CAL, "UTC")
    assert [p.start_date for p in ps] == [
        date(2027, 2, 10),
        date(2027, 4, 1),
        date(2027, 7, 1),
        date(2027, 10, 1),
        date(2028, 1, 1),
    ]
    assert (ps[0].full_start_date, ps[0].full_end_date) == (date(2027, 1, 1), date(2027, 4, 1))
    assert ps[-1].end_date == date(2028, 2, 10)
    assert (ps[-1].days, ps[-1].full_days) == (40, 91)  # 2028 Q1 has Feb 29


@pytest.mark.parametrize(
    ("cycle", "starts"),
    [
        (H, [date(2027, 3, 1), date(2027, 7, 1), date(2028, 1, 1)]),
        (Y, [date(2027, 3, 1), date(2028, 1, 1)]),
    ],
)
def test_calendar_half_and_year(cycle: BillingCycle, starts: list[date]) -> None:
    ps = billing_periods(date(2027, 3, 1), date(2028, 3, 1), cycle, CAL, "UTC")
    assert [p.start_date for p in ps] == starts


def test_term_end_shorter_than_cycle() -> None:
    ps = billing_periods(date(2027, 1, 1), date(2027, 5, 1), Q, START, "UTC")
    assert [(p.start_date, p.end_date) for p in ps][-1] == (date(2027, 4, 1), date(2027, 5, 1))
    assert ps[-1].is_partial
    assert (ps[-1].full_start_date, ps[-1].full_end_date) == (date(2027, 4, 1), date(2027, 7, 1))


def test_dst_new_york_boundaries_at_local_midnight() -> None:
    tz = "America/New_York"
    ps = billing_periods(date(2027, 1, 1), date(2027, 12, 1), M, START, tz)
    by_date = {p.start_date: p.start for p in ps}
    assert by_date[date(2027, 3, 1)] == datetime(2027, 3, 1, 5, tzinfo=UTC)  # EST -5
    assert by_date[date(2027, 4, 1)] == datetime(2027, 4, 1, 4, tzinfo=UTC)  # EDT -4
    assert by_date[date(2027, 11, 1)] == datetime(2027, 11, 1, 4, tzinfo=UTC)  # still EDT
    march = next(p for p in ps if p.start_date == date(2027, 3, 1))
    # 31 days but only 743 hours: proration counts days, not hours
    assert march.days == 31
    assert march.end - march.start == timedelta(days=31, hours=-1)
    assert all(a.end == b.start for a, b in itertools.pairwise(ps))


def test_local_date_and_midnight() -> None:
    assert local_midnight_utc(date(2027, 7, 1), "Asia/Tokyo") == datetime(
        2027, 6, 30, 15, tzinfo=UTC
    )
    assert local_date(datetime(2027, 6, 30, 15, tzinfo=UTC), "Asia/Tokyo") == date(2027, 7, 1)
    assert local_date(datetime(2027, 6, 30, 14, 59, tzinfo=UTC), "Asia/Tokyo") == date(2027, 6, 30)
    with pytest.raises(ValueError, match="aware"):
        local_date(datetime(2027, 1, 1), "UTC")


def test_midnight_in_dst_gap_is_first_instant_of_day() -> None:
    # Chile springs forward at 24:00 local: 2027-09-05 00:00 does not exist in Santiago
    at = local_midnight_utc(date(2027, 9, 5), "America/Santiago")
    assert at == datetime(2027, 9, 5, 4, tzinfo=UTC)  # = 01:00 -03, the day's first instant
    assert local_date(at, "America/Santiago") == date(2027, 9, 5)
    assert local_date(at - timedelta(seconds=1), "America/Santiago") == date(2027, 9, 4)


@pytest.mark.parametrize(
    ("effective", "tz", "end"),
    [
        (datetime(2027, 8, 15, tzinfo=UTC), "UTC", date(2027, 8, 15)),
        (datetime(2027, 8, 15, 0, 0, 1, tzinfo=UTC), "UTC", date(2027, 8, 16)),
        (datetime(2027, 8, 15, 4, tzinfo=UTC), "America/New_York", date(2027, 8, 15)),
        (datetime(2027, 8, 15, 3, tzinfo=UTC), "America/New_York", date(2027, 8, 15)),
        (datetime(2027, 8, 15, 5, tzinfo=UTC), "America/New_York", date(2027, 8, 16)),
    ],
)
def test_termination_rounds_up_to_local_midnight(effective: datetime, tz: str, end: date) -> None:
    assert termination_end_date(effective, tz) == end


def test_terminated_final_period_is_partial() -> None:
    end = termination_end_date(datetime(2027, 8, 15, 12, tzinfo=UTC), "UTC")
    ps = billing_periods(date(2027, 1, 1), end, Q, START, "UTC")
    assert (ps[-1].start_date, ps[-1].end_date, ps[-1].days, ps[-1].full_days) == (
        date(2027, 7, 1),
        date(2027, 8, 16),
        46,
        92,
    )


def test_cycle_change_counts_from_new_anchor() -> None:
    ps = billing_periods(
        date(2027, 1, 31),
        date(2028, 1, 31),
        Q,
        START,
        "UTC",
        cycle_anchor=date(2027, 3, 31),
        from_date=date(2027, 3, 31),
    )
    assert [p.start_date for p in ps] == [
        date(2027, 3, 31),
        date(2027, 6, 30),
        date(2027, 9, 30),
        date(2027, 12, 31),
    ]
    assert ps[-1].end_date == date(2028, 1, 31)


def test_cycle_change_at_a_clamped_boundary_keeps_the_start_day() -> None:
    """Issue 11 case 10: a Jan 31 contract switched to quarterly at the Feb 28
    boundary bills May 31, Aug 31, Nov 30 (never chained on the 28th)."""
    ps = billing_periods(
        date(2027, 1, 31),
        date(2028, 1, 31),
        Q,
        START,
        "UTC",
        cycle_anchor=date(2027, 2, 28),
        from_date=date(2027, 2, 28),
    )
    assert [(p.start_date, p.end_date) for p in ps] == [
        (date(2027, 2, 28), date(2027, 5, 31)),
        (date(2027, 5, 31), date(2027, 8, 31)),
        (date(2027, 8, 31), date(2027, 11, 30)),
        (date(2027, 11, 30), date(2028, 1, 31)),
    ]
    assert (ps[-1].full_start_date, ps[-1].full_end_date) == (date(2027, 11, 30),
                                                               date(2028, 2, 29))


def test_validate_timezone() -> None:
    assert validate_timezone("Europe/Paris") == "Europe/Paris"
    with pytest.raises(ValueError, match="unknown timezone"):
        validate_timezone("Europe/Atlantis")
    with pytest.raises(ValueError, match="unknown timezone"):
        validate_timezone("../etc/passwd")


def test_boundary_dates_rejects_empty_range() -> None:
    with pytest.raises(ValueError):
        boundary_dates(date(2027, 1, 1), M, START, date(2027, 1, 1), date(2027, 1, 1))


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "America/Santiago",
    "Pacific/Apia",
]


@settings(max_examples=200, deadline=None)
@given(
    starts_on=st.dates(min_value=date(2020, 1, 1), max_value=date(2035, 12, 31)),
    term=st.integers(min_value=1, max_value=40),
    cycle=st.sampled_from(list(BillingCycle)),
    anchor=st.sampled_from(list(BillingAnchor)),
    tz=st.sampled_from(ZONES),
)
def test_periods_tile_the_term(
    starts_on: date, term: int, cycle: BillingCycle, anchor: BillingAnchor, tz: str
) -> None:
    end = term_end_date(starts_on, term)
    ps = billing_periods(starts_on, end, cycle, anchor, tz)
    assert ps[0].start_date == starts_on and ps[-1].end_date == end
    assert ps[0].start == local_midnight_utc(starts_on, tz)
    assert ps[-1].end == local_midnight_utc(end, tz)
    for a, b in itertools.pairwise(ps):
        assert a.end == b.start and a.end_date == b.start_date
    for p in ps:
        assert p.start < p.end and p.start.tzinfo is not None
        assert p.full_start_date <= p.start_date < p.end_date <= p.full_end_date
        assert 1 <= p.days <= p.full_days
        assert p.full_months == cycle.months
        if anchor is START:
            assert p.start_date == add_months(
                starts_on,
                ((p.start_date.year - starts_on.year) * 12 + p.start_date.month - starts_on.month),
            )
        else:
            assert p.start_date == starts_on or (
                p.start_date.day == 1 and (p.start_date.month - 1) % cycle.months == 0
            )
    # only the first (calendar) and the last can be partial
    assert not any(p.is_partial for p in ps[1:-1])
