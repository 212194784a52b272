"""Corrections (SPEC.md section 11): void, reissue and credit through the ledger
under the lock; refunds through the gateway outside it, retried 1, 3 and 7 days
after the note, then left pending for ops.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from models.corrections import (
    CorrectCredit,
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
from models.operations import (
    ActivityName,
)
from workflows.contract_collection import CollectionSteps
from workflows.contract_steps import (
    ACTIVITY_FAILURES,
    CHARGE_RETRY,
    REFUND_RETRY_DAYS,
    SHORT,
    cause_of,
    refusal,
)
from workflows.corrections import (
    CorrectionConflict,
    check_correction,
    correction_request,
    learn_outcome,
    record_refund,
    resend_answer,
)


class CorrectionSteps(CollectionSteps):
    """Void, reissue and credit under the lock; refunds outside it."""

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
        request = correction_request(st, correction, workflow.now(),
                                     periods_from_ledger=st.periods_in_ledger)
        try:
            outcome = await self._call(
                ActivityName.CORRECT_INVOICE, request, CorrectionOutcome,
                summary=f"{correction.kind} {correction.invoice} ({correction.id})",
            )
        except ACTIVITY_FAILURES as exc:
            # The ledger refused it: fail this update, never the contract.
            cause = cause_of(exc)
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
                start_to_close_timeout=SHORT, retry_policy=CHARGE_RETRY,
                summary=f"refund {request.amount} {request.currency} ({request.refund_key})",
            )
        except ActivityError as exc:
            workflow.logger.warning("refund %s not paid yet: %s", request.refund_key,
                                    refusal(exc))
            return None
        assert isinstance(refund, RefundView)
        return refund
