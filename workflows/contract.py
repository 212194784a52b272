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
from decimal import Decimal
from typing import TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    # Pure code, imported outside the sandbox so zoneinfo works for the
    # calendar functions (see ../shared/notes/temporal.md).
    from models.amendments import Amendment, ExtendTermAmendment, GrantCreditsAmendment
    from models.contract import COMMITMENT_GRANT_ID, to_instant
    from models.corrections import (
        CorrectCredit,
        Correction,
        CorrectionOutcome,
        CorrectionRecord,
        CorrectionResult,
        CorrectReissue,
        CorrectVoid,
        PendingRefund,
        RefundRequest,
        RefundView,
        correction_digest,
    )
    from models.errors import BillowValidationError
    from models.invoices import due_on
    from models.minimum_commitment import months_left, progress_text
    from models.operations import (
        ActivityName,
        CardCharge,
        ChargeRequest,
        ChargeResult,
        ClosePeriodRequest,
        ClosePeriodResult,
        ContractStatus,
        CreditSummary,
        DunningRequest,
        DunningStep,
        ExpireCreditsRequest,
        GrantRequest,
        GrantResult,
        IssuedInvoice,
        PaymentRequest,
        PaymentResult,
        RecordAmendmentRequest,
        RegisterContractRequest,
        ReserveTermRequest,
        UpdateContractRequest,
    )
    from models.periods import Period, local_midnight_utc, term_end_date
    from workflows import search_attributes as sa

    # Re-exported: callers import these from here (see contract_io.py for why).
    from workflows.contract_io import AmendmentResult as AmendmentResult
    from workflows.contract_io import ContractView as ContractView
    from workflows.contract_io import ContractWorkflowInput as ContractWorkflowInput
    from workflows.contract_io import PaymentInput as PaymentInput
    from workflows.contract_state import (
        CHARGE_RETRY_DAYS,
        AmendmentConflict,
        AmendmentRecord,
        CollectionState,
        ContractState,
        DroppedAmendment,
        PendingAmendment,
        UnappliedPayment,
        amendment_digest,
        apply_terms_amendment,
        check_amendment,
        contract_grant_amendment,
        effective_instant,
        grant_request,
        initial_state,
        validate_amendment,
    )
    from workflows.corrections import (
        CorrectionConflict,
        check_correction,
        correction_request,
        learn_credited,
        learn_outcome,
        record_refund,
        resend_answer,
    )
    from workflows.wait_labels import period_label, state_next_close, wait_label

# A refund the gateway declined is tried again this many days after the note.
REFUND_RETRY_DAYS: tuple[int, ...] = (1, 3, 7)

# Continue-as-new after this many closed periods in one run (history bound).
PERIODS_PER_RUN = 12

# Ledger steps: transient failures (the database restarting) retry until it
# is back; business errors are non-retryable (activities/errors.py) and
# become needs_attention here, so nothing retries forever.
_ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
# The payment gateway is remote I/O run outside the contract lock: a few
# attempts, then the charge counts as declined and the business retry
# schedule (CHARGE_RETRY_DAYS) takes over.
_CHARGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
)
_SHORT = timedelta(seconds=60)
_REMOTE = frozenset({ActivityName.CHARGE_INVOICE, ActivityName.REFUND})
T = TypeVar("T")
_LONG = timedelta(minutes=15)


def _rejected(exc: BillowValidationError) -> ApplicationError:
    """An invalid amendment: the caller gets every ``field: reason``."""
    return ApplicationError(
        str(exc),
        [{"field": path, "reason": reason} for path, reason in exc.problems],
        type="InvalidAmendment",
        non_retryable=True,
    )


def _conflict(exc: AmendmentConflict) -> ApplicationError:
    return ApplicationError(
        str(exc),
        [{"field": path, "reason": reason} for path, reason in exc.problems],
        type="AmendmentConflict",
        non_retryable=True,
    )


# How a failed activity reaches workflow code: a regular activity's failure as
# ActivityError (the ApplicationError is its cause), a local activity's as the
# ApplicationError itself.
_ACTIVITY_FAILURES = (ActivityError, ApplicationError)


def _cause(exc: ActivityError | ApplicationError) -> ApplicationError | None:
    """The ApplicationError an activity failed with, however it reached us."""
    cause = exc if isinstance(exc, ApplicationError) else exc.cause
    return cause if isinstance(cause, ApplicationError) else None


def _refusal(exc: ActivityError | ApplicationError) -> str:
    """The reason a ledger activity gave for a business error."""
    cause = _cause(exc) or exc.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'error'}: {cause.message}"
    return str(cause or exc)


def _invalid(kind: str, field: str, reason: str) -> ApplicationError:
    """A validator rejection: the caller gets ``field: reason`` and the details."""
    return ApplicationError(
        f"{field}: {reason}", [{"field": field, "reason": reason}], type=kind, non_retryable=True
    )


@workflow.defn(name="ContractWorkflow")
class ContractWorkflow:
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

    # --- main loop -------------------------------------------------------
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

    def _next_wake(self) -> datetime | None:
        st = self.state
        candidates = [st.next_amendment_at(), st.next_collection_at(), st.next_refund_at()]
        if not st.term_closed and st.open_period is not None and not self._held:
            candidates.append(st.close_at(st.open_period))
        return min((c for c in candidates if c is not None), default=None)

    @property
    def _held(self) -> bool:
        return self.state.attention is not None and self._held_at == self._wakeup

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

    # --- steps -------------------------------------------------------------
    async def _open_term(self) -> bool:
        """Issue the commitment and make the contract's grants; False if held."""
        st = self.state
        t = st.terms
        st.status = ContractStatus.ACTIVE
        start, end = t.term_start_at, t.term_end_at
        if t.commitment is not None:
            c = t.commitment
            issued_on = st.local_date(workflow.now())
            expires = to_instant(c.expires_on, t.timezone) if c.expires_on else end
            granted = await self._grant(
                GrantRequest(
                    contract_id=t.contract_id,
                    grant_id=COMMITMENT_GRANT_ID,
                    credits=c.credits_for(t.currency),
                    price=c.amount,
                    priority=c.priority,
                    effective=start,
                    expires=expires,
                    currency=t.currency,
                    invoice_kind="commitment",
                    invoice_key=f"commitment:{t.starts_on.isoformat()}",
                    invoice_period=(t.starts_on, t.term_end),
                    issued_on=issued_on,
                    due_on=due_on(issued_on, t.payment_terms_days),
                ),
                summary=f"issue commitment {c.amount} {t.currency}",
            )
            if not granted:
                return False
        for g in t.credit_grants:
            effective = to_instant(g.effective, t.timezone) if g.effective else start
            if g.price > 0 and workflow.patched("contract-grant-top-up"):
                # A priced contract grant is a top-up bought with the contract:
                # granted and invoiced when it takes effect (SPEC.md section 1).
                amendment = contract_grant_amendment(g, effective)
                if g.id in st.grant_ids or any(
                    p.amendment.id == amendment.id for p in st.pending_amendments
                ):
                    continue  # made (or scheduled) by an earlier attempt to open
                if effective > workflow.now():
                    st.pending_amendments.append(
                        PendingAmendment(amendment=amendment, effective=effective)
                    )
                    continue
                request = grant_request(st, amendment, effective, workflow.now())
            else:
                request = GrantRequest(
                    contract_id=t.contract_id,
                    grant_id=g.id,
                    credits=g.credits,
                    price=g.price,
                    priority=g.priority,
                    effective=effective,
                    expires=to_instant(g.expires, t.timezone) if g.expires else end,
                    currency=t.currency,
                    invoice_kind=None,
                    invoice_key=None,
                    invoice_period=None,
                    issued_on=None,
                    due_on=None,
                )
            if not await self._grant(request, summary=f"grant credits {g.id}"):
                return False
        st.term_opened = True
        self._resolved()
        await self._save_contract()
        return True

    async def _grant(self, request: GrantRequest, summary: str) -> bool:
        """Make a grant (and issue its invoice); False if the ledger refused it."""
        result = await self._step(ActivityName.GRANT_CREDITS, request, summary=summary,
                                  result_type=GrantResult)
        if result is None:
            return False
        if request.grant_id not in self.state.grant_ids:
            self.state.grant_ids.append(request.grant_id)
        self.state.credit_balance = result.credits.balance
        if result.invoice is not None:
            await self._issued(result.invoice)
        return True

    async def _close_period(self, period: Period) -> None:
        st = self.state
        t = st.terms
        issued_on = st.local_date(workflow.now())
        result = await self._step(
            ActivityName.CLOSE_PERIOD,
            ClosePeriodRequest(
                terms=t,
                period=period,
                earlier_periods=list(st.invoiced_periods),
                issued_on=issued_on,
                due_on=due_on(issued_on, t.payment_terms_days),
                is_final=len(st.periods) == 1,
                next_period=st.periods[1] if len(st.periods) > 1 else None,
            ),
            result_type=ClosePeriodResult,
            summary=f"rate usage {period_label(period, t.billing_cycle.months)}",
            activity_timeout=_LONG,
        )
        if result is None:
            return  # held for attention by _step
        st.credit_balance = result.credits.balance
        if result.attention is not None:
            # A business error: hold the invoice, flag the contract, and wait
            # for an amendment to resume. Never fail the workflow for it.
            st.put_invoice(result.invoice)
            if st.attention != result.attention:
                st.attention = result.attention
                st.status = ContractStatus.NEEDS_ATTENTION
                await self._save_contract()
            self._held_at = self._wakeup
            self._publish()
            return
        if self._resolved():
            await self._save_contract()
        st.periods = st.periods[1:]
        st.invoiced_periods.append(period)
        st.commitment = result.commitment  # None: no minimum for this period
        st.limit_lines = list(result.limit_lines)
        st.limit_lines_invoice = result.invoice.key if result.limit_lines else None
        await self._issued(result.invoice)
        if result.credited or result.refunds:
            # The close credited a fall in late usage (automatic credit notes).
            learn_credited(st, result.credited)
            st.pending_refunds += [
                PendingRefund(request=r, correction_id=r.refund_key.removeprefix("refund:"),
                              next_at=workflow.now())
                for r in result.refunds
            ]
            self._publish()

    async def _close_term(self) -> CreditSummary | None:
        st = self.state
        t = st.terms
        now = workflow.now()
        status = ContractStatus.TERMINATED if st.terminated_at is not None else ContractStatus.ENDED
        result = await self._step(
            ActivityName.EXPIRE_CREDITS,
            ExpireCreditsRequest(
                contract_id=t.contract_id,
                at=max(now, t.term_end_at),
                on=st.local_date(now),
                status=status,
                terms=t,
            ),
            result_type=CreditSummary,
            summary="expire remaining credits (breakage)",
        )
        if result is None:
            return None  # held for attention by _step
        self._resolved()
        st.credit_balance = result.balance
        st.term_closed = True
        st.status = status
        for pending in st.pending_amendments:
            # Effective after a termination moved the end earlier: nothing left to amend.
            self._drop(pending.amendment, "the term ended before it took effect")
        st.pending_amendments = []
        await self._save_contract()
        return result

    async def _issued(self, invoice: IssuedInvoice) -> None:
        """Remember a finalized invoice and start collecting it."""
        st = self.state
        st.put_invoice(invoice)
        if invoice.status not in ("open", "overdue") or invoice.due_on is None:
            self._publish()
            return
        collection = CollectionState(
            invoice_key=invoice.key,
            due_on=invoice.due_on,
            overdue_at=local_midnight_utc(invoice.due_on + timedelta(days=1), st.terms.timezone),
        )
        st.collections.append(collection)
        if st.terms.auto_pay:
            if workflow.patched("charge-outside-lock"):
                # Charged by the main loop, outside the contract lock: the
                # gateway is remote I/O and must not hold up amendments.
                collection.next_charge_at = workflow.now()
                self._wakeup += 1
            else:
                await self._charge(collection)
        self._publish()

    async def _charge(self, collection: CollectionState) -> None:
        st = self.state
        inv = st.invoice(collection.invoice_key)
        if inv is None or inv.outstanding <= 0:
            return  # settled meanwhile: nothing to charge
        collection.charge_attempts += 1
        try:
            result = await self._call(
                ActivityName.CHARGE_INVOICE,
                ChargeRequest(
                    contract_id=st.terms.contract_id,
                    customer_id=st.terms.customer.id,
                    invoice_key=inv.key,
                    amount=inv.outstanding,
                    currency=inv.currency,
                    attempt=collection.charge_attempts,
                    on=st.local_date(workflow.now()),
                ),
                ChargeResult,
                summary=f"charge {inv.key} (attempt {collection.charge_attempts})",
            )
        except _ACTIVITY_FAILURES as exc:
            # The ledger refused the charge's payment (non-retryable): stop
            # auto-pay for this invoice and flag it; never wedge the contract.
            workflow.logger.error("auto-pay for %s stopped: %s", inv.key, exc.cause or exc)
            collection.next_charge_at = None
            return
        if result.payment is not None:
            self._paid(result.payment)
            return
        attempts = collection.charge_attempts
        if attempts <= len(CHARGE_RETRY_DAYS):
            collection.next_charge_at = workflow.now() + timedelta(
                days=CHARGE_RETRY_DAYS[attempts - 1]
            )
        else:
            collection.next_charge_at = None  # give up: due-date rules take over

    async def _charge_unlocked(self, collection: CollectionState) -> None:
        """One auto-pay attempt: the gateway call runs outside the contract lock.

        The attempt is counted and its request fixed under the lock; the
        charge (bounded retries) runs without it, so amendments, payments and
        boundaries go on meanwhile; its outcome is applied under the lock
        again. A charge that cannot be made counts as a decline.
        """
        st = self.state
        async with self._lock:
            inv = st.invoice(collection.invoice_key)
            if collection not in st.collections or inv is None or inv.outstanding <= 0:
                return  # settled or dropped meanwhile: nothing to charge
            collection.charge_attempts += 1
            attempt = collection.charge_attempts
            request = ChargeRequest(
                contract_id=st.terms.contract_id,
                customer_id=st.terms.customer.id,
                invoice_key=inv.key,
                amount=inv.outstanding,
                currency=inv.currency,
                attempt=attempt,
                on=st.local_date(workflow.now()),
            )
        charge: CardCharge | None
        try:
            charge = await workflow.execute_activity(
                ActivityName.CHARGE_CARD.value,
                request,
                result_type=CardCharge,
                start_to_close_timeout=_SHORT,
                retry_policy=_CHARGE_RETRY,
                summary=f"charge {request.invoice_key} (attempt {attempt})",
            )
        except ActivityError as exc:
            workflow.logger.warning("charge %s attempt %d failed, counted as declined: %s",
                                    request.invoice_key, attempt, _refusal(exc))
            charge = None
        async with self._lock:
            if charge is not None and charge.accepted:
                # Money taken is always recorded: on the invoice, or (paid
                # meanwhile) as an unapplied payment for ops; a ledger step
                # that retries until the database takes it.
                recorded = await self._call(
                    ActivityName.RECORD_CHARGE,
                    PaymentRequest(
                        contract_id=request.contract_id,
                        invoice_key=request.invoice_key,
                        payment_key=request.idempotency_key,
                        amount=request.amount,
                        received_on=request.on,
                        method=charge.method,
                        gateway_ref=charge.reference,
                    ),
                    ChargeResult,
                    summary=f"record charge {request.invoice_key} (attempt {attempt})",
                )
                if recorded.payment is not None:
                    self._paid(recorded.payment)
                elif recorded.unapplied:
                    st.unapplied_payments.append(UnappliedPayment(
                        payment_key=request.idempotency_key, invoice_key=request.invoice_key,
                        amount=request.amount, reason=recorded.reason or "",
                    ))
                    self._publish()
                if collection in st.collections:
                    collection.next_charge_at = None  # charged: nothing to retry
                return
            if collection not in st.collections:
                return
            if attempt <= len(CHARGE_RETRY_DAYS):
                collection.next_charge_at = workflow.now() + timedelta(
                    days=CHARGE_RETRY_DAYS[attempt - 1]
                )
            else:
                collection.next_charge_at = None  # give up: due-date rules take over

    def _paid(self, payment: PaymentResult) -> None:
        st = self.state
        inv = st.invoice(payment.invoice_key)
        if inv is None:
            return
        if payment.amount_paid < inv.amount_paid:
            return  # the first answer to a resent payment: this state is newer
        st.put_invoice(
            inv.model_copy(
                update={
                    "status": payment.status,
                    "amount_paid": payment.amount_paid,
                    "paid_on": payment.paid_on,
                }
            )
        )
        if payment.status == "paid":
            st.collections = [c for c in st.collections if c.invoice_key != payment.invoice_key]
        self._publish()

    async def _run_due_collection(self) -> None:
        st = self.state
        now = workflow.now()
        for collection in list(st.collections):
            # Each step re-checks under the lock: a payment handler may have
            # settled the invoice (and dropped its collection) while we waited.
            if collection.next_charge_at is not None and collection.next_charge_at <= now:
                collection.next_charge_at = None
                if workflow.patched("charge-outside-lock"):
                    await self._charge_unlocked(collection)
                else:
                    async with self._lock:
                        if collection in st.collections:
                            await self._charge(collection)
            for at, step in collection.next_steps(st.terms.timezone):
                if at > now:
                    break
                async with self._lock:
                    if collection not in st.collections:
                        break
                    await self._step_run(
                        ActivityName.DUNNING_STEP,
                        DunningRequest(
                            contract_id=st.terms.contract_id,
                            invoice_key=collection.invoice_key,
                            step=step,
                            on=st.local_date(at),
                        ),
                        summary=f"{step.value.replace('_', ' ')} {collection.invoice_key}",
                    )
                collection.steps_done.append(step)
                if step is DunningStep.OVERDUE:
                    inv = st.invoice(collection.invoice_key)
                    if inv is not None and inv.status == "open":
                        st.put_invoice(inv.model_copy(update={"status": "overdue"}))
            # After the last reminder nothing more is scheduled; the invoice
            # stays overdue in the ledger and in this state.
            if collection in st.collections and collection.next_instant(st.terms.timezone) is None:
                st.collections.remove(collection)
        self._publish()

    async def _apply_due_amendments(self) -> None:
        st = self.state
        now = workflow.now()
        due = [p for p in st.pending_amendments if p.effective <= now]
        if not due:
            return
        st.pending_amendments = [p for p in st.pending_amendments if p.effective > now]
        async with self._lock:
            for pending in sorted(due, key=lambda p: p.effective):
                amendment = pending.amendment
                if workflow.patched("revalidate-due-amendments"):
                    # Validated again when it falls due: the contract may have
                    # changed since (a terminate moved the term end before it).
                    try:
                        check_amendment(st, amendment, pending.effective, now)
                    except BillowValidationError as exc:
                        self._drop(amendment, str(exc))
                        continue
                try:
                    await self._apply_now(amendment, pending.effective)
                except ApplicationError as exc:
                    self._drop(amendment, exc.message)
            await self._save_contract()

    def _drop(self, amendment: Amendment, reason: str) -> None:
        """A scheduled amendment that no longer applies: dropped, with the reason shown."""
        workflow.logger.warning("amendment %s dropped: %s", amendment.id, reason)
        self.state.dropped_amendments.append(
            DroppedAmendment(id=amendment.id, kind=amendment.kind, reason=reason,
                             at=workflow.now())
        )

    async def _apply_now(self, amendment: Amendment, effective: datetime) -> None:
        """Apply an amendment; ApplicationError if the ledger refused its grant."""
        st = self.state
        if isinstance(amendment, GrantCreditsAmendment):
            request = grant_request(st, amendment, effective, workflow.now())
            summary = f"grant {amendment.credits} credits ({amendment.id})"
            result = await self._step(ActivityName.GRANT_CREDITS, request, summary=summary,
                                      result_type=GrantResult, hold=False)
            if result is None:
                raise ApplicationError(self._last_refusal or "the ledger refused the grant",
                                       type="GrantRefused", non_retryable=True)
            if request.grant_id not in st.grant_ids:
                st.grant_ids.append(request.grant_id)
            st.credit_balance = result.credits.balance
            if result.invoice is not None:
                await self._issued(result.invoice)
        else:
            apply_terms_amendment(st, amendment, effective)
            if isinstance(amendment, ExtendTermAmendment):
                self._renewed = True

    # --- handlers ------------------------------------------------------------
    @workflow.update(name="amend")
    async def amend(self, amendment: Amendment) -> AmendmentResult:
        return await self._amend(amendment)

    async def _amend(self, amendment: Amendment) -> AmendmentResult:
        st = self.state
        answer = self._resend_answer(amendment)
        if answer is not None:
            return answer
        async with self._lock:
            # Decided under the lock: a boundary close or another handler may
            # have changed the contract since the validator accepted this.
            answer = self._resend_answer(amendment)
            if answer is not None:
                return answer
            now = workflow.now()
            try:
                validate_amendment(st, amendment, now)
            except BillowValidationError as exc:
                raise _rejected(exc) from exc
            effective = effective_instant(st, amendment, now)
            if isinstance(amendment, ExtendTermAmendment):
                await self._reserve_extension(amendment)
            recorded = await self._step_run(
                ActivityName.RECORD_AMENDMENT,
                RecordAmendmentRequest(
                    contract_id=st.terms.contract_id, amendment=amendment, effective=effective
                ),
                summary=f"record amendment {amendment.id} ({amendment.kind})",
            )
            if not recorded:
                raise ApplicationError(self._last_refusal or "the ledger refused it",
                                       type="AmendmentRefused", non_retryable=True)
            if effective > now:
                st.pending_amendments.append(
                    PendingAmendment(amendment=amendment, effective=effective)
                )
                status = "scheduled"
            else:
                await self._apply_now(amendment, effective)
                status = "applied"
            st.applied_amendment_ids.append(amendment.id)
            st.amendment_records.append(AmendmentRecord(
                id=amendment.id, digest=amendment_digest(amendment), status=status,
                effective=effective,
            ))
            if status == "applied":
                await self._save_contract()
        self._wakeup += 1
        self._publish()
        return AmendmentResult(amendment_id=amendment.id, status=status, effective=effective)

    async def _reserve_extension(self, amendment: ExtendTermAmendment) -> None:
        """An extension must not run into another contract of the customer that
        bills a shared meter (SPEC.md section 1): checked and written in the
        ledger under the customer's lock, or the update is refused."""
        if not workflow.patched("extend-term-overlap-check"):
            return
        t = self.state.terms
        end_date = term_end_date(t.starts_on, t.term_months + amendment.term_months)
        try:
            await self._run(
                ActivityName.RESERVE_TERM_EXTENSION,
                ReserveTermRequest(
                    contract_id=t.contract_id, customer_id=t.customer.id,
                    meters=[m.key for m in t.meters], start=t.term_start_at,
                    end=local_midnight_utc(end_date, t.timezone), term_end=end_date,
                ),
                summary=f"reserve the extended term to {end_date}",
            )
        except _ACTIVITY_FAILURES as exc:
            cause = _cause(exc)
            raise ApplicationError(
                cause.message if cause else str(exc),
                type=(cause.type if cause and cause.type else "AmendmentRefused"),
                non_retryable=True,
            ) from exc

    def _resend_answer(self, amendment: Amendment) -> AmendmentResult | None:
        """The first answer to an id already applied; a conflict if its content differs."""
        st = self.state
        if amendment.id not in st.applied_amendment_ids:
            return None
        record = st.amendment_record(amendment.id)
        if record is None:  # applied by a run from before answers were kept
            return AmendmentResult(amendment_id=amendment.id, status="duplicate")
        if record.digest != amendment_digest(amendment):
            raise _conflict(AmendmentConflict(
                [("id", f"amendment {amendment.id!r} was sent before with other content")]
            ))
        return AmendmentResult(amendment_id=amendment.id, status=record.status,
                               effective=record.effective)

    @amend.validator
    def _validate_amend(self, amendment: Amendment) -> None:
        try:
            validate_amendment(self.state, amendment, workflow.now())
        except AmendmentConflict as exc:
            raise _conflict(exc) from exc
        except BillowValidationError as exc:
            raise _rejected(exc) from exc

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

    async def _pay(self, payment: PaymentInput) -> PaymentResult:
        st = self.state
        update = workflow.current_update_info()
        key = payment.payment_id or (f"payment:{update.id}" if update else None)
        if key is None:  # unreachable: the signal form requires payment_id
            raise ApplicationError("payment_id: required", type="InvalidPayment")
        async with self._lock:
            # Re-checked under the lock: payments accepted together must not
            # add up to more than the invoice, and an invoice the validator did
            # not know yet (a close still finishing) is known now or unknown.
            self._check_pay(payment, known_only=False)
            try:
                result = await self._call(
                    ActivityName.RECORD_PAYMENT,
                    PaymentRequest(
                        contract_id=st.terms.contract_id,
                        invoice_key=payment.invoice,
                        payment_key=key,
                        amount=payment.amount,
                        received_on=st.local_date(workflow.now()),
                    ),
                    PaymentResult,
                    summary=f"record payment {payment.amount} for {payment.invoice}",
                )
            except _ACTIVITY_FAILURES as exc:
                # The ledger refused it (non-retryable): fail this update, not
                # the workflow, with the ledger's reason and type.
                cause = _cause(exc)
                kind = cause.type if cause else None
                if kind == "NotFound":  # not in the ledger either
                    raise _invalid("InvalidPayment", "invoice",
                                   f"unknown invoice {payment.invoice!r}") from exc
                raise ApplicationError(
                    cause.message if cause else str(exc),
                    *(cause.details if cause else ()),
                    type=kind if kind and kind != "BusinessError" else "InvalidPayment",
                    non_retryable=True,
                ) from exc
        if key not in st.payment_keys:
            st.payment_keys.append(key)
        self._paid(result)
        # A payment can only remove collection steps. Re-arm the main loop's
        # timer only if the step it sleeps for is gone: a cancelled timer costs
        # two history events, a timer that fires for nothing costs five.
        if self._next_wake() != self._sleeping_until:
            self._wakeup += 1
        return result

    @pay.validator
    def _validate_pay(self, payment: PaymentInput) -> None:
        self._check_pay(payment, known_only=True)

    def _check_pay(self, payment: PaymentInput, *, known_only: bool) -> None:
        """Refuse what can never be paid. An invoice this state does not know yet
        is let through: the state can lag the ledger (after a worker crash the
        step that issued it is replayed only once the main loop gets to it),
        and a payment for an invoice the ledger has is never refused for that
        (SPEC.md section 10). Under the lock the ledger decides (`_pay`)."""
        if payment.amount <= 0:
            raise _invalid("InvalidPayment", "amount", "must be positive")
        inv = self.state.invoice(payment.invoice)
        if inv is None:
            if known_only or workflow.patched("unknown-invoice-to-ledger"):
                return
            raise _invalid("InvalidPayment", "invoice", f"unknown invoice {payment.invoice!r}")
        if payment.payment_id is not None and payment.payment_id in self.state.payment_keys:
            return  # a resend: the ledger answers with what it recorded
        if inv.status in ("paid", "void"):
            raise _invalid("InvalidPayment", "invoice", f"{inv.key} is already {inv.status}")
        outstanding = inv.outstanding
        if payment.amount > outstanding:
            raise _invalid("InvalidPayment", "amount",
                           f"{payment.amount} exceeds the outstanding {outstanding}")

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

    # --- corrections (SPEC.md section 11) -----------------------------------------
    @workflow.update(name="correct")
    async def correct(self, correction: Correction) -> CorrectionResult:
        """Void, reissue or credit a finalized invoice; idempotent on the correction id."""
        return await self._correct(correction)

    @correct.validator
    def _validate_correct(self, correction: Correction) -> None:
        self._check_correction(correction)

    def _check_correction(self, correction: CorrectVoid | CorrectReissue | CorrectCredit) -> None:
        try:
            check_correction(self.state, correction)
        except CorrectionConflict as exc:
            raise ApplicationError(
                str(exc), [{"field": f, "reason": r} for f, r in exc.problems],
                type="CorrectionConflict", non_retryable=True) from exc
        except BillowValidationError as exc:
            raise ApplicationError(
                str(exc), [{"field": f, "reason": r} for f, r in exc.problems],
                type="InvoiceState", non_retryable=True) from exc

    async def _correct(self, correction: CorrectVoid | CorrectReissue | CorrectCredit
                       ) -> CorrectionResult:
        st = self.state
        self._check_correction(correction)
        answer = resend_answer(st, correction)
        if answer is not None:
            return answer
        async with self._lock:
            # Decided under the lock: a close or a payment may have changed the invoice.
            self._check_correction(correction)
            answer = resend_answer(st, correction)
            if answer is None:
                outcome = await self._apply_correction(correction)
        if answer is not None:  # a concurrent send of the same id applied it meanwhile
            return answer
        result = outcome.result
        if outcome.refund is not None:
            refund = await self._refund(outcome.refund)
            if refund is not None:
                record_refund(st, correction.id, refund)
                result = resend_answer(st, correction) or result
            else:
                st.pending_refunds.append(PendingRefund(
                    request=outcome.refund, correction_id=correction.id,
                    next_at=workflow.now() + timedelta(days=REFUND_RETRY_DAYS[0])))
        # A correction can only remove collection steps or add a reissue's.
        if self._next_wake() != self._sleeping_until:
            self._wakeup += 1
        self._publish()
        return result

    async def _apply_correction(self, correction: CorrectVoid | CorrectReissue | CorrectCredit
                                ) -> CorrectionOutcome:
        """The ledger step of a correction, under the lock; its outcome into the state."""
        st = self.state
        request = correction_request(st, correction, workflow.now())
        try:
            outcome = await self._call(
                ActivityName.CORRECT_INVOICE, request, CorrectionOutcome,
                summary=f"{correction.kind} {correction.invoice} ({correction.id})",
            )
        except _ACTIVITY_FAILURES as exc:
            # The ledger refused it: fail this update, never the contract.
            cause = _cause(exc)
            raise ApplicationError(
                cause.message if cause else str(exc),
                *(cause.details if cause else ()),
                type=cause.type if cause and cause.type else "InvalidCorrection",
                non_retryable=True,
            ) from exc
        for key in learn_outcome(st, outcome):
            reissued = next(i for i in outcome.invoices if i.key == key)
            await self._issued(reissued)
        st.correction_records.append(CorrectionRecord(
            id=correction.id, digest=correction_digest(correction), result=outcome.result))
        return outcome

    async def _run_due_refunds(self) -> None:
        """Retry refunds the gateway did not pay (1, 3 and 7 days after the note,
        then left pending in the ledger for ops)."""
        st = self.state
        now = workflow.now()
        for pending in list(st.pending_refunds):
            if pending.next_at is None or pending.next_at > now:
                continue
            pending.next_at = None
            # Booked the day it is paid back, not the day of the note.
            refund = await self._refund(
                pending.request.model_copy(update={"on": st.local_date(now)}))
            if refund is not None:
                st.pending_refunds.remove(pending)
                record_refund(st, pending.correction_id, refund)
            elif pending.attempts < len(REFUND_RETRY_DAYS):
                pending.next_at = now + timedelta(days=REFUND_RETRY_DAYS[pending.attempts])
                pending.attempts += 1
            else:
                workflow.logger.error("refund %s given up after %d attempts: pending for ops",
                                      pending.request.refund_key, pending.attempts)

    async def _refund(self, request: RefundRequest) -> RefundView | None:
        """Pay a credit note's refund through the gateway, outside the contract lock.

        A few attempts; if the gateway keeps failing the refund stays pending in
        the ledger (shown to ops), and sending the credit again retries it.
        """
        try:
            refund = await workflow.execute_activity(
                ActivityName.REFUND.value, request, result_type=RefundView,
                start_to_close_timeout=_SHORT, retry_policy=_CHARGE_RETRY,
                summary=f"refund {request.amount} {request.currency} ({request.refund_key})",
            )
        except ActivityError as exc:
            workflow.logger.warning("refund %s not paid yet: %s", request.refund_key,
                                    _refusal(exc))
            return None
        assert isinstance(refund, RefundView)
        return refund

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

    # --- plumbing --------------------------------------------------------------
    async def _call(
        self,
        name: ActivityName,
        arg: BaseModel,
        result_type: type[T],
        *,
        summary: str,
        activity_timeout: timedelta = _SHORT,
    ) -> T:
        """Run an activity and return its typed result.

        Ledger activities are short database transactions and run as local
        activities: one marker event instead of three events plus a workflow
        task, which is what keeps a monthly contract-year under 200 history
        events. The payment gateway is remote I/O with its own latency and
        runs as a regular activity.
        """
        if name in _REMOTE:
            result = await workflow.execute_activity(
                name.value,
                arg,
                result_type=result_type,
                start_to_close_timeout=activity_timeout,
                retry_policy=_ACTIVITY_RETRY,
                summary=summary,
            )
        else:
            result = await workflow.execute_local_activity(
                name.value,
                arg,
                result_type=result_type,
                start_to_close_timeout=activity_timeout,
                retry_policy=_ACTIVITY_RETRY,
                summary=summary,
            )
        assert isinstance(result, result_type)
        return result

    async def _step(
        self,
        name: ActivityName,
        arg: BaseModel,
        *,
        result_type: type[T],
        summary: str,
        activity_timeout: timedelta = _SHORT,
        hold: bool = True,
    ) -> T | None:
        """A ledger step whose business error holds the contract instead of failing it.

        Activities raise deterministic errors as non-retryable (see
        activities/errors.py), so an ActivityError here is one: the contract
        is flagged ``needs_attention`` (with ``hold``) and waits for an
        amendment, which retries the step. Returns None in that case.
        """
        try:
            return await self._call(name, arg, result_type, summary=summary,
                                    activity_timeout=activity_timeout)
        except _ACTIVITY_FAILURES as exc:
            reason = self._note_refusal(summary, exc)
            if hold:
                await self._hold(reason)
            return None

    async def _step_run(self, name: ActivityName, arg: BaseModel, *, summary: str) -> bool:
        """`_step` for activities without a result; never holds (False if refused)."""
        try:
            await self._run(name, arg, summary=summary)
            return True
        except _ACTIVITY_FAILURES as exc:
            self._note_refusal(summary, exc)
            return False

    def _note_refusal(self, summary: str, exc: ActivityError | ApplicationError) -> str:
        self._last_refusal = f"{summary}: {_refusal(exc)}"
        workflow.logger.error("ledger refused %s", self._last_refusal)
        return self._last_refusal

    async def _hold(self, reason: str) -> None:
        """Flag the contract needs_attention until something changes (an amendment)."""
        st = self.state
        self._held_at = self._wakeup
        if st.attention != reason:
            st.attention = reason
            st.status = ContractStatus.NEEDS_ATTENTION
            await self._step_run(ActivityName.UPDATE_CONTRACT, self._save_request(),
                                 summary=f"save contract ({st.status.value})")
        self._publish()

    def _resolved(self) -> bool:
        """Clear needs_attention after a step went through; True if the status changed."""
        st = self.state
        st.attention = None
        if st.status is not ContractStatus.NEEDS_ATTENTION:
            return False
        st.status = ContractStatus.ACTIVE if st.term_opened else ContractStatus.SCHEDULED
        return True

    async def _run(
        self,
        name: ActivityName,
        arg: BaseModel,
        *,
        summary: str,
        activity_timeout: timedelta = _SHORT,
    ) -> None:
        await workflow.execute_local_activity(
            name.value,
            arg,
            start_to_close_timeout=activity_timeout,
            retry_policy=_ACTIVITY_RETRY,
            summary=summary,
        )

    def _save_request(self) -> UpdateContractRequest:
        st = self.state
        return UpdateContractRequest(contract_id=st.terms.contract_id, status=st.status,
                                     terms=st.terms)

    async def _save_contract(self) -> None:
        await self._run(ActivityName.UPDATE_CONTRACT, self._save_request(),
                        summary=f"save contract ({self.state.status.value})")
        self._publish()

    def _publish(self) -> None:
        """Keep search attributes and the UI's current details in step with state."""
        st = self.state
        next_at = st.open_period.end if st.open_period and not st.term_closed else None
        values: dict[str, object] = {
            sa.CUSTOMER_ID.name: st.terms.customer.id,
            sa.PLAN_KEY.name: st.terms.plan_key,
            sa.CONTRACT_STATUS.name: st.status.value,
            sa.BILLING_CYCLE.name: st.terms.billing_cycle.value,
            sa.NEXT_BILLING_AT.name: next_at,
            sa.HAS_OVERDUE_INVOICE.name: st.has_overdue_invoice,
            sa.CREDIT_BALANCE.name: float(st.credit_balance),  # Double attribute: display only
        }
        if self._shows_commitment_shortfall():
            values[sa.COMMITMENT_SHORTFALL.name] = (
                None if st.commitment is None else float(st.commitment.shortfall))
        changed = {k: v for k, v in values.items() if self._sa_sent.get(k, ...) != v}
        if changed:
            updates = []
            for key in sa.ALL:
                if key.name not in changed:
                    continue
                value = changed[key.name]
                updates.append(key.value_unset() if value is None else key.value_set(value))
            workflow.upsert_search_attributes(updates)
            self._sa_sent.update(changed)
        workflow.set_current_details(self._details_markdown())

    def _shows_commitment_shortfall(self) -> bool:
        """``CommitmentShortfall`` is upserted for contracts that have (had) a
        minimum commitment; added after v4 histories were recorded: patched."""
        st = self.state
        if st.commitment is None and not st.terms.minimum_commitments:
            return False
        return workflow.patched("commitment-shortfall-attribute")

    def _details_markdown(self) -> str:
        st = self.state
        open_invoices = [
            i for i in st.invoices if i.status in ("open", "overdue", "needs_attention")
        ]
        lines = [
            f"**Status:** {st.status.value}",
            f"**Credit balance:** {st.credit_balance} {st.terms.currency}",
        ]
        if st.open_period and not st.term_closed:
            lines.append(f"**Next boundary:** {st.open_period.end_date.isoformat()}")
        if st.commitment is not None:
            left = months_left(st.open_period.start_date, st.terms.term_end) if (
                st.open_period and not st.term_closed) else None
            lines.append(f"**Minimum commitment ({st.commitment.per.value}):** "
                         f"{progress_text(st.commitment, st.terms.currency, left)}")
        if st.limit_lines:
            shown = ", ".join(
                f"{ln.meter} {ln.kind} {ln.amount}"
                + (f" (for {ln.period_start.isoformat()})" if ln.period_start else "")
                for ln in st.limit_lines)
            lines.append(f"**Spend limits on {st.limit_lines_invoice}:** {shown}")
        close = state_next_close(st)
        if close is not None:
            lines.append(f"**Next close:** {close.label}")
        if st.attention:
            lines.append(f"**Needs attention:** {st.attention}")
        if st.unapplied_payments:
            total = sum((u.amount for u in st.unapplied_payments), Decimal(0))
            lines.append(f"**Unapplied payments:** {len(st.unapplied_payments)} ({total} "
                         f"{st.terms.currency}) taken by the gateway after their invoice was "
                         "paid: refund or apply")
        if st.pending_refunds:
            total = sum((p.request.amount for p in st.pending_refunds), Decimal(0))
            lines.append(f"**Pending refunds:** {len(st.pending_refunds)} ({total} "
                         f"{st.terms.currency}) the gateway has not paid back yet")
        if open_invoices:
            lines.append("**Open invoices:**")
            lines += [
                f"- {i.key} {i.number or ''} {i.status} {i.outstanding} due {i.due_on}"
                for i in open_invoices
            ]
        return "\n".join(lines)
