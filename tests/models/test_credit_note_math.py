"""Credit note math (models/credit_notes.py), as a table against SPEC.md section 11."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.credit_notes import (
    Consumption,
    InvoiceForCredit,
    InvoiceLineState,
    credit_note_entry,
    credits_removed,
    plan_credit_note,
    return_to_grants,
    reversed_recognition,
)
from models.errors import BillowValidationError
from models.revenue import Account

D = Decimal


def _invoice(*lines: tuple[str, str, str], credits: str = "0", returned: str = "0",
             outstanding: str | None = None, status: str = "open", kind: str = "usage",
             currency: str = "USD") -> InvoiceForCredit:
    states = [InvoiceLineState(position=i + 1, kind=k, amount=D(a), credited=D(c))
              for i, (k, a, c) in enumerate(lines)]
    total = sum((s.amount for s in states), D(0)) - D(credits)
    return InvoiceForCredit(
        key="usage:2027-01-01", kind=kind, status=status, currency=currency, lines=states,
        credits_applied=D(credits), credits_returned=D(returned),
        outstanding=total if outstanding is None else D(outstanding),
    )


# Usage 3000 + 1000 and a fee of 500; 2000 paid with credits, 1000 in cash.
PAID_PART_CASH = (("usage", "3000.00", "0"), ("usage", "1000.00", "0"), ("fee", "500.00", "0"))

TABLE = [
    # (case, invoice, request, expected (total, returned, reduced, refunded, customer credit))
    ("line 2: half its usage share back to grants, the rest off the amount owed",
     _invoice(*PAID_PART_CASH, credits="2000.00", outstanding="1500.00"),
     {"lines": [(2, D("400.00"))]}, ("400.00", "200.00", "200.00", "0", "0")),
    ("the rest of that invoice, spread: credits, what is owed, then a refund",
     _invoice(("usage", "3000.00", "0"), ("usage", "1000.00", "400.00"), ("fee", "500.00", "0"),
              credits="2000.00", returned="200.00", outstanding="1300.00"),
     {"amount": D("4100.00")}, ("4100.00", "1800.00", "1300.00", "1000.00", "0")),
    ("a fee credited on a paid invoice: all refunded",
     _invoice(("usage", "30.00", "0"), ("fee", "500.00", "0"), outstanding="0", status="paid"),
     {"lines": [(2, D("50.00"))]}, ("50.00", "0", "0", "50.00", "0")),
    ("kept as customer credit",
     _invoice(("usage", "30.00", "0"), ("fee", "500.00", "0"), outstanding="0", status="paid"),
     {"amount": D("100.00"), "remainder": "credit"}, ("100.00", "0", "0", "0", "100.00")),
    ("an overdue invoice, fully credited, nothing paid",
     _invoice(("usage", "30.00", "0"), ("fee", "500.00", "0"), status="overdue"),
     {"amount": D("530.00")}, ("530.00", "0", "530.00", "0", "0")),
    ("half-up rounding of the credits share: 100.01 x 1/3 = 33.336... -> 33.34",
     _invoice(("usage", "300.03", "0"), credits="100.01", outstanding="200.02"),
     {"lines": [(1, D("100.01"))]}, ("100.01", "33.34", "66.67", "0", "0")),
    ("the share never exceeds what earlier notes left: 150 x 2000/4000 = 75, 40 left",
     _invoice(("usage", "3000.00", "2900.00"), ("usage", "1000.00", "0"), credits="2000.00",
              returned="1960.00", outstanding="0", status="paid"),
     {"lines": [(2, D("150.00"))]}, ("150.00", "40.00", "0", "110.00", "0")),
    ("a maximum line caps what usage lines can be credited together",
     _invoice(("usage", "800.00", "0"), ("maximum", "-300.00", "0"), ("fee", "100.00", "0"),
              status="paid", outstanding="0"),
     {"amount": D("600.00")}, ("600.00", "0", "0", "600.00", "0")),
    ("JPY has no minor unit",
     _invoice(("usage", "1000", "0"), credits="500", outstanding="500", currency="JPY"),
     {"lines": [(1, D("300"))]}, ("300", "150", "150", "0", "0")),
    ("a commitment invoice: no credits share, off the amount owed",
     _invoice(("commitment", "1000.00", "0"), kind="commitment"),
     {"amount": D("200.00")}, ("200.00", "0", "200.00", "0", "0")),
]


@pytest.mark.parametrize(("case", "invoice", "request_", "expected"), TABLE,
                         ids=[t[0] for t in TABLE])
def test_allocation(case: str, invoice: InvoiceForCredit, request_: dict[str, object],
                    expected: tuple[str, ...]) -> None:
    plan = plan_credit_note(invoice, **request_)  # type: ignore[arg-type]
    got = (plan.total, plan.credits_returned, plan.outstanding_reduced, plan.refunded,
           plan.customer_credit)
    assert got == tuple(D(x) for x in expected)
    assert sum(got[1:]) == plan.total
    for ln in plan.lines:
        line = invoice.lines[ln.position - 1]
        assert 0 < ln.amount <= line.amount - line.credited


def test_a_whole_amount_spreads_over_the_positive_lines_in_order() -> None:
    invoice = _invoice(("usage", "800.00", "0"), ("maximum", "-300.00", "0"),
                       ("fee", "100.00", "0"), status="paid", outstanding="0")
    plan = plan_credit_note(invoice, amount=D("600.00"))
    assert [(ln.position, ln.kind, ln.amount) for ln in plan.lines] == [
        (1, "usage", D("500.00")), (3, "fee", D("100.00"))]


REFUSALS = [
    ("more than is uncredited on a line",
     _invoice(("usage", "30.00", "20.00"), ("fee", "500.00", "0")),
     {"lines": [(1, D("10.01"))]},
     [("lines[0].amount", "10.01 exceeds what is uncredited on line 1 (10.00)")]),
    ("more than is uncredited on the invoice",
     _invoice(("usage", "30.00", "20.00"), ("fee", "500.00", "0")),
     {"amount": D("510.01")},
     [("amount", "510.01 exceeds what is uncredited on usage:2027-01-01 (510.00)")]),
    ("a line that does not exist",
     _invoice(("usage", "30.00", "0")), {"lines": [(2, D("1.00"))]},
     [("lines[0].line", "usage:2027-01-01 has no line 2 (it has 1)")]),
    ("a fraction of a cent",
     _invoice(("usage", "30.00", "0")), {"lines": [(1, D("1.005"))]},
     [("lines[0].amount", "1.005 is not in whole minor units of USD (2 decimals)")]),
    ("a void invoice",
     _invoice(("usage", "30.00", "0"), status="void"), {"amount": D("1.00")},
     [("invoice", "usage:2027-01-01 is void: only open, overdue or paid invoices are "
                  "credited")]),
    ("usage lines beyond their net total (a maximum line)",
     _invoice(("usage", "800.00", "0"), ("maximum", "-300.00", "0")),
     {"lines": [(1, D("600.00"))]},
     [("lines", "usage lines together can be credited at most their net total 500.00 "
                "(0 credited before)")]),
]


@pytest.mark.parametrize(("case", "invoice", "request_", "problems"), REFUSALS,
                         ids=[t[0] for t in REFUSALS])
def test_refusals_name_the_field(case: str, invoice: InvoiceForCredit,
                                 request_: dict[str, object],
                                 problems: list[tuple[str, str]]) -> None:
    with pytest.raises(BillowValidationError) as exc:
        plan_credit_note(invoice, **request_)  # type: ignore[arg-type]
    assert exc.value.problems == problems


def test_credits_go_back_to_the_last_burned_grant_first() -> None:
    burned = [Consumption("commitment", D("1000")), Consumption("top-up", D("300"), D("100"))]
    assert return_to_grants(burned, D("250")) == [("top-up", D("200")), ("commitment", D("50"))]
    with pytest.raises(ValueError):
        return_to_grants(burned, D("1201"))


def test_revenue_reversed_with_returned_credits() -> None:
    # Cost basis 0.8: 200 credits took 160.00 of revenue; returning all takes all back.
    args = {"price": D("1600.00"), "credits": D("2000.00"), "currency": "USD"}
    assert reversed_recognition(D("200"), unreturned=D("2000"), recognized=D("1600.00"),
                                **args) == D("160.00")  # type: ignore[arg-type]
    assert reversed_recognition(D("1800"), unreturned=D("1800"), recognized=D("1440.00"),
                                **args) == D("1440.00")  # type: ignore[arg-type]
    assert credits_removed(D("200.00"), credits=D("1100.00"), price=D("1000.00"),
                           currency="USD") == D("220.00")


def test_the_entry_reverses_revenue_where_it_was_recognized_and_balances() -> None:
    invoice = _invoice(*PAID_PART_CASH, credits="2000.00", outstanding="1500.00")
    plan = plan_credit_note(invoice, lines=[(2, D("400.00")), (3, D("50.00"))])
    entry = credit_note_entry("credit_note:cn-1", plan, reversals=[("commitment", D("160.00"))])
    assert entry is not None
    assert [(ln.account, ln.debit, ln.credit, ln.grant_id) for ln in entry.lines] == [
        (Account.USAGE_REVENUE, D("160.00"), 0, "commitment"),
        (Account.DEFERRED_REVENUE, 0, D("160.00"), "commitment"),
        (Account.USAGE_REVENUE, D("200.00"), 0, None),
        (Account.FEE_REVENUE, D("50.00"), 0, None),
        (Account.RECEIVABLE, 0, D("250.00"), None),
    ]
