"""No accepted input can stop a contract (issue 11): each known case, through the
real workflow and activities, checked for the outcome SPEC.md fixes and for a
history without failed workflow tasks."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from tests.support.gateways import UnreachableGateway, WireArrivesDuringTheCharge
from tests.support.scenario import ContractRun, at, contract_doc, event, event_type_counts
from workflows.contract_state import CHARGE_RETRY_DAYS

COMMITMENT = {"amount": "12000.00", "bonus_percent": "10"}


async def _no_failed_tasks(run: ContractRun) -> None:
    assert run.handle is not None
    counts = await event_type_counts(run.env, run.handle.id)
    assert "WORKFLOW_TASK_FAILED" not in counts, counts
    assert "WORKFLOW_TASK_TIMED_OUT" not in counts, counts


async def _completed(run: ContractRun) -> bool:
    assert run.handle is not None
    counts = await event_type_counts(run.env, run.handle.id)
    return "WORKFLOW_EXECUTION_COMPLETED" in counts


async def _refusal(run: ContractRun, amendment: dict[str, Any]) -> ApplicationError:
    """Sent as the raw payload (not parsed on the client first), as any client may."""
    assert run.handle is not None
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await asyncio.wait_for(run.handle.execute_update("amend", amendment), 30)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_terminate_before_the_term_starts_ends_the_contract_before_it_opens(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Case 1: no commitment invoice, no grants, no periods (SPEC.md section 2)."""
    doc = contract_doc(commitment=COMMITMENT,
                       credit_grants=[{"id": "promo", "credits": "100.00"}])
    async with ContractRun(ts_env, db, doc) as run:
        await run.advance_to(at("2026-12-20"))
        sent = await run.amend({"id": "t-early", "kind": "terminate"})
        await asyncio.wait_for(run.advance_to(at("2027-02-15")), 60)
        state = await run.state()
        grants = await run.scalar("SELECT count(*) FROM credit_grants")
        invoices = await run.scalar("SELECT count(*) FROM invoices WHERE number IS NOT NULL")
        completed = await _completed(run)
        await _no_failed_tasks(run)
    assert sent.status == "scheduled"
    assert state.status == "terminated"
    assert state.terms.term_end == state.terms.starts_on
    assert (grants, invoices) == (0, 0)
    assert state.invoices == []
    assert completed


async def test_a_scheduled_grant_falling_due_after_a_terminate_is_dropped_with_its_reason(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Case 2: validated again when it falls due, dropped, shown in the state."""
    async with ContractRun(ts_env, db, contract_doc()) as run:
        await run.advance_to(at("2027-01-10"))
        grant = await run.amend({"id": "g-late", "kind": "grant_credits", "credits": "50.00",
                                 "effective": "2027-03-01T00:30:00Z"})
        await run.amend({"id": "t-1", "kind": "terminate", "effective": "2027-03-01T00:00:00Z"})
        await asyncio.wait_for(run.advance_to(at("2027-03-05")), 60)
        state = await run.state()
        grants = await run.scalar("SELECT count(*) FROM credit_grants")
        await _no_failed_tasks(run)
    assert grant.status == "scheduled"
    assert state.status == "terminated"
    assert [(d.id, d.kind) for d in state.dropped_amendments] == [("g-late", "grant_credits")]
    assert "term end" in state.dropped_amendments[0].reason
    assert sorted(i.key for i in state.invoices) == ["usage:2027-01-01", "usage:2027-02-01"]
    assert grants == 0


async def test_a_grant_cannot_take_the_commitments_or_a_contract_grants_id(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Case 4: before the term opens the commitment grant does not exist yet;
    its id is reserved all the same, and so is a contract grant's."""
    doc = contract_doc(commitment=COMMITMENT,
                       credit_grants=[{"id": "promo", "credits": "100.00"}])
    async with ContractRun(ts_env, db, doc) as run:
        await run.advance_to(at("2026-12-20"))
        refusals = [
            await _refusal(run, {"id": f"steal-{gid}", "kind": "grant_credits",
                                 "credits": "10.00", "price": "12000.00", "grant_id": gid})
            for gid in ("commitment", "promo")
        ]
        await run.advance_to(at("2027-01-02"))
        commitment = await run.invoice("commitment:2027-01-01")
        credits = await run.scalar(
            "SELECT credits FROM credit_grants WHERE grant_id = 'commitment'"
        )
        top_ups = await run.scalar("SELECT count(*) FROM invoices WHERE kind = 'top_up'")
    assert all(r.type == "InvalidAmendment" and "grant_id" in str(r) for r in refusals)
    assert (commitment["total"], credits, top_ups) == ("12000.00", Decimal("13200.00"), 0)


async def test_a_ledger_refusal_holds_the_contract_and_an_amendment_resumes_it(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """The rule: a deterministic ledger error is needs_attention, never a retry loop.
    Here a grant row with the contract grant's id but other credits was written
    behind billow's back: the ledger refuses to reuse the id."""
    doc = contract_doc(credit_grants=[{"id": "promo", "credits": "100.00"}])
    async with ContractRun(ts_env, db, doc) as run:
        async with db.begin() as conn:
            await conn.execute(text(
                "INSERT INTO credit_grants (contract_id, grant_id, credits, price, priority, "
                "effective, expires) VALUES ('c-1', 'promo', 5, 0, 0, :s, :e)"
            ), {"s": at("2027-01-01"), "e": at("2028-01-01")})
        await asyncio.wait_for(run.advance_to(at("2027-01-02")), 60)
        held = await run.state()
        status_row = await run.scalar("SELECT status FROM contracts WHERE id = 'c-1'")
        async with db.begin() as conn:  # ops repair the row ...
            await conn.execute(text("UPDATE credit_grants SET credits = 100 "
                                    "WHERE grant_id = 'promo'"))
        await run.amend({"id": "nudge", "kind": "set_auto_pay", "auto_pay": False})  # ... resume
        await run.advance_to(at("2027-02-01", 2))
        resumed = await run.state()
        await _no_failed_tasks(run)
    assert held.status == "needs_attention" and status_row == "needs_attention"
    assert held.attention is not None and "GrantConflict" in held.attention
    assert resumed.status == "active" and resumed.attention is None
    assert [i.key for i in resumed.invoices] == ["usage:2027-01-01"]


async def test_a_priced_contract_grant_issues_its_top_up_when_it_takes_effect(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Case 5: invoiced (not only recognized), so deferred revenue stays whole."""
    doc = contract_doc(term_months=4, credit_grants=[
        {"id": "bought", "credits": "1000.00", "price": "900.00"},
        {"id": "later", "credits": "500.00", "price": "400.00", "effective": "2027-03-01"},
    ])
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-05T00:00:00Z", "40000")])  # 1200.00
        await run.advance_to(at("2027-02-10"))
        early = await run.invoices()
        await run.advance_to(at("2027-06-15"))
        report = await run.report()
        await _no_failed_tasks(run)
    assert [(i["key"], i["issued_on"], i["total"]) for i in early] == [
        ("top_up:2027-01-01", "2027-01-01", "900.00"),
        ("usage:2027-01-01", "2027-02-01", "700.00"),  # 500 fee + 1200 usage - 1000 credits
    ]
    top_ups = [(i["key"], i["issued_on"], i["total"], i["period"])
               for i in report["invoices"] if i["kind"] == "top_up"]
    assert top_ups == [
        ("top_up:2027-01-01", "2027-01-01", "900.00", {"start": "2027-01-01", "end": "2027-05-01"}),
        ("top_up:2027-03-01", "2027-03-01", "400.00", {"start": "2027-03-01", "end": "2027-05-01"}),
    ]
    revenue = report["revenue"]
    assert Decimal(revenue["usage_from_credits"]) == Decimal("900.00")
    assert Decimal(revenue["breakage"]) == Decimal("400.00")
    assert Decimal(revenue["deferred_balance"]) == 0


async def test_a_top_up_bought_while_an_invoice_is_held_is_dated_the_day_it_is_issued(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Case 8: never back-dated to the held period, so not overdue at issue."""
    async with ContractRun(ts_env, db, contract_doc(term_months=3)) as run:
        await run.send_usage([event("u1", "2027-01-05T00:00:00Z", "10", model="unknown")])
        await run.advance_to(at("2027-02-10"))
        assert (await run.state()).status == "needs_attention"
        await run.amend({"id": "buy", "kind": "grant_credits", "credits": "100.00",
                         "price": "90.00"})
        await run.advance_to(at("2027-02-11"))
        top_up = await run.invoice("top_up:2027-01-01")
        reminders = await run.scalar("SELECT count(*) FROM dunning_events")
    assert (top_up["issued_on"], top_up["due_on"], top_up["status"]) == (
        "2027-02-10", "2027-03-12", "open")
    assert reminders == 0


async def test_amendments_that_would_overflow_later_are_refused_naming_the_field(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Case 3: a 3,000,000-day net-N and an extension past 1200 months."""
    async with ContractRun(ts_env, db, contract_doc()) as run:
        await run.advance_to(at("2027-01-10"))
        terms = await _refusal(run, {"id": "net-forever", "kind": "change_payment_terms",
                                     "payment_terms_days": 3_000_000})
        extend = await _refusal(run, {"id": "forever", "kind": "extend_term",
                                      "term_months": 1189})
        ok = await run.amend({"id": "to-the-bound", "kind": "extend_term", "term_months": 1188})
        await run.advance_to(at("2027-02-01", 2))
        state = await run.state()
        await _no_failed_tasks(run)
    assert "payment_terms_days" in str(terms) + str(terms.__cause__ or "")
    assert "term_months" in str(extend)
    assert ok.status == "applied" and state.terms.term_months == 1200
    assert state.terms.payment_terms_days == 30
    assert [i.key for i in state.invoices] == ["usage:2027-01-01"]


async def test_a_failing_gateway_never_freezes_the_contract(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Case 9: bounded attempts outside the lock; exhaustion counts as a decline,
    then the due-date rules; amendments and payments are answered meanwhile."""
    gateway = UnreachableGateway()
    async with ContractRun(ts_env, db, contract_doc(term_months=3, auto_pay=True),
                           gateway=gateway) as run:
        await run.advance_to(at("2027-02-01", 2))
        amended = await asyncio.wait_for(
            run.amend({"id": "cheaper", "kind": "rate_override",
                       "override": {"discount_percent": "5"}}), 30)
        await run.advance_to(at("2027-03-10"))
        jan = await run.invoice("usage:2027-01-01")
        paid = await asyncio.wait_for(run.pay("usage:2027-02-01", "500.00", "wire-1"), 30)
        state = await run.state()
        await _no_failed_tasks(run)
    assert amended.status == "applied"
    assert jan["status"] == "overdue"
    assert paid.status == "paid"
    # 3 attempts per charge: January's at issue and on all its retry days
    # (Feb 2, 5, 12); February's at issue, Mar 2 and Mar 5 (Mar 12 is after).
    assert len(CHARGE_RETRY_DAYS) == 3
    assert gateway.calls == 3 * 4 + 3 * 3
    assert state.status == "active"


async def test_an_idle_contract_continues_as_new_when_its_history_grows(
    db: AsyncEngine,
) -> None:
    """Case 11: the server's continue-as-new suggestion is honoured while the
    contract sleeps between boundaries, not only after a period closes."""
    from datetime import UTC, datetime

    from models.amendments import parse_amendment
    from worker.temporal_envs import start_dev_server
    from workflows.contract import ContractWorkflow

    env = await start_dev_server(
        ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=20"]
    )
    try:
        today = datetime.now(UTC).date().isoformat()
        async with ContractRun(env, db, contract_doc(starts_on=today)) as run:
            assert run.handle is not None
            for i in range(12):
                await run.handle.execute_update(ContractWorkflow.amend, parse_amendment(
                    {"id": f"flip-{i}", "kind": "set_auto_pay", "auto_pay": i % 2 == 0}
                ))
            view = await run.handle.query(ContractWorkflow.query_state)
            latest = await env.client.get_workflow_handle(run.handle.id).fetch_history()
    finally:
        await env.shutdown()
    started = latest.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id, "the idle contract continued as new"
    assert len(latest.events) < 40
    assert view.applied_amendment_ids == [f"flip-{i}" for i in range(12)]
    assert view.terms.auto_pay is False and view.status == "active"


async def test_a_period_with_no_lines_is_invoiced_at_zero(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Found by the random-lifecycle test: a plan without fees and a period
    without usage made an invoice with no lines, whose INSERT failed forever."""
    import copy

    from tests.support.scenario import PRO_CATALOG

    catalog = copy.deepcopy(PRO_CATALOG)
    catalog["plans"][0]["recurring_fees"] = []
    async with ContractRun(ts_env, db, contract_doc(term_months=1), catalog=catalog) as run:
        await asyncio.wait_for(run.advance_to(at("2027-02-01", 2)), 60)
        invoices = await run.invoices()
        state = await run.state()
    assert [(i["key"], i["total"], i["status"], i["lines"]) for i in invoices] == [
        ("usage:2027-01-01", "0.00", "paid", [])
    ]
    assert state.status == "ended"


async def test_an_extension_into_another_contract_on_a_shared_meter_is_refused(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Issue 12 case 1 (extend_term half): the extended term would bill the
    same customer's usage twice, so it is refused naming the other contract."""
    from models.contract import load_contract
    from worker.contract_service import start_contract

    async with ContractRun(ts_env, db, contract_doc()) as run:
        follow_up = load_contract(contract_doc(id="c-2", starts_on="2028-01-01"))
        await start_contract(ts_env.client, db, follow_up, "scenario",
                             catalog_version=run.catalog_version)
        await run.advance_to(at("2027-03-10"))
        refused = await _refusal(run, {"id": "renew", "kind": "extend_term", "term_months": 1})
        state = await run.state()
        end = await run.scalar("SELECT term_end FROM contracts WHERE id = 'c-1'")
        await _no_failed_tasks(run)
    assert refused.type == "ContractOverlap" and "'c-2'" in refused.message
    assert "term_months" in refused.message
    assert state.terms.term_months == 12 and state.applied_amendment_ids == []
    assert str(end) == "2028-01-01"


async def test_an_amendment_after_the_term_ended_is_refused_naming_a_field(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Found by the random-lifecycle test: the workflow still runs to collect an
    unpaid invoice, and its refusal of a late amendment named no field."""
    async with ContractRun(ts_env, db, contract_doc(term_months=1)) as run:
        await run.advance_to(at("2027-02-05"))
        refused = await _refusal(run, {"id": "late", "kind": "set_auto_pay", "auto_pay": True})
    assert refused.details and refused.details[0][0]["field"] == "effective"
    assert "has ended" in refused.message


async def test_money_a_gateway_took_for_a_paid_invoice_is_recorded_and_flagged(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Issue 12 case 11: never only logged. Kept as an unapplied payment with
    its journal entry, shown on the contract, and never charged again."""
    gateway = WireArrivesDuringTheCharge(db)
    async with ContractRun(ts_env, db, contract_doc(term_months=2, auto_pay=True),
                           gateway=gateway) as run:
        await run.advance_to(at("2027-02-12"))
        state = await run.state()
        jan = await run.invoice("usage:2027-01-01")
        unapplied = await run.scalar(
            "SELECT amount FROM unapplied_payments WHERE payment_key = "
            "'charge:c-1:usage:2027-01-01:1'")
        cash = await run.scalar(
            "SELECT sum(l.debit - l.credit) FROM journal_lines l "
            "WHERE l.account = 'cash'")
        imbalance = await run.scalar(
            "SELECT sum(debit) - sum(credit) FROM journal_lines")
        async with db.connect() as conn:
            payments = list((await conn.execute(text(
                "SELECT payment_key FROM payments ORDER BY id"))).scalars())
        await _no_failed_tasks(run)
    assert (jan["status"], jan["total"], payments) == ("paid", "500.00", ["wire-77"])
    assert unapplied == Decimal("500.00")
    assert cash == Decimal("1000.00")  # the wire and the card: both are in the bank
    assert imbalance == 0
    assert [(u.invoice_key, u.amount) for u in state.unapplied_payments] == [
        ("usage:2027-01-01", Decimal("500.00"))]
    assert gateway.calls == 1


async def test_a_free_grant_by_amendment_is_applied(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Found by the random-lifecycle test: ``price: "0"`` is a promotional grant
    (SPEC.md section 1), not a zero top-up whose journal entry cannot exist."""
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-01-10"))
        result = await run.amend({"id": "free", "kind": "grant_credits",
                                  "credits": "100.00", "price": "0"})
        state = await run.state()
        top_ups = await run.scalar("SELECT count(*) FROM invoices WHERE kind = 'top_up'")
    assert result.status == "applied" and state.credit_balance == 100
    assert top_ups == 0


async def test_a_payment_for_an_invoice_the_ledger_has_is_recorded_before_the_state_knows_it(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Issue 12 case 8 (workflow half; found again by the chaos run): after a
    worker crash the close's ledger commit can be ahead of the workflow's state,
    and an update is handled before the replayed close. The ledger decides."""
    from datetime import date

    from activities.ledger import LedgerActivities
    from models.operations import ClosePeriodRequest
    from models.periods import billing_periods

    async with NoCacheRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-02-01"))  # the close falls due at 01:00
        terms = (await run.state()).terms
        await run.stop_worker()  # the worker "crashes" ...
        jan, feb = billing_periods(terms.starts_on, terms.term_end, terms.billing_cycle,
                                   terms.billing_anchor, terms.timezone)
        # ... right after the close's transaction committed.
        await LedgerActivities(db).close_period(ClosePeriodRequest(
            terms=terms, period=jan, earlier_periods=[], issued_on=date(2027, 2, 1),
            due_on=date(2027, 3, 3), is_final=False, next_period=feb))
        await run.start_worker()
        assert run.handle is not None
        paid = await asyncio.wait_for(run.handle.execute_update(
            "pay", {"invoice": "usage:2027-01-01", "amount": "500.00",
                    "payment_id": "wire-9"}, result_type=dict), 30)
        unknown = await _refusal_of_pay(run, "usage:2099-01-01")
        await run.advance_to(at("2027-02-02"))
        state = await run.state()
        await _no_failed_tasks(run)
    assert (paid["status"], paid["amount_paid"]) == ("paid", "500.00")
    jan_state = next(i for i in state.invoices if i.key == "usage:2027-01-01")
    assert (jan_state.status, jan_state.amount_paid) == ("paid", Decimal("500.00"))
    assert "unknown invoice" in unknown.message and unknown.type == "InvalidPayment"


class NoCacheRun(ContractRun):
    """A worker without a workflow cache (every task replays, as a new process
    would; no sticky queue is left behind when it stops)."""

    async def start_worker(self) -> None:
        from temporalio.worker import Worker

        from tests.support.scenario import TASK_QUEUE
        from worker.main import WORKFLOWS, activities_for

        self._worker = Worker(self.env.client, task_queue=TASK_QUEUE, workflows=WORKFLOWS,
                              activities=activities_for(self.engine, self.gateway),
                              max_cached_workflows=0)
        await self._worker.__aenter__()


async def _refusal_of_pay(run: ContractRun, invoice: str) -> ApplicationError:
    assert run.handle is not None
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await asyncio.wait_for(run.handle.execute_update(
            "pay", {"invoice": invoice, "amount": "1.00", "payment_id": "p-x"}), 30)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_a_top_up_on_the_day_of_a_priced_contract_grant_is_refused(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Found by the random-lifecycle test: the amendment took the day's top-up
    key first and the contract's priced grant was never invoiced."""
    doc = contract_doc(term_months=1,
                       credit_grants=[{"id": "g1", "credits": "500.00", "price": "400.00"}])
    async with ContractRun(ts_env, db, doc) as run:
        await run.advance_to(at("2026-12-20"))
        refused = await _refusal(run, {"id": "t1", "kind": "grant_credits",
                                       "credits": "100.00", "price": "90.00"})
        await run.advance_to(at("2027-02-15"))
        report = await run.report()
    assert "effective" in refused.message and "one per day" in refused.message
    assert [i["total"] for i in report["invoices"] if i["kind"] == "top_up"] == ["400.00"]
    assert Decimal(report["revenue"]["deferred_balance"]) == 0
