"""Minimum commitments and their true-up (SPEC 12), pure."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from billing_fixtures import D, catalog_with, terms_for, utc

from models.contract import ContractTerms
from models.errors import BillowValidationError
from models.invoices import (
    FeeLine,
    InvoiceKind,
    InvoicePeriod,
    Line,
    MinimumLine,
    TrueUpLine,
    UsageLine,
    build_invoice,
)
from models.minimum_commitment import (
    CommitmentProgress,
    commitment_progress,
    months_left,
    period_minimum,
    progress_text,
    term_minimum,
    true_up_lines,
)
from models.minimum_terms import CommitmentPer, MinimumCommitment, ScheduledMinimumCommitment
from models.periods import Period, billing_periods

CATALOG = catalog_with([{"key": "m", "name": "M", "aggregation": "sum",
                         "rate_card": [{"match": {}, "unit_price": "1"}]}])


def terms(per: str = "term", amount: str = "250000.00", **contract: Any) -> ContractTerms:
    mc = {"amount": amount, "per": per, **contract.pop("mc", {})}
    return terms_for(CATALOG, minimum_commitment=mc, **contract)


def periods(t: ContractTerms) -> list[Period]:
    return billing_periods(t.starts_on, t.term_end, t.billing_cycle, t.billing_anchor,
                           t.timezone, cycle_anchor=t.cycle_anchor)


def terminated(t: ContractTerms, end: date) -> ContractTerms:
    return t.model_copy(update={"term_end": end})


# --- the minimum of one period (billing_period) ----------------------------------------


@pytest.mark.parametrize(
    ("contract", "index", "minimum"),
    [
        ({}, 0, "20000.00"),
        ({}, 1, "20000.00"),  # February: a full period although shorter
        # calendar anchor from Jan 15: 17 of 31 days, then the last 14 of 31
        ({"starts_on": "2027-01-15", "billing_anchor": "calendar"}, 0, "10967.74"),
        ({"starts_on": "2027-01-15", "billing_anchor": "calendar"}, 12, "9032.26"),
        ({"billing_cycle": "quarterly"}, 0, "20000.00"),  # per billing period, not month
    ],
)
def test_period_minimum_is_prorated_like_a_fee(
    contract: dict[str, Any], index: int, minimum: str
) -> None:
    t = terms("billing_period", "20000.00", **contract)
    mc = t.minimum_commitment
    assert mc is not None
    assert period_minimum(mc, periods(t)[index], t.currency) == D(minimum)


def test_a_terminated_period_is_prorated() -> None:
    t = terminated(terms("billing_period", "20000.00"), date(2027, 3, 11))
    last = periods(t)[-1]
    assert (last.start_date, last.days, last.full_days) == (date(2027, 3, 1), 10, 31)
    mc = t.minimum_commitment
    assert mc is not None
    assert period_minimum(mc, last, t.currency) == D("6451.61")


# --- the term's minimum ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("end", "prorate", "minimum"),
    [
        (None, False, "250000.00"),  # ran the whole term
        (None, True, "250000.00"),
        (date(2027, 7, 1), False, "250000.00"),  # terminated, no proration: all of it
        (date(2027, 7, 1), True, "123972.60"),  # 181 of 365 days
        (date(2027, 1, 2), True, "684.93"),  # one day
        (date(2027, 1, 1), True, "0.00"),  # ended before it opened
    ],
)
def test_term_minimum_after_termination(end: date | None, prorate: bool, minimum: str) -> None:
    t = terms(mc={"prorate_on_termination": prorate})
    if end is not None:
        t = terminated(t, end)
    mc = t.minimum_commitment
    assert mc is not None
    assert term_minimum(mc, t) == D(minimum)


def test_an_extended_term_is_contracted_with_its_extension() -> None:
    t = terms(mc={"prorate_on_termination": True})
    extended = t.model_copy(update={"term_months": 24, "term_end": date(2029, 1, 1)})
    assert term_minimum(extended.minimum_commitment, extended) == D("250000.00")  # type: ignore[arg-type]
    # terminated after 12 of its 24 months: 365 of 731 days
    cut = terminated(extended, date(2028, 1, 1))
    assert term_minimum(cut.minimum_commitment, cut) == D("124829.00")  # type: ignore[arg-type]


# --- progress and true-up --------------------------------------------------------------


@pytest.mark.parametrize(
    ("per", "spend", "before", "final", "shortfall", "true_up"),
    [
        ("billing_period", "15000.00", "0", False, "5000.00", "5000.00"),
        ("billing_period", "25000.00", "0", False, "0", "0"),  # exceeded: no true-up
        ("billing_period", "20000.00", "100000", True, "0", "0"),  # exactly met
        ("billing_period", "0", "0", False, "20000.00", "20000.00"),  # no usage at all
        ("term", "15000.00", "150000.00", False, "85000.00", "0"),  # not the final invoice
        ("term", "15000.00", "165000.00", True, "70000.00", "70000.00"),  # final: short
        ("term", "15000.00", "300000.00", True, "0", "0"),  # final: exceeded
    ],
)
def test_commitment_progress(
    per: str, spend: str, before: str, final: bool, shortfall: str, true_up: str
) -> None:
    t = terms(per, "20000.00" if per == "billing_period" else "250000.00")
    p = commitment_progress(t, periods(t)[0], D(spend), D(before), is_final=final)
    assert p is not None
    assert (p.shortfall, p.true_up) == (D(shortfall), D(true_up))
    assert p.spend == (D(spend) if per == "billing_period" else D(spend) + D(before))
    assert true_up_lines(p) == ([TrueUpLine(amount=D(true_up))] if D(true_up) else [])


def test_term_true_up_after_termination_with_proration() -> None:
    t = terminated(terms(mc={"prorate_on_termination": True}), date(2027, 7, 1))
    last = periods(t)[-1]
    p = commitment_progress(t, last, D("3972.60"), D("100000.00"), is_final=True)
    assert p == CommitmentProgress(
        per=CommitmentPer.TERM, minimum=D("123972.60"), spend=D("103972.60"),
        shortfall=D("20000.00"), true_up=D("20000.00"), period_start=date(2027, 6, 1),
        period_end=date(2027, 7, 1), final=True)


def test_no_minimum_no_progress() -> None:
    t = terms_for(CATALOG)
    assert commitment_progress(t, periods(t)[0], D(0), D(0), is_final=True) is None
    assert true_up_lines(None) == []


def test_the_minimum_in_force_at_the_period_start_applies() -> None:
    """A set_minimum_commitment effective at the March boundary: February keeps
    the old minimum, March gets the new one; removing it ends the true-ups."""
    t = terms("billing_period", "20000.00")
    new = MinimumCommitment(amount=D("5000.00"), per=CommitmentPer.BILLING_PERIOD)
    t = t.model_copy(update={"minimum_commitments": [
        *t.minimum_commitments,
        ScheduledMinimumCommitment(effective=utc(2027, 3, 1), commitment=new),
        ScheduledMinimumCommitment(effective=utc(2027, 6, 1), commitment=None),
    ]})
    ps = periods(t)
    got = [commitment_progress(t, p, D("1000.00"), D(0), is_final=False) for p in ps[1:6]]
    assert [g.true_up if g else None for g in got] == [
        D("19000.00"), D("4000.00"), D("4000.00"), D("4000.00"), None]
    assert t.minimum_commitment is None  # as last set


# --- on the invoice --------------------------------------------------------------------


def test_a_true_up_is_not_paid_by_credits_and_is_billed_usage() -> None:
    lines: list[Line] = [
        UsageLine(meter="m", dimensions={}, quantity=D(1), unit_price=D(1), amount=D("700.00")),
        MinimumLine(meter="m", amount=D("300.00")),
        FeeLine(fee="f", amount=D("50.00")),
        TrueUpLine(amount=D("4000.00")),
    ]
    period = InvoicePeriod(start=date(2027, 1, 1), end=date(2027, 2, 1))
    doc = build_invoice(key="usage:2027-01-01", kind=InvoiceKind.USAGE, currency="USD",
                        period=period, lines=lines, credits_applied=D("1000.00"))
    assert (doc.usage_amount, doc.true_up_amount) == (D("1000.00"), D("4000.00"))
    assert doc.total == D("4050.00")
    assert doc.usage_billed == D("4000.00")  # usage beyond credits (0) + the true-up
    with pytest.raises(ValueError, match="credits_applied: must be between 0 and the usage"):
        build_invoice(key="usage:2027-01-01", kind=InvoiceKind.USAGE, currency="USD",
                      period=period, lines=lines, credits_applied=D("1000.01"))


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mc", "field", "reason_part"),
    [
        ({"amount": "-1", "per": "term"}, "minimum_commitment.amount", ""),
        ({"amount": "0", "per": "term"}, "minimum_commitment.amount", ""),
        ({"amount": "100", "per": "year"}, "minimum_commitment.per", ""),
        ({"amount": "100"}, "minimum_commitment.per", "required"),
        ({"amount": "100", "per": "term", "currency": "EUR"}, "minimum_commitment.currency",
         "EUR differs from the contract's currency USD"),
        ({"amount": "100", "per": "term", "currency": "XXX1"}, "minimum_commitment.currency",
         ""),
        ({"amount": "100.001", "per": "term"}, "minimum_commitment.amount",
         "more decimals than USD has (2)"),
        ({"amount": "100", "per": "term", "prorate": True},
         "minimum_commitment.prorate", "unknown field"),
    ],
)
def test_bad_minimum_commitments_name_the_field(
    mc: dict[str, Any], field: str, reason_part: str
) -> None:
    with pytest.raises(BillowValidationError) as err:
        terms_for(CATALOG, minimum_commitment=mc)
    fields = {p: r for p, r in err.value.problems}
    assert field in fields, err.value.problems
    assert reason_part in fields[field]


def test_the_currency_may_be_named_when_it_is_the_contracts() -> None:
    t = terms_for(CATALOG, minimum_commitment={"amount": "10", "per": "term", "currency": "USD"})
    assert t.minimum_commitment == MinimumCommitment(
        amount=Decimal(10), per=CommitmentPer.TERM, currency="USD")


@pytest.mark.parametrize(
    ("per", "spend", "final", "left", "text"),
    [
        ("term", "180000.00", False, 3, "spent 180,000.00 of 250,000.00 USD, 3 months left"),
        ("term", "180000.00", False, 1, "spent 180,000.00 of 250,000.00 USD, 1 month left"),
        ("term", "240000.00", True, 0, "spent 240,000.00 of 250,000.00 USD, true-up 10,000.00"),
        ("term", "260000.00", True, 0, "spent 260,000.00 of 250,000.00 USD: met"),
        ("billing_period", "1500.00", False, 5,
         "2027-01-01..2027-02-01: spent 1,500.00 of 2,000.00 USD, true-up 500.00"),
    ],
)
def test_progress_text(per: str, spend: str, final: bool, left: int, text: str) -> None:
    t = terms(per, "2000.00" if per == "billing_period" else "250000.00")
    p = commitment_progress(t, periods(t)[0], D(spend), D(0), is_final=final)
    assert p is not None
    assert progress_text(p, "USD", left) == text


@pytest.mark.parametrize(
    ("start", "end", "left"),
    [("2027-10-01", "2028-01-01", 3), ("2027-10-15", "2028-01-01", 2),
     ("2028-01-01", "2028-01-01", 0), ("2027-01-31", "2027-02-28", 0)],
)
def test_months_left(start: str, end: str, left: int) -> None:
    assert months_left(date.fromisoformat(start), date.fromisoformat(end)) == left
