"""The roll-forward's arithmetic on hand-made entries."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from models.exports import deferred_rollforward, journal_totals, months_between

D = Decimal


def _e(day: str, kind: str, dr: str, cr: str, amount: str) -> dict[str, object]:
    return {"booked_on": date.fromisoformat(day), "kind": kind, "lines": [
        {"account": dr, "debit": D(amount), "credit": D(0)},
        {"account": cr, "debit": D(0), "credit": D(amount)}]}


ENTRIES = [
    _e("2027-01-01", "commitment_invoiced", "receivable", "deferred_revenue", "1000.00"),
    _e("2027-02-10", "payment", "cash", "receivable", "1000.00"),
    _e("2027-03-01", "usage_from_credits", "deferred_revenue", "usage_revenue", "300.00"),
    # a correction returning credits raises deferred revenue (credited is negative)
    _e("2027-03-15", "credit_note", "usage_revenue", "deferred_revenue", "50.00"),
    _e("2027-05-01", "top_up_invoiced", "receivable", "deferred_revenue", "200.00"),
    _e("2027-05-01", "breakage", "deferred_revenue", "breakage_revenue", "950.00"),
]


def test_rollforward_moves_month_by_month_and_closes_to_the_balance() -> None:
    months = deferred_rollforward(ENTRIES)
    assert [m.month for m in months] == ["2027-01", "2027-02", "2027-03", "2027-04", "2027-05"]
    rows = {m.month: (m.opening, m.invoiced, m.recognized, m.breakage, m.credited, m.closing)
            for m in months}
    assert rows["2027-01"] == (0, D("1000.00"), 0, 0, 0, D("1000.00"))
    assert rows["2027-02"] == (D("1000.00"), 0, 0, 0, 0, D("1000.00"))
    assert rows["2027-03"] == (D("1000.00"), 0, D("300.00"), 0, D("-50.00"), D("750.00"))
    assert rows["2027-05"] == (D("750.00"), D("200.00"), 0, D("950.00"), 0, D(0))
    later = deferred_rollforward(ENTRIES, "2027-03", "2027-06")
    assert later[0].opening == D("1000.00") and later[-1].month == "2027-06"
    assert later[-1].closing == 0


def test_totals_are_the_sums_of_the_lines() -> None:
    totals = {t.account: (t.debit, t.credit)
              for t in journal_totals(ln for e in ENTRIES for ln in e["lines"])}  # type: ignore[attr-defined]
    assert totals["deferred_revenue"] == (D("1250.00"), D("1250.00"))
    assert totals["receivable"] == (D("1200.00"), D("1000.00"))


def test_months_between() -> None:
    assert months_between("2027-11", "2028-02") == ["2027-11", "2027-12", "2028-01", "2028-02"]
    assert deferred_rollforward([]) == []
