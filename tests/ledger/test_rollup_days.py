"""Which days of a rating window come from rollups (pure; table test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from activities.rollup_days import DayPlan, day_plan


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


FAR = t("2100-01-01")

CASES = [
    # midnight-aligned month, everything folded: one rollup stretch, nothing raw
    ("2027-01-01", "2027-02-01", [], FAR,
     DayPlan(t("2027-01-01"), t("2027-02-01"), [], [])),
    # New York month: partial first and last UTC days are raw
    ("2027-01-01T05:00", "2027-02-01T05:00", [], FAR,
     DayPlan(t("2027-01-02"), t("2027-02-01"), [],
             [(t("2027-01-01T05:00"), t("2027-01-02")), (t("2027-02-01"), t("2027-02-01T05:00"))])),
    # a split inside a day makes that day raw; a split at midnight does not
    ("2027-01-01", "2027-02-01", [t("2027-01-15T12:30"), t("2027-01-20")], FAR,
     DayPlan(t("2027-01-01"), t("2027-02-01"), [t("2027-01-15")],
             [(t("2027-01-15"), t("2027-01-16"))])),
    # days from folded_before on are not folded yet: raw
    ("2027-01-01", "2027-02-01", [], t("2027-01-25"),
     DayPlan(t("2027-01-01"), t("2027-01-25"), [], [(t("2027-01-25"), t("2027-02-01"))])),
    # cuts outside the window are ignored; adjacent raw ranges merge
    ("2027-01-01T05:00", "2027-01-10", [t("2026-12-31T03:00"), t("2027-01-02T01:00")], FAR,
     DayPlan(t("2027-01-02"), t("2027-01-10"), [t("2027-01-02")],
             [(t("2027-01-01T05:00"), t("2027-01-03"))])),
]


@pytest.mark.parametrize(("start", "end", "cuts", "folded_before", "expected"), CASES)
def test_day_plan(
    start: str, end: str, cuts: list[datetime], folded_before: datetime, expected: DayPlan
) -> None:
    plan = day_plan(t(start), t(end), cuts, folded_before)
    assert plan == expected
    # rollup days and raw ranges partition the window
    assert plan is not None
    days = [plan.lo + timedelta(days=i) for i in range((plan.hi - plan.lo).days)]
    pieces = sorted([(d, d + timedelta(days=1)) for d in days if d not in plan.skipped]
                    + plan.raw)
    merged: list[tuple[datetime, datetime]] = []
    for a, b in pieces:
        assert not merged or a >= merged[-1][1]  # no overlap
        if merged and a == merged[-1][1]:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    assert merged == [(t(start), t(end))]


@pytest.mark.parametrize(
    ("start", "end", "cuts", "folded_before"),
    [
        ("2027-01-01T05:00", "2027-01-02T05:00", [], FAR),  # no whole day inside
        ("2027-01-01", "2027-02-01", [], t("2027-01-01")),  # nothing folded yet
        ("2027-01-01", "2027-01-02", [t("2027-01-01T12:00")], FAR),  # its only day is cut
    ],
)
def test_no_day_from_rollups(
    start: str, end: str, cuts: list[datetime], folded_before: datetime
) -> None:
    assert day_plan(t(start), t(end), cuts, folded_before) is None
