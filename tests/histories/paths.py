"""Contract lifecycles whose workflow commands changed between released versions.

Each scenario drives one path through the real workflow (``ContractRun``) and
is recorded once per released version (``<path>.<version>.json``, see
record.py). The code uses only what every released version has
(``ContractRun``, ``contract_doc``, ``event``, ``record_payment_in``), so the
same scenario is recorded from a worktree at an old commit. Terms are short
(one to three months) to keep the history files small.

The contract starts on 2027-01-01; the time-skipping server starts at the
wall clock, so every scenario begins before the term opens.
"""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

try:
    from activities.payment_record import record_payment_in
except ImportError:  # releases before activities/ledger.py was split
    from activities.ledger import record_payment_in  # type: ignore[attr-defined, no-redef]
from activities.payments import GatewayResult, SimulatedCardGateway
from models.amendments import parse_amendment
from models.operations import PaymentRequest
from tests.support.scenario import ContractRun, at, contract_doc, event
from workflows.contract import ContractWorkflow, PaymentInput

TERM_START = "2027-01-01T00:00:00Z"
UNPRICED = {"model": "claude"}  # no rate in the catalog: the invoice is held


def _price_claude(amendment_id: str) -> dict[str, Any]:
    override = {"meter": "tokens", "match": UNPRICED, "unit_price": "0.01"}
    return {"id": amendment_id, "kind": "rate_override", "override": override}


async def amendment_at_start(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A rate override and a credit grant sent before the term, effective at its start.

    v1 opened the term (commitment invoice and grants) before applying them; since
    14c917d they apply first (SPEC.md section 7). The contract grant makes the
    two orders differ in activity types, not only in their inputs.
    """
    doc = contract_doc(
        term_months=2,
        commitment={"amount": "1000.00"},
        credit_grants=[{"id": "welcome", "credits": "50.00"}],
    )
    run = ContractRun(env, engine, doc)
    async with run:
        await run.amend(
            {
                "id": "start-discount",
                "kind": "rate_override",
                "effective": TERM_START,
                "override": {"meter": "tokens", "discount_percent": "20"},
            }
        )
        await run.amend(
            {"id": "start-credits", "kind": "grant_credits", "effective": TERM_START,
             "credits": "100.00"}
        )
        await run.send_usage([event("e1", "2027-01-05T00:00:00Z", "1000")])
        await run.advance_to(at("2027-03-02"))
    return run


async def termination(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A terminate mid-term: the term ends early, the last period is partial."""
    run = ContractRun(env, engine, contract_doc(term_months=3))
    async with run:
        await run.send_usage([event("e1", "2027-01-05T00:00:00Z", "1000")])
        await run.advance_to(at("2027-02-10"))
        await run.amend({"id": "bye", "kind": "terminate", "effective": "2027-02-15T00:00:00Z"})
        await run.advance_to(at("2027-03-20"))
    return run


async def terminate_held(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A terminate (no effective) while the first invoice is held for unpriced usage.

    v1 took it effective from the held period's start; since 776cfb5 it ends the
    contract now, and a rate override afterwards releases the held invoice.
    """
    run = ContractRun(env, engine, contract_doc(term_months=3))
    async with run:
        await run.send_usage([event("e1", "2027-01-05T00:00:00Z", "1000", **UNPRICED)])
        await run.advance_to(at("2027-02-01", 3))
        await run.amend({"id": "bye", "kind": "terminate"})
        await run.advance_to(at("2027-02-03"))
        await _amend_or_refused(run, _price_claude("price-claude"))
        await run.advance_to(at("2027-04-10"))
    return run


async def hold_and_resume(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Unpriced usage holds the invoice (needs_attention); a rate override resumes it."""
    run = ContractRun(env, engine, contract_doc(term_months=2))
    async with run:
        await run.send_usage([event("e1", "2027-01-05T00:00:00Z", "1000", **UNPRICED)])
        await run.advance_to(at("2027-02-01", 3))
        await run.amend(_price_claude("price-claude"))
        await run.advance_to(at("2027-03-02"))
    return run


async def collection(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """An unpaid invoice goes overdue with all its reminders; paid in two parts."""
    run = ContractRun(env, engine, contract_doc(term_months=2, payment_terms_days=10))
    async with run:
        await run.advance_to(at("2027-02-20"))  # Jan overdue, reminders 1 and 7
        await run.pay("usage:2027-01-01", "200.00")
        await run.advance_to(at("2027-03-15"))  # Jan reminder 30; Feb issued
        await run.pay("usage:2027-01-01", "300.00")
        await run.pay("usage:2027-02-01", "500.00")
        await run.advance_to(at("2027-03-20"))
    return run


async def autopay_retries(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Auto-pay with a declining card: three retries, then due-date rules; paid by hand."""
    gateway = SimulatedCardGateway(declines={"cust-1": 4})
    run = ContractRun(env, engine, contract_doc(term_months=2, auto_pay=True), gateway=gateway)
    async with run:
        await run.advance_to(at("2027-03-12"))  # Jan declined 4 times, overdue; Feb charged
        await run.pay("usage:2027-01-01", "500.00")
        await run.advance_to(at("2027-03-20"))
    return run


async def autopay_refused(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A retried auto-pay charge whose payment the ledger refuses.

    The invoice is settled in the ledger directly (as the API does for a
    contract whose workflow ended) between a declined charge and its retry.
    v2 failed the workflow on that refusal; since a426be8 auto-pay stops.
    """
    gateway = SimulatedCardGateway(declines={"cust-1": 1})
    run = ContractRun(env, engine, contract_doc(term_months=1, auto_pay=True), gateway=gateway)
    async with run:
        await run.advance_to(at("2027-02-01", 12))  # first charge declined, retry tomorrow
        async with engine.begin() as conn:
            await record_payment_in(
                conn,
                PaymentRequest(contract_id="c-1", invoice_key="usage:2027-01-01",
                               payment_key="out-of-band", amount=Decimal("500.00"),
                               received_on=date(2027, 2, 1)),
            )
        await run.advance_to(at("2027-03-20"))
    return run


async def top_up(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A priced grant_credits: a top_up invoice, paid; the credits pay usage."""
    run = ContractRun(env, engine, contract_doc(term_months=2))
    async with run:
        await run.advance_to(at("2027-01-10"))
        await run.amend(
            {"id": "topup", "kind": "grant_credits", "credits": "600.00", "price": "500.00"}
        )
        await run.send_usage([event("e1", "2027-01-12T00:00:00Z", "1000")])
        await run.advance_to(at("2027-01-20"))
        await run.pay("top_up:2027-01-10", "500.00")
        await run.advance_to(at("2027-03-02"))
    return run


async def pending_dropped(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """An amendment scheduled after a terminate's new term end.

    Since 776cfb5 the term close drops it; v1 kept the workflow waiting for it
    and applied it after the term had ended.
    """
    run = ContractRun(env, engine, contract_doc(term_months=3))
    async with run:
        await run.advance_to(at("2027-01-10"))
        await run.amend(
            {"id": "net45", "kind": "change_payment_terms", "payment_terms_days": 45,
             "effective": "2027-03-01T00:00:00Z"}
        )
        await run.advance_to(at("2027-01-20"))
        await run.amend({"id": "bye", "kind": "terminate", "effective": "2027-02-01T00:00:00Z"})
        await run.advance_to(at("2027-02-05"))
        await run.pay("usage:2027-01-01", "500.00")
        await run.advance_to(at("2027-03-10"))
    return run


class _HeldDecline:
    """A card gateway whose first charge declines only when the scenario says so.

    While it is held the workflow's lock is held too (auto-pay charges under
    it), so payments sent then are accepted together and wait for the lock.
    """

    name = "simulated_card"

    def __init__(self) -> None:
        self.charging = asyncio.Event()
        self.release = asyncio.Event()

    async def charge(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult:
        if not self.charging.is_set():
            self.charging.set()
            await self.release.wait()
            return GatewayResult(accepted=False, reason="card_declined")
        return GatewayResult(accepted=True, reference=f"held_{idempotency_key}")


async def concurrent_payments(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Two payments accepted together that add up to more than the invoice.

    Both arrive while an auto-pay charge holds the lock. v1 recorded both (an
    overpayment); since 776cfb5 the second is re-validated under the lock and
    refused without a ledger call. The charge's retry pays what is left.
    """
    gateway = _HeldDecline()
    run = ContractRun(env, engine, contract_doc(term_months=1, auto_pay=True), gateway=gateway)
    async with run:
        assert run.handle is not None
        handle = run.handle
        skipping = asyncio.create_task(run.advance_to(at("2027-02-01", 12)))
        await gateway.charging.wait()
        payments = [
            await handle.start_update(
                ContractWorkflow.pay,
                PaymentInput(invoice="usage:2027-01-01", amount=Decimal("300.00")),
                id=f"pay-{n}",
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
            for n in (1, 2)
        ]
        gateway.release.set()
        for payment in payments:
            try:
                print(payment.id, await payment.result())
            except WorkflowUpdateFailedError as exc:
                print(payment.id, "refused:", exc.cause)
        await skipping
        await run.advance_to(at("2027-03-20"))
    return run


async def _amend_or_refused(run: ContractRun, amendment: dict[str, Any]) -> None:
    """Send an amendment the recorded version may refuse or may have ended before."""
    try:
        print(amendment["id"], await run.amend(amendment))
    except WorkflowUpdateFailedError as exc:
        print(amendment["id"], "refused:", exc.cause)
    except RPCError as exc:  # the workflow has completed
        print(amendment["id"], "not delivered:", exc)


# --- paths this release (v4) added or changed behind workflow.patched ---------


async def ended_before_open(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A terminate before the start: no commitment, no grants ("end-before-open")."""
    doc = contract_doc(term_months=2, commitment={"amount": "1000.00"},
                       credit_grants=[{"id": "welcome", "credits": "50.00"}])
    run = ContractRun(env, engine, doc)
    async with run:
        await run.advance_to(at("2026-12-20"))
        await run.amend({"id": "never-mind", "kind": "terminate"})
        await run.advance_to(at("2027-01-05"))
    return run


async def contract_grant_top_up(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Priced contract grants: top-ups at the start and mid-term ("contract-grant-top-up")."""
    doc = contract_doc(term_months=2, credit_grants=[
        {"id": "bought", "credits": "600.00", "price": "500.00"},
        {"id": "later", "credits": "100.00", "price": "90.00", "effective": "2027-02-01"},
    ])
    run = ContractRun(env, engine, doc)
    async with run:
        await run.send_usage([event("e1", "2027-01-12T00:00:00Z", "1000")])
        await run.advance_to(at("2027-03-02"))
    return run


async def due_amendment_dropped(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A grant falling due after a terminate's end is dropped ("revalidate-due-amendments")."""
    run = ContractRun(env, engine, contract_doc(term_months=3))
    async with run:
        await run.advance_to(at("2027-01-10"))
        await run.amend({"id": "late-grant", "kind": "grant_credits", "credits": "50.00",
                         "effective": "2027-03-01T00:30:00Z"})
        await run.amend({"id": "stop", "kind": "terminate", "effective": "2027-03-01T00:00:00Z"})
        await run.advance_to(at("2027-03-05"))
    return run


async def gateway_outage(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Auto-pay while the gateway is down: bounded attempts outside the lock, the
    business retries, an amendment meanwhile ("charge-outside-lock")."""
    from tests.support.gateways import UnreachableGateway

    run = ContractRun(env, engine, contract_doc(term_months=2, auto_pay=True),
                      gateway=UnreachableGateway())
    async with run:
        await run.advance_to(at("2027-02-01", 2))
        await run.amend({"id": "net-60", "kind": "change_payment_terms",
                         "payment_terms_days": 60})
        await run.advance_to(at("2027-02-15"))
        await run.pay("usage:2027-01-01", "500.00", "wire-1")
    return run


async def charge_unapplied(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """A card charge accepted after a wire paid the invoice: recorded as unapplied."""
    from tests.support.gateways import WireArrivesDuringTheCharge

    run = ContractRun(env, engine, contract_doc(term_months=1, auto_pay=True),
                      gateway=WireArrivesDuringTheCharge(engine))
    async with run:
        await run.advance_to(at("2027-02-05"))
    return run


async def extension_refused(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """An extension into another contract of the customer ("extend-term-overlap-check")."""
    from models.contract import load_contract
    from worker.contract_service import start_contract

    run = ContractRun(env, engine, contract_doc(term_months=1))
    async with run:
        follow = load_contract(contract_doc(id="c-2", starts_on="2027-02-01", term_months=1))
        await start_contract(env.client, engine, follow, "scenario",
                             catalog_version=run.catalog_version)
        await run.advance_to(at("2027-01-10"))
        await _amend_or_refused(run, {"id": "renew", "kind": "extend_term", "term_months": 1})
        await run.advance_to(at("2027-02-05"))
    return run


async def minimums(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Spend limits with late usage and a minimum commitment changed mid-term
    (SPEC.md section 12; "commitment-shortfall-attribute")."""
    doc = contract_doc(term_months=3,
                       minimum_commitment={"amount": "1000.00", "per": "billing_period"},
                       rate_overrides=[{"meter": "tokens", "maximum_amount": "20.00"}])
    run = ContractRun(env, engine, doc)
    async with run:
        await run.send_usage([event("e1", "2027-01-12T00:00:00Z", "1000")])  # 30.00, capped
        await run.advance_to(at("2027-02-03"))
        await run.send_usage([event("late", "2027-01-20T00:00:00Z", "100")])  # at the cap
        await run.amend({"id": "min-term", "kind": "set_minimum_commitment",
                         "minimum_commitment": {"amount": "5000.00", "per": "term"}})
        await run.advance_to(at("2027-04-02"))
    return run


async def corrections(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Void with a reissue after a backdated override, a refunded credit note and one
    kept as customer credit (the ``correct`` update; SPEC.md section 11)."""
    doc = contract_doc(term_months=2, commitment={"amount": "1000.00"})
    run = ContractRun(env, engine, doc)
    async with run:
        await run.send_usage([event("j1", "2027-01-10T00:00:00Z", "100000"),
                              event("f1", "2027-02-10T00:00:00Z", "1000")])
        await run.advance_to(at("2027-02-05"))
        await run.amend({"id": "rate-fix", "kind": "rate_override",
                         "effective": TERM_START,
                         "override": {"meter": "tokens", "match": {"model": "gpt-4"},
                                      "unit_price": "0.01"}})
        await run.correct({"kind": "void", "id": "v-jan", "invoice": "usage:2027-01-01",
                           "reissue": True})
        await run.pay("usage:2027-01-01/2", "500.00", payment_id="wire-1")
        await run.correct({"kind": "credit", "id": "cn-1", "invoice": "usage:2027-01-01/2",
                           "reason": "goodwill", "lines": [{"line": 2, "amount": "50.00"}]})
        await run.correct({"kind": "credit", "id": "cn-2", "invoice": "usage:2027-01-01/2",
                           "reason": "service_issue", "amount": "20.00",
                           "remainder": "credit"})
        await run.advance_to(at("2027-03-05"))
    return run


async def terminate_at_invoiced_boundary(env: WorkflowEnvironment, engine: AsyncEngine
                                         ) -> ContractRun:
    """A terminate by signal, effective at a boundary whose invoice is finalized,
    with a term minimum. v6 accepted it (the term minimum's true-up was then
    never billed); v7 refuses it behind ``patched("term-true-up-refusal")``."""
    doc = contract_doc(term_months=3, minimum_commitment={"amount": "1000.00", "per": "term"})
    run = ContractRun(env, engine, doc)
    async with run:
        await run.send_usage([event("j1", "2027-01-10T00:00:00Z", "10000")])
        await run.advance_to(at("2027-02-01", 2))
        assert run.handle is not None
        await run.handle.signal(ContractWorkflow.amend_signal, parse_amendment(
            {"id": "end", "kind": "terminate", "effective": "2027-02-01T00:00:00Z"}))
        await run.advance_to(at("2027-02-05"))
    return run


# Paths v7 added: saved from v6 (473240e) and from v7 on.
PATHS_V7 = {
    "terminate_at_invoiced_boundary": terminate_at_invoiced_boundary,
}


# Paths v5 added: minimum commitments and spend limits, corrections (void,
# reissue, credit notes, refunds). Saved from v5 on.
PATHS_V5 = {
    "minimums": minimums,
    "corrections": corrections,
}

PATHS_V4 = {
    "ended_before_open": ended_before_open,
    "contract_grant_top_up": contract_grant_top_up,
    "due_amendment_dropped": due_amendment_dropped,
    "gateway_outage": gateway_outage,
    "charge_unapplied": charge_unapplied,
    "extension_refused": extension_refused,
}

PATHS = {
    "amendment_at_start": amendment_at_start,
    "termination": termination,
    "terminate_held": terminate_held,
    "hold_and_resume": hold_and_resume,
    "collection": collection,
    "autopay_retries": autopay_retries,
    "autopay_refused": autopay_refused,
    "top_up": top_up,
    "pending_dropped": pending_dropped,
    "concurrent_payments": concurrent_payments,
}
