"""Revenue journal (SPEC 5)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from billing_fixtures import D, utc
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from models.credits import CreditGrant
from models.revenue import (
    Account,
    EntryKind,
    JournalEntry,
    JournalLine,
    breakage,
    commitment_invoiced,
    deferred_by_grant,
    payment_received,
    recognized_by_grant,
    summarize,
    top_up_invoiced,
    usage_invoiced,
)

GRANT = CreditGrant(
    id="commitment",
    credits=D("120000.00"),
    price=D("100000.00"),
    effective=utc(2027, 1, 1),
    expires=utc(2028, 1, 1),
)


def test_unbalanced_entry_is_rejected() -> None:
    with pytest.raises(ValidationError, match="does not balance"):
        JournalEntry(
            key="k",
            kind=EntryKind.PAYMENT,
            lines=[
                JournalLine(account=Account.CASH, debit=D(10)),
                JournalLine(account=Account.RECEIVABLE, credit=D(9)),
            ],
        )
    with pytest.raises(ValidationError, match="either a positive debit or a positive credit"):
        JournalLine(account=Account.CASH, debit=D(1), credit=D(1))


def test_acme_revenue_figures() -> None:
    journal = [commitment_invoiced("commitment:2027-01-01", D("100000.00"), "commitment")]
    for i, consumed in enumerate(["25000.00", "43000.00", "32000.00", "10000.00"]):
        journal += usage_invoiced(
            f"usage:{i}",
            currency="USD",
            usage_billed=D(0),
            fees=D("1500.00"),
            consumption=[(GRANT, D(consumed))],
            recognized_so_far=recognized_by_grant(journal),
        )
    recognized = [e.amount for e in journal if e.kind is EntryKind.USAGE_FROM_CREDITS]
    assert recognized == [D("20833.33"), D("35833.33"), D("26666.67"), D("8333.33")]
    b = breakage(GRANT, recognized_by_grant(journal)["commitment"])
    assert b is not None and b.amount == D("8333.34")
    journal.append(b)
    journal.append(payment_received("pay:1", D("100000.00")))
    s = summarize(journal, "USD")
    assert (
        s.usage_from_credits,
        s.usage_billed,
        s.fees,
        s.breakage,
        s.total,
        s.deferred_balance,
    ) == (D("91666.66"), D(0), D("6000.00"), D("8333.34"), D("106000.00"), D(0))


def test_usage_billed_and_top_up_entries() -> None:
    top = CreditGrant(
        id="t",
        credits=D("20000"),
        price=D("18000"),
        effective=utc(2027, 8, 1),
        expires=utc(2028, 1, 1),
    )
    journal = [top_up_invoiced("top_up:2027-08-01", D("18000"), "t")]
    journal += usage_invoiced(
        "usage:x",
        currency="USD",
        usage_billed=D("12.34"),
        fees=D(0),
        consumption=[(top, D("1000"))],
        recognized_so_far={},
    )
    assert [(e.kind, e.amount) for e in journal[1:]] == [
        (EntryKind.USAGE_FROM_CREDITS, D("900.00")),
        (EntryKind.USAGE_BILLED, D("12.34")),
    ]
    assert deferred_by_grant(journal) == {"t": D("17100.00")}
    assert summarize(journal).deferred_balance == D("17100.00")


def test_promotional_grant_recognizes_nothing() -> None:
    promo = CreditGrant(id="p", credits=D(50), effective=utc(2027, 1, 1), expires=utc(2028, 1, 1))
    assert (
        usage_invoiced(
            "u",
            currency="USD",
            usage_billed=D(0),
            fees=D(0),
            consumption=[(promo, D(50))],
            recognized_so_far={},
        )
        == []
    )
    assert breakage(promo, D(0)) is None


def test_recognition_never_exceeds_price() -> None:
    tiny = CreditGrant(
        id="x", credits=D("3"), price=D("0.02"), effective=utc(2027, 1, 1), expires=utc(2028, 1, 1)
    )
    journal: list[JournalEntry] = []
    for i in range(3):  # 0.00666.. -> 0.01 each time, would total 0.03 without the cap
        journal += usage_invoiced(
            f"u{i}",
            currency="USD",
            usage_billed=D(0),
            fees=D(0),
            consumption=[(tiny, D(1))],
            recognized_so_far=recognized_by_grant(journal),
        )
    assert recognized_by_grant(journal)["x"] == D("0.02")


@settings(max_examples=200, deadline=None)
@given(
    credits=st.decimals(min_value="0.01", max_value=10**6, places=2),
    price=st.decimals(min_value=0, max_value=10**6, places=2),
    fractions=st.lists(st.decimals(min_value=0, max_value=1, places=3), max_size=8),
)
def test_recognized_plus_breakage_equals_price(
    credits: Decimal, price: Decimal, fractions: list[Decimal]
) -> None:
    grant = CreditGrant(
        id="g", credits=credits, price=price, effective=utc(2027, 1, 1), expires=utc(2028, 1, 1)
    )
    journal: list[JournalEntry] = []
    if price > 0:
        journal.append(commitment_invoiced("c", price, "g"))
    remaining = credits
    for i, f in enumerate(fractions):
        take = min(remaining, (credits * f).quantize(D("0.01")))
        remaining -= take
        journal += usage_invoiced(
            f"u{i}",
            currency="USD",
            usage_billed=D(0),
            fees=D(1),
            consumption=[(grant, take)],
            recognized_so_far=recognized_by_grant(journal),
        )
        assert deferred_by_grant(journal).get("g", D(0)) >= 0
    b = breakage(grant, recognized_by_grant(journal).get("g", D(0)))
    if b is not None:
        journal.append(b)
    for e in journal:
        assert sum(ln.debit for ln in e.lines) == sum(ln.credit for ln in e.lines)
    assert recognized_by_grant(journal).get("g", D(0)) == price
    assert summarize(journal).deferred_balance == 0
