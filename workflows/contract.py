"""``ContractWorkflow``: one long-lived workflow per contract (id ``contract:<id>``).

Lifecycle: register the contract, sleep until the term starts, issue the
commitment invoice and grant the credits, then for every billing boundary
sleep until it plus the usage grace window, rate the period and finalize its
invoice (credits first), collect what is owed, and at term end expire what is
left (breakage). Amendments and payments arrive as validated updates (or
signals) at any time.

Design notes (why, not what):
- Collection (due dates, overdue, reminders, auto-pay retries) runs inside
  this workflow rather than in a child workflow per invoice: the contract
  already wakes at every boundary, ``HasOverdueInvoice`` is this workflow's
  search attribute and must be kept current here, and payments then need one
  destination. After the term ends the workflow stays open only while some
  invoice still has a collection step ahead, then completes; a payment after
  that is recorded by the API directly in the ledger.
- Boundaries are absolute UTC instants in the carried state, so timers are
  re-derived after continue-as-new instead of being lost with the run.
- One lock (``_lock``) serialises every step that calls the ledger, so an
  amendment or payment handler never interleaves with a boundary close
  (samples-python ``safe_message_handlers``).
- Things due at the same instant happen in the order SPEC.md section 7 fixes:
  amendments, then the boundary's invoicing, then collection.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    # Pure code and the workflow's parts, imported outside the sandbox: loaded
    # once per worker, and zoneinfo works for the calendar functions (see
    # ../shared/notes/temporal.md and contract_steps.py).
    from models.amendments import Amendment
    from models.corrections import Correction, CorrectionResult
    from models.errors import BillowValidationError
    from models.operations import (
        ActivityName,
        CreditSummary,
        PaymentResult,
        RegisterContractRequest,
    )
    from workflows.contract_corrections import CorrectionSteps

    # Re-exported: callers import these from here (see contract_io.py for why).
    from workflows.contract_io import AmendmentResult as AmendmentResult
    from workflows.contract_io import ContractView as ContractView
    from workflows.contract_io import ContractWorkflowInput as ContractWorkflowInput
    from workflows.contract_io import PaymentInput as PaymentInput
    from workflows.contract_state import (
        AmendmentConflict,
        ContractState,
        initial_state,
        term_true_up_refusal,
        validate_amendment,
    )
    from workflows.contract_steps import PERIODS_PER_RUN, conflict, rejected
    from workflows.contract_term import TermSteps
    from workflows.wait_labels import state_next_close, wait_label


@workflow.defn(name="ContractWorkflow")
class ContractWorkflow(TermSteps, CorrectionSteps):
    """The contract's main loop, its message handlers and its query; the steps
    they run are in the classes it is made of (workflows/contract_*.py)."""

    @workflow.init
    def __init__(self, inp: ContractWorkflowInput) -> None:
        # State is built here, not in run(): an update can be delivered in the
        # very first workflow task, before run() starts.
        self.state: ContractState = inp.state or initial_state(
            inp.contract, inp.terms, inp.catalog_version, inp.terms_digest
        )
        self._lock = asyncio.Lock()
        self._wakeup = 0  # bumped by handlers to re-evaluate the main loop
        # Value of _wakeup when the open period was held for attention; the
        # close is retried only after something changed.
        self._held_at: int | None = None
        self._periods_this_run = 0
        self._sa_sent: dict[str, object] = {}
        self._sleeping_until: datetime | None = None
        self._waiting_for: str | None = None  # the current wait's label (query)
        self._renewed = False  # an extend_term applied in this run
        self._last_refusal: str | None = None  # reason of the last business error

    @workflow.run
    async def run(self, inp: ContractWorkflowInput) -> CreditSummary | None:
        st = self.state
        if st.created_at is None:
            st.created_at = self._creation_instant()
        while not st.registered:
            registered = await self._step_run(
                ActivityName.REGISTER_CONTRACT,
                RegisterContractRequest(
                    contract=st.contract,
                    terms=st.terms,
                    catalog_version=st.catalog_version,
                    terms_digest=st.terms_digest,
                ),
                summary=f"register contract {st.terms.contract_id}",
            )
            if registered:
                st.registered = True
                break
            await self._hold(self._last_refusal or "registration refused")
            await self._wait_until(None, "wait for an amendment to resolve needs_attention")
        self._resolved()
        self._publish()

        while not st.term_opened:
            if self._ended_before_open():
                # Terminated at or before its start: no commitment invoice, no
                # grants, no periods (SPEC.md section 2).
                st.term_opened = True
                break
            start = st.terms.term_start_at
            if workflow.now() >= start:
                # Amendments due at the start come first (SPEC.md section 7).
                await self._apply_due_amendments()
                if self._ended_before_open():
                    continue
                if self._held:
                    await self._wait_until(self._next_wake(), self._wake_summary())
                    continue
                async with self._lock:
                    opened = await self._open_term()
                if opened:
                    break
                continue
            await self._wait_until(start, f"sleep until term start {st.terms.starts_on}")

        summary: CreditSummary | None = None
        while True:
            await self._apply_due_amendments()
            # A renewal starts a new run: the renewed term's history starts
            # empty. (Added after v1 histories were recorded: patched.)
            if self._renewed and workflow.patched("continue-as-new-at-renewal"):
                await self._continue_as_new()
            if not st.term_closed:
                period = st.open_period
                if period is None and not self._held:
                    async with self._lock:
                        summary = await self._close_term()
                    continue
                if (period is not None and workflow.now() >= st.close_at(period)
                        and not self._held):
                    async with self._lock:
                        await self._close_period(period)
                    await self._maybe_continue_as_new()
                    continue
            await self._run_due_collection()
            await self._run_due_refunds()
            if (st.term_closed and not st.collections and not st.pending_amendments
                    and st.next_refund_at() is None):
                break
            # A long idle stretch (an annual contract with many updates) can
            # grow one run's history too: the server's suggestion is honoured
            # here too, not only after a close.
            if (workflow.info().is_continue_as_new_suggested()
                    and workflow.patched("continue-as-new-when-idle")):
                await self._continue_as_new()
            await self._wait_until(self._next_wake(), self._wake_summary())
        await workflow.wait_condition(workflow.all_handlers_finished)
        return summary

    def _creation_instant(self) -> datetime:
        """When this contract's workflow was created, the same on every replay.

        It is read from the execution's first history event. The release before
        this one read the first activation's timestamp, which a replay does not
        reproduce when the first workflow task heartbeated a slow local activity
        (it then starts at a later task): a catch-up close computed from it
        happened in the original run and not on replay (a nondeterminism the
        chaos run found). Patched so those releases' histories still replay.
        """
        info = workflow.info()
        if workflow.patched("created-at-from-start-event"):
            return info.workflow_start_time
        return info.start_time

    def _ended_before_open(self) -> bool:
        t = self.state.terms
        return t.term_end <= t.starts_on and workflow.patched("end-before-open")

    def _wake_summary(self) -> str:
        # User metadata only (the timer's summary): no command changes with it.
        return wait_label(self.state, held=self._held)

    async def _wait_until(self, at: datetime | None, summary: str) -> None:
        """Sleep until ``at`` or until a handler changes something."""
        seen = self._wakeup
        delay = None if at is None else at - workflow.now()
        if delay is not None and delay <= timedelta(0):
            return
        self._sleeping_until = at
        self._waiting_for = summary
        # Timing out is the normal way to wake up: the instant arrived.
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._wakeup != seen, timeout=delay, timeout_summary=summary
            )
        self._waiting_for = None  # awake: working until the next wait

    async def _maybe_continue_as_new(self) -> None:
        self._periods_this_run += 1
        if not self.state.periods:
            return  # the term is closing: a new run would only add events
        suggested = workflow.info().is_continue_as_new_suggested()
        if self._periods_this_run < PERIODS_PER_RUN and not suggested:
            return
        await self._continue_as_new()

    async def _continue_as_new(self) -> None:
        """Start a fresh run carrying the state, once in-flight handlers finish."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        st = self.state
        workflow.continue_as_new(
            ContractWorkflowInput(
                contract=st.contract,
                terms=st.terms,
                catalog_version=st.catalog_version,
                terms_digest=st.terms_digest,
                state=st,
            )
        )

    @workflow.update(name="amend")
    async def amend(self, amendment: Amendment) -> AmendmentResult:
        return await self._amend(amendment)

    @amend.validator
    def _validate_amend(self, amendment: Amendment) -> None:
        try:
            validate_amendment(self.state, amendment, workflow.now())
        except AmendmentConflict as exc:
            raise conflict(exc) from exc
        except BillowValidationError as exc:
            raise rejected(exc) from exc
        # A validator does not run on replay: no patch needed here (see _amend).
        refusal = term_true_up_refusal(self.state, amendment, workflow.now())
        if refusal is not None:
            raise rejected(refusal)

    @workflow.signal(name="amend_signal")
    async def amend_signal(self, amendment: Amendment) -> None:
        """Fire-and-forget form: invalid amendments are logged and dropped."""
        try:
            await self._amend(amendment)
        except ApplicationError as exc:
            workflow.logger.warning("amendment %s rejected: %s", amendment.id, exc)

    @workflow.update(name="pay")
    async def pay(self, payment: PaymentInput) -> PaymentResult:
        return await self._pay(payment)

    @pay.validator
    def _validate_pay(self, payment: PaymentInput) -> None:
        self._check_pay(payment, known_only=True)

    @workflow.signal(name="pay_signal")
    async def pay_signal(self, payment: PaymentInput) -> None:
        """Fire-and-forget form: needs ``payment_id``, its only idempotency key."""
        try:
            if payment.payment_id is None:
                raise ApplicationError("payment_id: required when paying by signal")
            self._validate_pay(payment)
            await self._pay(payment)
        except ApplicationError as exc:
            workflow.logger.warning("payment for %s rejected: %s", payment.invoice, exc)

    @workflow.update(name="correct")
    async def correct(self, correction: Correction) -> CorrectionResult:
        """Void, reissue or credit a finalized invoice; idempotent on the correction id."""
        return await self._correct(correction)

    @correct.validator
    def _validate_correct(self, correction: Correction) -> None:
        self._check_correction(correction)

    @workflow.query(name="state")
    def query_state(self) -> ContractView:
        st = self.state
        return ContractView(
            contract_id=st.terms.contract_id,
            customer_id=st.terms.customer.id,
            plan=st.terms.plan_key,
            status=st.status,
            terms=st.terms,
            credit_balance=st.credit_balance,
            next_boundary=st.open_period.end if st.open_period and not st.term_closed else None,
            attention=st.attention,
            has_overdue_invoice=st.has_overdue_invoice,
            invoices=list(st.invoices),
            applied_amendment_ids=list(st.applied_amendment_ids),
            pending_amendments=[p.amendment.id for p in st.pending_amendments],
            dropped_amendments=list(st.dropped_amendments),
            unapplied_payments=list(st.unapplied_payments),
            commitment=st.commitment,
            next_close=state_next_close(st),
            waiting_for=self._waiting_for,
        )
