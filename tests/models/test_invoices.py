"""Invoice documents (SPEC 6)."""

from __future__ import annotations

from datetime import date

import pytest
from billing_fixtures import D, catalog_with, terms_for

from models.invoices import (
    CommitmentLine,
    FeeLine,
    InvoiceDocument,
    InvoiceKind,
    InvoicePeriod,
    UsageLine,
    build_invoice,
    commitment_invoice,
    due_on,
    invoice_key_commitment,
    invoice_key_top_up,
    invoice_key_usage,
    top_up_invoice,
)

PERIOD = InvoicePeriod(start=date(2027, 1, 1), end=date(2027, 4, 1))
USAGE = UsageLine(meter="m", dimensions={}, quantity=D(10), unit_price=D(1), amount=D("10.00"))
FEE = FeeLine(fee="platform", amount=D("5.00"))


def test_keys_and_due_dates() -> None:
    assert invoice_key_usage(date(2027, 1, 1)) == "usage:2027-01-01"
    assert invoice_key_commitment(date(2027, 1, 1)) == "commitment:2027-01-01"
    assert invoice_key_top_up(date(2027, 8, 1)) == "top_up:2027-08-01"
    assert due_on(date(2027, 4, 1), 45) == date(2027, 5, 16)
    assert due_on(date(2027, 12, 31), 0) == date(2027, 12, 31)
    with pytest.raises(ValueError):
        due_on(date(2027, 1, 1), -1)


def test_build_invoice_totals() -> None:
    inv = build_invoice(
        key="usage:2027-01-01",
        kind=InvoiceKind.USAGE,
        currency="USD",
        period=PERIOD,
        lines=[USAGE, FEE],
        credits_applied=D("10.00"),
        issued_on=date(2027, 4, 1),
        payment_terms_days=30,
    )
    assert (inv.subtotal, inv.credits_applied, inv.total, inv.due_on) == (
        D("15.00"),
        D("10.00"),
        D("5.00"),
        date(2027, 5, 1),
    )
    assert inv.usage_amount == D("10.00")
    assert InvoiceDocument.model_validate_json(inv.model_dump_json()) == inv


@pytest.mark.parametrize(
    ("credits", "path"),
    [("10.01", "credits_applied"), ("-1", "credits_applied")],
)
def test_credits_pay_usage_lines_only(credits: str, path: str) -> None:
    # a broken invariant is a programming error: pydantic's ValidationError (a ValueError)
    with pytest.raises(ValueError, match=f"{path}: must be between 0 and the usage lines"):
        build_invoice(
            key="k",
            kind=InvoiceKind.USAGE,
            currency="USD",
            period=PERIOD,
            lines=[USAGE, FEE],
            credits_applied=D(credits),
        )


def test_unrounded_lines_and_bad_sums_rejected() -> None:
    with pytest.raises(ValueError, match=r"lines\[0\].amount: not rounded to JPY"):
        build_invoice(
            key="k",
            kind=InvoiceKind.COMMITMENT,
            currency="JPY",
            period=PERIOD,
            lines=[CommitmentLine(amount=D("1.5"))],
        )
    with pytest.raises(ValueError, match="subtotal"):
        InvoiceDocument(
            key="k",
            kind=InvoiceKind.USAGE,
            currency="USD",
            period=PERIOD,
            lines=[USAGE],
            subtotal=D(11),
            credits_applied=D(0),
            total=D(11),
        )


def test_commitment_and_top_up_invoices() -> None:
    terms = terms_for(
        catalog_with([{"key": "m", "name": "M", "aggregation": "sum"}]),
        payment_terms_days=45,
        commitment={"amount": "100000", "bonus_percent": "20"},
    )
    inv = commitment_invoice(terms)
    assert (inv.key, inv.period.end, inv.issued_on, inv.due_on, inv.total) == (
        "commitment:2027-01-01",
        date(2028, 1, 1),
        date(2027, 1, 1),
        date(2027, 2, 15),
        D("100000.00"),
    )
    top = top_up_invoice(
        terms, effective=date(2027, 8, 1), expires=date(2028, 1, 1), price=D("18000")
    )
    assert (top.key, top.kind, top.total, top.due_on) == (
        "top_up:2027-08-01",
        InvoiceKind.TOP_UP,
        D("18000.00"),
        date(2027, 9, 15),
    )
