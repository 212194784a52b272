"""The worked example: /work/shared/scenarios/acme must come out exactly as expected.json.

Composes the pure pieces the workflow uses (terms, periods, rating, fees,
credits, revenue) and compares every figure as a Decimal. Statuses and
``paid_on`` depend on payments and the clock and are the workflow's job.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from models.catalog import load_catalog_file
from models.contract import COMMITMENT_GRANT_ID, ContractTerms, load_contract_file, resolve_terms
from models.credits import CreditState, CreditSummary, initial_grants
from models.invoices import InvoiceDocument, commitment_invoice, usage_invoice
from models.periods import billing_periods
from models.rating import fee_lines, rate_events
from models.revenue import (
    JournalEntry,
    RevenueSummary,
    breakage,
    commitment_invoiced,
    payment_received,
    recognized_by_grant,
    summarize,
    usage_invoiced,
)
from models.timeline import PayAction, load_timeline_file
from models.usage import parse_usage_jsonl
from tests.support.paths import ACME

DECIMAL_FIELDS = {"quantity", "unit_price", "amount", "subtotal", "credits_applied", "total"}



def _bill() -> tuple[ContractTerms, list[InvoiceDocument], CreditSummary, RevenueSummary]:
    catalog = load_catalog_file(ACME / "catalog.yaml")
    terms = resolve_terms(load_contract_file(ACME / "contract.yaml"), catalog)
    events, errors = parse_usage_jsonl((ACME / "usage.jsonl").read_text())
    assert errors == []
    timeline = load_timeline_file(ACME / "timeline.yaml")

    state = CreditState()
    for g in initial_grants(terms):
        state = state.grant(g)
    journal: list[JournalEntry] = []
    invoices: list[InvoiceDocument] = []

    commitment = commitment_invoice(terms)
    invoices.append(commitment)
    journal.append(commitment_invoiced(commitment.key, commitment.total, COMMITMENT_GRANT_ID))

    periods = billing_periods(
        terms.starts_on,
        terms.term_end,
        terms.billing_cycle,
        terms.billing_anchor,
        terms.timezone,
        cycle_anchor=terms.cycle_anchor,
    )
    for period in periods:
        rating = rate_events(terms, period, events)
        assert rating.unpriced == []
        fees = fee_lines(terms, period)
        state, applied = state.apply(rating.usage_total, period.end)
        inv = usage_invoice(
            terms, period, [*rating.lines, *fees], credits_applied=applied.applied_total
        )
        invoices.append(inv)
        grants = {g.id: g for g in state.grants}
        journal += usage_invoiced(
            inv.key,
            currency=terms.currency,
            usage_billed=inv.usage_amount - inv.credits_applied,
            fees=sum((f.amount for f in fees), Decimal(0)),
            consumption=[(grants[a.grant_id], a.amount) for a in applied.per_grant],
            recognized_so_far=recognized_by_grant(journal),
        )

    # term end: the final invoice has drawn down, then everything left expires
    state, expired = state.expire(terms.term_end_at)
    state, rest = state.expire_all()
    assert rest == []
    recognized = recognized_by_grant(journal)
    for x in expired:
        grant, _ = state.get(x.grant_id)
        entry = breakage(grant, recognized.get(grant.id, Decimal(0)))
        if entry is not None:
            journal.append(entry)

    for action in timeline:
        assert isinstance(action, PayAction)
        journal.append(payment_received(f"payment:{action.invoice}:{action.at}", action.amount))

    return terms, invoices, state.summary(), summarize(journal, terms.currency)


def _norm(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if v is None and k in ("part_start", "part_end"):
            continue
        out[k] = Decimal(v) if k in DECIMAL_FIELDS and v is not None else v
    return out


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ACME / "expected.json").read_text())
    return data


@pytest.fixture(scope="module")
def billed() -> tuple[ContractTerms, list[InvoiceDocument], CreditSummary, RevenueSummary]:
    return _bill()


def test_invoice_keys_in_issue_order(billed: Any, expected: dict[str, Any]) -> None:
    _, invoices, _, _ = billed
    assert [i.key for i in invoices] == [i["key"] for i in expected["invoices"]]


@pytest.mark.parametrize("index", range(5))
def test_invoice(billed: Any, expected: dict[str, Any], index: int) -> None:
    _, invoices, _, _ = billed
    got = invoices[index].model_dump(mode="json")
    want = expected["invoices"][index]
    for field in ("key", "kind", "period", "issued_on", "due_on"):
        assert got[field] == want[field], field
    for field in ("subtotal", "credits_applied", "total"):
        assert Decimal(got[field]) == Decimal(want[field]), field
    assert [_norm(ln) for ln in got["lines"]] == [_norm(ln) for ln in want["lines"]]


def test_currency(billed: Any, expected: dict[str, Any]) -> None:
    terms, invoices, _, _ = billed
    assert terms.contract_id == expected["contract_id"]
    assert {i.currency for i in invoices} == {expected["currency"]}


def test_credits(billed: Any, expected: dict[str, Any]) -> None:
    _, _, credits, _ = billed
    for k, v in expected["credits"].items():
        assert getattr(credits, k) == Decimal(v), k


def test_revenue(billed: Any, expected: dict[str, Any]) -> None:
    _, _, _, revenue = billed
    for k, v in expected["revenue"].items():
        assert getattr(revenue, k) == Decimal(v), k


def test_output_serializes_decimals_as_strings(billed: Any) -> None:
    _, invoices, credits, revenue = billed
    dumped = json.loads(json.dumps([i.model_dump(mode="json") for i in invoices]))
    assert isinstance(dumped[1]["lines"][0]["amount"], str)
    assert isinstance(credits.model_dump(mode="json")["granted"], str)
    assert revenue.model_dump(mode="json")["total"] == "106000.00"
