"""Void of a finalized invoice through the running contract (SPEC.md section 11)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.payments import SimulatedCardGateway
from tests.support.correction_checks import ledger_problems, rows
from tests.support.scenario import CORRECTION, ContractRun, at, contract_doc, event
from worker.simulate import settle
from workflows.contract import ContractWorkflow

D = Decimal


def _refusal(exc: WorkflowUpdateFailedError) -> tuple[str | None, list[object]]:
    cause = exc.cause
    assert isinstance(cause, ApplicationError)
    return cause.type, list(cause.details[0]) if cause.details else []


async def test_void_of_a_usage_invoice_returns_its_credits_and_reverses_its_entry(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=3, commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "100000")])  # 3000.00
        await run.advance_to(at("2027-02-05"))
        jan = await run.invoice("usage:2027-01-01")
        assert (jan["credits_applied"], jan["total"]) == ("1000.00", "2500.00")
        before = (await run.report())["revenue"]
        result = await run.correct({"kind": "void", "id": "void-1",
                                    "invoice": "usage:2027-01-01"})
        report = await run.report()
        state = await run.state()
        problems = await ledger_problems(db, "c-1")
        voids = await rows(db, "SELECT e.kind, e.booked_on, count(l.*) AS n FROM journal_entries "
                               "e JOIN journal_lines l ON l.entry_id = e.id WHERE e.kind = "
                               "'invoice_voided' GROUP BY e.id")
    assert (result.invoice_status, result.invoice_number) == ("void", jan["number"])
    jan_after = next(i for i in report["invoices"] if i["key"] == "usage:2027-01-01")
    assert (jan_after["status"], jan_after["number"]) == ("void", "INV-000002")
    # The credits it consumed are back; its revenue is reversed by one entry.
    assert {k: D(v) for k, v in report["credits"].items()} == {
        "granted": D("1000.00"), "consumed": 0, "expired": 0, "balance": D("1000.00")}
    assert D(before["usage_from_credits"]) == D("1000.00")
    assert D(before["usage_billed"]) == D("2000.00") and D(before["fees"]) == D("500.00")
    assert {k: D(v) for k, v in report["revenue"].items()} == {
        "usage_from_credits": 0, "usage_billed": 0, "fees": 0, "breakage": 0, "total": 0,
        "deferred_balance": D("1000.00")}
    assert [(v.kind, v.booked_on.isoformat(), v.n) for v in voids] == [
        ("invoice_voided", "2027-02-05", 6)]
    assert problems == []
    # The contract's state agrees: nothing to collect, balance back.
    inv = next(i for i in state.invoices if i.key == "usage:2027-01-01")
    assert inv.status == "void" and inv.outstanding == 0
    assert state.credit_balance == D("1000.00")
    assert [i.key for i in state.invoices if i.status == "overdue"] == ["commitment:2027-01-01"]


async def test_a_voided_invoice_is_no_longer_collected(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=3)) as run:
        await run.advance_to(at("2027-03-05"))  # Jan's invoice is overdue since Mar 4
        state = await run.state()
        assert state.has_overdue_invoice
        await run.correct({"kind": "void", "id": "v", "invoice": "usage:2027-01-01"})
        state = await run.state()
        assert not state.has_overdue_invoice
        await run.advance_to(at("2027-04-30"))
        reminders = await rows(db, "SELECT kind FROM dunning_events WHERE invoice_key = "
                                   "'usage:2027-01-01' ORDER BY id")
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await run.pay("usage:2027-01-01", "500.00", payment_id="late")
    # Overdue and the 1-day reminder went out before the void; the rest never did.
    assert [r.kind for r in reminders] == ["overdue", "reminder_1"]
    assert "void" in str(refused.value.cause)


async def test_void_while_auto_pay_retries_are_pending_stops_the_retries(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    gateway = SimulatedCardGateway(declines={"cust-1": 10})
    async with ContractRun(ts_env, db, contract_doc(term_months=2, auto_pay=True),
                           gateway=gateway) as run:
        await run.advance_to(at("2027-02-01", 3))  # Jan's invoice: first charge declined
        charged_before = len(gateway._seen)
        await run.correct({"kind": "void", "id": "v", "invoice": "usage:2027-01-01"})
        await run.advance_to(at("2027-02-20"))  # retries were due on day 1, 3 and 7
        charged_after = len(gateway._seen)
        paid = await rows(db, "SELECT count(*) AS n FROM payments")
        unapplied = await rows(db, "SELECT count(*) AS n FROM unapplied_payments")
    assert charged_before == 1 and charged_after == 1
    assert paid[0].n == 0 and unapplied[0].n == 0


async def test_void_of_an_unused_commitment_takes_its_credits_out_of_granted(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=2, commitment={"amount": "1000.00", "bonus_percent": "10"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "10000")])  # 300.00
        await run.advance_to(at("2027-01-20"))
        result = await run.correct({"kind": "void", "id": "v-c",
                                    "invoice": "commitment:2027-01-01"})
        state = await run.state()
        await run.advance_to(at("2027-02-01", 3))
        jan = await run.invoice("usage:2027-01-01")
        report = await run.report()
        problems = await ledger_problems(db, "c-1")
    assert result.invoice_status == "void"
    assert state.credit_balance == 0
    # No credits left to pay January: billed in full.
    assert (jan["credits_applied"], jan["total"]) == ("0.00", "800.00")
    assert D(report["credits"]["granted"]) == 0
    assert D(report["revenue"]["deferred_balance"]) == 0
    assert problems == []


async def test_a_commitment_whose_credits_were_used_is_not_voided(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=3, commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "1000")])  # 30.00
        await run.advance_to(at("2027-02-05"))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await run.correct({"kind": "void", "id": "v", "invoice": "commitment:2027-01-01"})
        state = await run.state()
        await run.advance_to(at("2027-03-01", 3))  # the contract goes on
        invoices = await run.invoices()
    kind, details = _refusal(refused.value)
    assert kind == "InvoiceState"
    assert details == [{"field": "invoice", "reason": "30.00 of the 1000.00 credits of "
                        "commitment:2027-01-01 were used: credit it instead"}]
    assert state.status.value == "active"
    assert [i["key"] for i in invoices][-1] == "usage:2027-02-01"


async def test_voiding_a_paid_invoice_is_refused_naming_the_invoice(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-02-05"))
        await run.pay("usage:2027-01-01", "500.00", payment_id="p1")
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await run.correct({"kind": "void", "id": "v", "invoice": "usage:2027-01-01"})
        state = await run.state()
    kind, details = _refusal(refused.value)
    assert kind == "InvoiceState"
    assert details == [{"field": "invoice", "reason": "usage:2027-01-01 is paid: only an open "
                        "or overdue invoice can be voided (credit it instead)"}]
    assert state.attention is None


async def test_void_sent_twice_and_concurrently_applies_once(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-03-05"))
        void = {"kind": "void", "id": "void-7", "invoice": "usage:2027-01-01"}
        assert run.handle is not None
        await settle(run.env, run.handle)
        first, second = await asyncio.gather(run.correct(void, settled=True),
                                             run.correct(void, settled=True))
        third = await run.correct(void)
        with pytest.raises(WorkflowUpdateFailedError) as conflict:
            await run.correct({**void, "reissue": True})
        # The same correction under other update ids (Temporal cannot deduplicate
        # them: the contract's records do), concurrently.
        parsed = CORRECTION.validate_python({**void, "id": "void-8",
                                             "invoice": "usage:2027-02-01"})
        await settle(run.env, run.handle)
        fourth, fifth = await asyncio.gather(*(
            run.handle.execute_update(ContractWorkflow.correct, parsed, id=f"other-{i}")
            for i in (1, 2)))
        entries = await rows(db, "SELECT count(*) AS n FROM journal_entries "
                                 "WHERE kind = 'invoice_voided'")
        corrections = await rows(db, "SELECT count(*) AS n FROM corrections")
    assert first == second == third
    assert fourth == fifth and fourth.invoice == "usage:2027-02-01"
    assert entries[0].n == 2 and corrections[0].n == 2
    kind, details = _refusal(conflict.value)
    assert kind == "CorrectionConflict"
    assert details == [{"field": "id", "reason": "correction 'void-7' was sent before with "
                        "other content"}]


async def test_credits_returned_after_the_term_ended_expire_again_as_breakage(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=1, commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "10000")])  # 300.00
        await run.advance_to(at("2027-02-05"))  # closed: 700.00 expired at term end
        before = (await run.report())["revenue"]
        await run.correct({"kind": "void", "id": "v", "invoice": "usage:2027-01-01"})
        report = await run.report()
        expiries = await rows(db, "SELECT entry_key, amount FROM credit_ledger "
                                  "WHERE kind = 'expire' ORDER BY id")
        problems = await ledger_problems(db, "c-1")
    assert (D(before["usage_from_credits"]), D(before["breakage"])) == (D("300.00"),
                                                                       D("700.00"))
    assert [(e.entry_key, e.amount) for e in expiries] == [
        ("expire:c-1:commitment", D("-700.00")), ("expire:c-1:commitment:2", D("-300.00"))]
    assert {k: D(v) for k, v in report["credits"].items()} == {
        "granted": D("1000.00"), "consumed": 0, "expired": D("1000.00"), "balance": 0}
    assert (D(report["revenue"]["usage_from_credits"]), D(report["revenue"]["breakage"]),
            D(report["revenue"]["deferred_balance"])) == (0, D("1000.00"), 0)
    assert problems == []
