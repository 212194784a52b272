"""Credit notes through the running contract, to the cent (SPEC.md section 11)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.correction_store import credit_notes_of
from activities.payments import GatewayResult, SimulatedCardGateway
from tests.support.correction_checks import ledger_problems, rows
from tests.support.scenario import ContractRun, at, contract_doc, event
from worker.simulate import settle

D = Decimal


def _decimals(d: dict[str, Any]) -> dict[str, Decimal]:
    return {k: D(v) for k, v in d.items()}


async def _notes(db: AsyncEngine) -> list[Any]:
    async with db.connect() as conn:
        return await credit_notes_of(conn, "c-1")


async def test_line_credit_on_an_invoice_paid_part_with_credits_part_with_cash(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    # 2000 credits bought for 1600.00 (cost basis 0.8).
    doc = contract_doc(term_months=2, commitment={"amount": "1600.00", "credits": "2000.00"})
    gateway = SimulatedCardGateway()
    async with ContractRun(ts_env, db, doc, gateway=gateway) as run:
        await run.send_usage([
            event("t1", "2027-01-10T00:00:00Z", "100000"),                       # 3000.00
            event("r1", "2027-01-11T00:00:00Z", "1000000", meter="requests"),    # 1000.00
        ])
        await run.advance_to(at("2027-02-05"))
        jan = await run.invoice("usage:2027-01-01")
        assert (jan["subtotal"], jan["credits_applied"], jan["total"]) == (
            "4500.00", "2000.00", "2500.00")
        await run.pay("usage:2027-01-01", "1000.00", payment_id="wire-1")
        await run.advance_to(at("2027-02-10", 9))
        first = await run.correct({"kind": "credit", "id": "cn-1", "invoice": "usage:2027-01-01",
                                   "reason": "billing_error",
                                   "lines": [{"line": 2, "amount": "400.00"}]})
        after_first = await run.report()
        state = await run.state()
        await run.advance_to(at("2027-02-12", 9))
        second = await run.correct({"kind": "credit", "id": "cn-2",
                                    "invoice": "usage:2027-01-01", "reason": "duplicate",
                                    "amount": "4100.00"})
        after_second = await run.report()
        state_after = await run.state()
        await run.advance_to(at("2027-03-02"))
        final = await run.report()
        problems = await ledger_problems(db, "c-1")
        notes = await _notes(db)
        refunds = await rows(db, "SELECT refund_key, amount, status, method, gateway_ref, "
                                 "refunded_on FROM refunds")
    # Note 1: usage line 2, 400.00. Credits share 400 x 2000 / 4000 = 200.00 back to the
    # grant (160.00 of revenue back to deferred); 200.00 off the 1500.00 still owed.
    assert first.credit_note is not None
    n1 = first.credit_note
    assert (n1.number, n1.issued_on.isoformat(), n1.total, n1.reason) == (
        "CN-000001", "2027-02-10", D("400.00"), "billing_error")
    assert [(ln.line, ln.kind, ln.amount) for ln in n1.lines] == [(2, "usage", D("400.00"))]
    assert n1.allocation.model_dump() == {"credits_returned": D("200.00"),
                                          "outstanding_reduced": D("200.00"),
                                          "refunded": D("0"), "customer_credit": D("0")}
    jan1 = next(i for i in after_first["invoices"] if i["key"] == "usage:2027-01-01")
    assert (jan1["status"], D(jan1["credited"]), D(jan1["outstanding"])) == (
        "open", D("400.00"), D("1300.00"))
    assert _decimals(after_first["credits"]) == {"granted": D("2000.00"),
                                                 "consumed": D("1800.00"), "expired": 0,
                                                 "balance": D("200.00")}
    assert _decimals(after_first["revenue"]) == {
        "usage_from_credits": D("1440.00"), "usage_billed": D("1800.00"), "fees": D("500.00"),
        "breakage": 0, "total": D("3740.00"), "deferred_balance": D("160.00")}
    jan_state = next(i for i in state.invoices if i.key == "usage:2027-01-01")
    assert (jan_state.credited, jan_state.outstanding) == (D("400.00"), D("1300.00"))
    assert state.credit_balance == D("200.00")
    # Note 2: the rest of the invoice (4100.00): 1800.00 credits back (all 1440.00 of their
    # revenue), 1300.00 clears what is owed, 1000.00 paid in cash is refunded.
    assert second.credit_note is not None
    n2 = second.credit_note
    assert (n2.number, n2.total) == ("CN-000002", D("4100.00"))
    assert [(ln.line, ln.amount) for ln in n2.lines] == [
        (1, D("3000.00")), (2, D("600.00")), (3, D("500.00"))]
    assert n2.allocation.model_dump() == {"credits_returned": D("1800.00"),
                                          "outstanding_reduced": D("1300.00"),
                                          "refunded": D("1000.00"), "customer_credit": D("0")}
    assert n2.refund is not None and (n2.refund.status, n2.refund.gateway_ref) == (
        "refunded", "sim_refund_1")
    assert gateway.refunds == [("cust-1", D("1000.00"))]
    assert [(r.refund_key, r.amount, r.status, r.method, r.refunded_on.isoformat())
            for r in refunds] == [("refund:cn-2", D("1000.00"), "refunded", "simulated_card",
                                   "2027-02-12")]
    jan2 = next(i for i in after_second["invoices"] if i["key"] == "usage:2027-01-01")
    assert (jan2["status"], jan2["paid_on"], D(jan2["credited"]), D(jan2["outstanding"])) == (
        "paid", "2027-02-12", D("4500.00"), 0)
    assert _decimals(after_second["revenue"]) == {
        "usage_from_credits": 0, "usage_billed": 0, "fees": 0, "breakage": 0, "total": 0,
        "deferred_balance": D("1600.00")}
    assert state_after.credit_balance == D("2000.00")
    assert not any(i.key == "usage:2027-01-01" and i.outstanding for i in state_after.invoices)
    # Term end: nothing used any more, so the whole 1600.00 is breakage.
    assert D(final["revenue"]["breakage"]) == D("1600.00")
    assert [n.number for n in notes] == ["CN-000001", "CN-000002"]
    assert problems == []


async def test_customer_credit_pays_the_next_invoice_and_a_refund_is_paid_back(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    gateway = SimulatedCardGateway()
    async with ContractRun(ts_env, db, contract_doc(term_months=3), gateway=gateway) as run:
        await run.send_usage([event("j", "2027-01-10T00:00:00Z", "1000"),        # 30.00
                              event("f", "2027-02-10T00:00:00Z", "2000")])       # 60.00
        await run.advance_to(at("2027-02-05"))
        await run.pay("usage:2027-01-01", "530.00", payment_id="wire-1")
        kept = await run.correct({"kind": "credit", "id": "cn-keep",
                                  "invoice": "usage:2027-01-01", "reason": "service_issue",
                                  "lines": [{"line": 1, "amount": "30.00"}],
                                  "remainder": "credit"})
        back = await run.correct({"kind": "credit", "id": "cn-back",
                                  "invoice": "usage:2027-01-01", "reason": "goodwill",
                                  "lines": [{"line": 2, "amount": "100.00"}]})
        state = await run.state()
        await run.advance_to(at("2027-03-01", 3))
        feb = await run.invoice("usage:2027-02-01")
        jan = await run.invoice("usage:2027-01-01")
        report = await run.report()
        problems = await ledger_problems(db, "c-1")
    assert kept.credit_note is not None and back.credit_note is not None
    assert kept.credit_note.allocation.customer_credit == D("30.00")
    assert back.credit_note.allocation.refunded == D("100.00")
    assert gateway.refunds == [("cust-1", D("100.00"))]
    assert state.credit_balance == D("30.00")
    # The customer credit (cost basis 1) pays February's usage.
    assert (feb["subtotal"], feb["credits_applied"], feb["total"]) == (
        "560.00", "30.00", "530.00")
    assert (jan["status"], D(jan["credited"]), D(jan["outstanding"])) == (
        "paid", D("130.00"), 0)
    assert _decimals(report["revenue"])["usage_from_credits"] == D("30.00")
    assert _decimals(report["revenue"])["usage_billed"] == D("30.00")  # 0 (Jan) + 30 (Feb)
    assert _decimals(report["revenue"])["fees"] == D("900.00")  # 500 - 100 + 500
    assert problems == []


async def test_credit_note_on_a_commitment_keeps_breakage_equal_to_paid_minus_recognized(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=2, commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("j", "2027-01-10T00:00:00Z", "10000")])  # 300.00
        await run.advance_to(at("2027-02-10"))
        result = await run.correct({"kind": "credit", "id": "cn-c",
                                    "invoice": "commitment:2027-01-01", "reason": "goodwill",
                                    "amount": "200.00"})
        with pytest.raises(WorkflowUpdateFailedError) as too_much:
            await run.correct({"kind": "credit", "id": "cn-d", "invoice": "commitment:2027-01-01",
                               "reason": "goodwill", "amount": "600.00"})
        state = await run.state()
        await run.advance_to(at("2027-03-02"))
        report = await run.report()
        commitment = await run.invoice("commitment:2027-01-01")
        problems = await ledger_problems(db, "c-1")
    assert result.credit_note is not None
    assert result.credit_note.allocation.outstanding_reduced == D("200.00")
    assert state.credit_balance == D("500.00")  # 1000 - 300 used - 200 taken out
    cause = too_much.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidCorrection"
    assert cause.details[0] == [{"field": "amount", "reason": "the note would take 600.00 "
                                 "unused credits from grant 'commitment', which has 500.00 left"}]
    assert (D(commitment["credited"]), D(commitment["outstanding"])) == (D("200.00"),
                                                                        D("800.00"))
    # Granted 800 = consumed 300 + expired 500; paid 800 = recognized 300 + breakage 500.
    assert _decimals(report["credits"]) == {"granted": D("800.00"), "consumed": D("300.00"),
                                            "expired": D("500.00"), "balance": 0}
    assert _decimals(report["revenue"])["usage_from_credits"] == D("300.00")
    assert _decimals(report["revenue"])["breakage"] == D("500.00")
    assert _decimals(report["revenue"])["deferred_balance"] == 0
    assert problems == []


async def test_credit_twice_concurrently_and_the_refusals(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=3)) as run:
        await run.send_usage([event("j", "2027-01-10T00:00:00Z", "1000")])  # 30.00
        await run.advance_to(at("2027-03-05"))  # both invoices issued, January overdue
        note = {"kind": "credit", "id": "cn-1", "invoice": "usage:2027-01-01",
                "reason": "billing_error", "lines": [{"line": 1, "amount": "30.00"}]}
        assert run.handle is not None
        await settle(run.env, run.handle)
        a, b = await asyncio.gather(run.correct(note, settled=True),
                                    run.correct(note, settled=True))
        c = await run.correct(note)
        refusals: dict[str, ApplicationError] = {}
        for name, body in {
            "conflict": {**note, "lines": [{"line": 1, "amount": "20.00"}]},
            "uncredited": {**note, "id": "cn-2", "lines": [{"line": 1, "amount": "0.01"}]},
            "whole": {**note, "id": "cn-3", "lines": None, "amount": "500.01"},
        }.items():
            with pytest.raises(WorkflowUpdateFailedError) as exc:
                await run.correct(body)
            assert isinstance(exc.value.cause, ApplicationError)
            refusals[name] = exc.value.cause
        await run.correct({"kind": "void", "id": "v-feb", "invoice": "usage:2027-02-01"})
        with pytest.raises(WorkflowUpdateFailedError) as void_credit:
            await run.correct({**note, "id": "cn-4", "invoice": "usage:2027-02-01"})
        state = await run.state()
        counted = await rows(db, "SELECT count(*) AS n FROM credit_notes")
    assert a == b == c and a.credit_note is not None and a.credit_note.number == "CN-000001"
    assert counted[0].n == 1
    assert refusals["conflict"].type == "CorrectionConflict"
    assert refusals["uncredited"].type == "InvalidCorrection"
    assert refusals["uncredited"].details[0] == [{
        "field": "lines[0].amount",
        "reason": "0.01 exceeds what is uncredited on line 1 (0.00)"}]
    assert refusals["whole"].details[0] == [{
        "field": "amount", "reason": "500.01 exceeds what is uncredited on usage:2027-01-01 "
                                     "(500.00)"}]
    cause = void_credit.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvoiceState"
    assert cause.details[0] == [{"field": "invoice", "reason": "usage:2027-02-01 is void: a "
                                 "void invoice is not credited"}]
    # Still overdue for what the note left owed: 500.00 of 530.00.
    jan = next(i for i in state.invoices if i.key == "usage:2027-01-01")
    assert (jan.status, jan.outstanding) == ("overdue", D("500.00"))
    assert state.has_overdue_invoice and state.attention is None


class RefundsDeclinedOnce(SimulatedCardGateway):
    """A card gateway whose first refund is declined (the card was closed, say)."""

    async def refund(self, *, customer_id: str, amount: Decimal, currency: str,
                     idempotency_key: str) -> GatewayResult:
        if not getattr(self, "declined", False):
            self.declined = True
            return GatewayResult(accepted=False, reason="card_closed")
        return await super().refund(customer_id=customer_id, amount=amount,
                                    currency=currency, idempotency_key=idempotency_key)


async def test_a_declined_refund_stays_pending_and_is_retried_once_paid(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    gateway = RefundsDeclinedOnce()
    async with ContractRun(ts_env, db, contract_doc(term_months=2), gateway=gateway) as run:
        await run.advance_to(at("2027-02-05"))
        await run.pay("usage:2027-01-01", "500.00", payment_id="wire-1")
        note = {"kind": "credit", "id": "cn-r", "invoice": "usage:2027-01-01",
                "reason": "goodwill", "amount": "50.00"}
        first = await run.correct(note)
        pending = await rows(db, "SELECT status FROM refunds")
        again = await run.correct(note)  # a resend: the first answer
        await run.advance_to(at("2027-02-07"))  # retried one day after the note
        refunded = await rows(db, "SELECT status, refunded_on FROM refunds")
        later = await run.correct(note)
        entries = await rows(db, "SELECT count(*) AS n FROM journal_entries WHERE kind = 'refund'")
        problems = await ledger_problems(db, "c-1")
    assert first.credit_note is not None and first.credit_note.refund is not None
    assert first.credit_note.refund.status == "pending"
    assert [r.status for r in pending] == ["pending"]
    assert again == first
    assert [(r.status, r.refunded_on.isoformat()) for r in refunded] == [
        ("refunded", "2027-02-06")]
    assert later.credit_note is not None and later.credit_note.refund is not None
    assert gateway.refunds == [("cust-1", D("50.00"))]
    assert entries[0].n == 1
    assert problems == []


async def test_a_note_takes_off_no_more_than_is_owed_after_a_fraction_of_a_cent_was_paid(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Found by the random-lifecycle fuzz (issue 14). Payments may carry up to 12
    decimals (SPEC.md section 6), so 0.001 paid on a 500.00 invoice leaves 499.999
    owed. A note of 500.00 then reduces the outstanding by exactly that (not by the
    499.999 rounded up to 500.00, which left -0.001 owed on an unpaid invoice),
    clears the invoice and refunds the 0.001 that was paid."""
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-02-05"))
        jan = await run.invoice("usage:2027-01-01")
        assert (jan["total"], jan["status"]) == ("500.00", "open")
        await run.pay("usage:2027-01-01", "0.001", payment_id="fraction")
        result = await run.correct({"kind": "credit", "id": "cn-all",
                                    "invoice": "usage:2027-01-01", "reason": "goodwill",
                                    "amount": "500.00"})
        state = await run.state()
        owed = await rows(db, "SELECT status, total - amount_paid - credit_allocated AS owed, "
                              "paid_on FROM invoices WHERE key = 'usage:2027-01-01'")
        problems = await ledger_problems(db, "c-1")
    assert result.credit_note is not None
    assert result.credit_note.allocation.model_dump() == {
        "credits_returned": D(0), "outstanding_reduced": D("499.999"), "refunded": D("0.001"),
        "customer_credit": D(0)}
    assert result.invoice_status == "paid"
    assert [(r.status, r.owed, r.paid_on.isoformat()) for r in owed] == [
        ("paid", D(0), "2027-02-05")]
    inv = next(i for i in state.invoices if i.key == "usage:2027-01-01")
    assert (inv.status, inv.outstanding) == ("paid", D(0))
    assert problems == []
