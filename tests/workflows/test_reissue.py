"""Void and reissue of a usage invoice after a backdated rate override (SPEC.md section 11)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.support.correction_checks import ledger_problems
from tests.support.scenario import ContractRun, at, contract_doc, event

D = Decimal


async def test_void_and_reissue_after_a_backdated_rate_override(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=3, commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([
            event("j1", "2027-01-10T00:00:00Z", "100000"),  # 3000.00 at 0.03
            event("f1", "2027-02-10T00:00:00Z", "10000"),   # February
        ])
        await run.advance_to(at("2027-02-05", 9))
        jan = await run.invoice("usage:2027-01-01")
        assert (jan["number"], jan["credits_applied"], jan["total"]) == (
            "INV-000002", "1000.00", "2500.00")
        # The negotiated rate was 0.01 from the start: a backdated override. The open
        # period (February) takes it from its start; January needs a reissue.
        await run.amend({"id": "rate-fix", "kind": "rate_override",
                         "effective": "2027-01-01T00:00:00Z",
                         "override": {"meter": "tokens", "match": {"model": "gpt-4"},
                                      "unit_price": "0.01"}})
        result = await run.correct({"kind": "void", "id": "void-jan",
                                    "invoice": "usage:2027-01-01", "reissue": True})
        state = await run.state()
        with pytest.raises(WorkflowUpdateFailedError) as again:
            await run.correct({"kind": "reissue", "id": "re-again",
                               "invoice": "usage:2027-01-01"})
        await run.advance_to(at("2027-03-01", 3))
        invoices = await run.invoices()
        report = await run.report()
        problems = await ledger_problems(db, "c-1")
    assert result.invoice_status == "void" and result.reissued is not None
    reissued = result.reissued
    assert (reissued.key, reissued.number, reissued.issued_on.isoformat(),
            reissued.due_on and reissued.due_on.isoformat()) == (
        "usage:2027-01-01/2", "INV-000003", "2027-02-05", "2027-03-07")
    by_key = {i["key"]: i for i in invoices}
    jan_void, jan2, feb = (by_key["usage:2027-01-01"], by_key["usage:2027-01-01/2"],
                           by_key["usage:2027-02-01"])
    assert (jan_void["status"], jan_void["number"]) == ("void", "INV-000002")
    # 100000 tokens at 0.01 = 1000.00, all paid by the credits the void gave back.
    assert [(ln["kind"], ln.get("unit_price"), ln["amount"]) for ln in jan2["lines"]] == [
        ("usage", "0.01", "1000.00"), ("fee", None, "500.00")]
    assert (jan2["period"], jan2["subtotal"], jan2["credits_applied"], jan2["total"],
            jan2["status"]) == ({"start": "2027-01-01", "end": "2027-02-01"}, "1500.00",
                                "1000.00", "500.00", "open")
    assert [(ln["kind"], ln.get("unit_price"), ln["amount"]) for ln in feb["lines"]] == [
        ("usage", "0.01", "100.00"), ("fee", None, "500.00")]
    assert (feb["number"], feb["credits_applied"], feb["total"]) == ("INV-000004", "0.00",
                                                                    "600.00")
    assert {k: D(v) for k, v in report["credits"].items()} == {
        "granted": D("1000.00"), "consumed": D("1000.00"), "expired": 0, "balance": 0}
    assert {k: D(v) for k, v in report["revenue"].items()} == {
        "usage_from_credits": D("1000.00"), "usage_billed": D("100.00"), "fees": D("1000.00"),
        "breakage": 0, "total": D("2100.00"), "deferred_balance": 0}
    # The contract collects the reissue, not the voided invoice.
    keys = [i.key for i in state.invoices if i.status in ("open", "overdue")]
    assert "usage:2027-01-01/2" in keys and "usage:2027-01-01" not in keys
    assert state.credit_balance == 0
    cause = again.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidCorrection"
    assert cause.details[0] == [{"field": "invoice", "reason": "the period of "
                                 "usage:2027-01-01 is already invoiced by usage:2027-01-01/2"}]
    assert problems == []


async def test_reissue_later_and_its_refusals(ts_env: WorkflowEnvironment, db: AsyncEngine
                                              ) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.send_usage([event("j1", "2027-01-10T00:00:00Z", "1000")])  # 30.00
        await run.advance_to(at("2027-02-03"))
        with pytest.raises(WorkflowUpdateFailedError) as not_void:
            await run.correct({"kind": "reissue", "id": "r0", "invoice": "usage:2027-01-01"})
        await run.correct({"kind": "void", "id": "v1", "invoice": "usage:2027-01-01"})
        await run.advance_to(at("2027-02-08"))
        result = await run.correct({"kind": "reissue", "id": "r1",
                                    "invoice": "usage:2027-01-01"})
        problems = await ledger_problems(db, "c-1")
    cause = not_void.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvoiceState"
    assert result.reissued is not None
    assert (result.reissued.key, result.reissued.issued_on.isoformat(),
            result.reissued.total) == ("usage:2027-01-01/2", "2027-02-08", D("530.00"))
    assert problems == []


async def test_a_reissue_keeps_the_spend_limit_and_true_up_lines_of_its_period(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Reissued, a period is billed by the same rules as at its close: the meter's
    cap line and the minimum commitment's true-up come back (SPEC sections 11, 12)."""
    doc = contract_doc(term_months=2,
                       minimum_commitment={"amount": "5000.00", "per": "billing_period"},
                       rate_overrides=[{"meter": "tokens", "maximum_amount": "2000.00"}])
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "100000")])  # 3000.00
        await run.advance_to(at("2027-02-05"))
        jan = await run.invoice("usage:2027-01-01")
        await run.correct({"kind": "void", "id": "v-1", "invoice": "usage:2027-01-01",
                           "reissue": True})
        again = await run.invoice("usage:2027-01-01/2")
        problems = await ledger_problems(db, "c-1")

    def kinds(inv: dict[str, Any]) -> list[tuple[str, str]]:
        return [(ln["kind"], ln["amount"]) for ln in inv["lines"]]

    # 3000.00 of tokens capped at 2000.00; 2000 + 500 fee... the minimum counts usage
    # spend (2000.00) and trues up to 5000.00.
    assert ("maximum", "-1000.00") in kinds(jan) and ("true_up", "3000.00") in kinds(jan)
    assert kinds(again) == kinds(jan)
    assert again["total"] == jan["total"]
    assert problems == []


async def test_a_reissue_through_the_ledger_keeps_a_partial_periods_proration(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Found by the corrections fuzz (issue 14). After the workflow has completed a
    void with reissue goes straight to the ledger (as the API sends it). The reissue of
    a period shortened by a termination must prorate its minimum as the close did:
    the ledger's request gave the period itself as its full period, so the minimum
    commitment's true-up came back unprorated."""
    from datetime import UTC, datetime

    from temporalio.api.enums.v1 import EventType

    from activities.correction_store import ledger_request
    from activities.corrections import apply_correction
    from activities.ledger_store import lock_contract
    from models.corrections import CorrectVoid

    doc = contract_doc(term_months=12,
                       minimum_commitment={"amount": "3100.00", "per": "billing_period"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.amend({"id": "stop", "kind": "terminate", "effective": "2027-01-11T00:00:00Z"})
        await run.advance_to(at("2027-04-01"))
        assert run.handle is not None
        last = (await run.handle.fetch_history()).events[-1].event_type
        assert last == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
        jan = await run.invoice("usage:2027-01-01")
        void = CorrectVoid(id="void-jan", invoice="usage:2027-01-01", reissue=True)
        async with db.begin() as conn:
            await lock_contract(conn, "c-1")
            request = await ledger_request(conn, "c-1", void,
                                           datetime(2027, 4, 1, 9, tzinfo=UTC))
            outcome = await apply_correction(conn, request)
        again = await run.invoice("usage:2027-01-01/2")
        problems = await ledger_problems(db, "c-1")
    # 10 of January's 31 days: the minimum 3100.00 prorates to 1000.00, as on the close.
    assert [(ln["kind"], ln["amount"]) for ln in jan["lines"] if ln["kind"] == "true_up"] == [
        ("true_up", "1000.00")]
    assert outcome.result.reissued is not None
    assert [(ln["kind"], ln["amount"]) for ln in again["lines"]] == [
        (ln["kind"], ln["amount"]) for ln in jan["lines"]]
    assert (again["total"], again["period"]) == (jan["total"], jan["period"])
    assert problems == []
