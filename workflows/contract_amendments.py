"""Amendments: validated and recorded under the lock, applied now or when due.

A scheduled amendment is validated again when it falls due (the contract may
have changed since) and dropped with its reason if it no longer applies. An
id already applied answers as the first time; the same id with other content
is a conflict.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from models.amendments import Amendment, ExtendTermAmendment, GrantCreditsAmendment
from models.errors import BillowValidationError
from models.operations import (
    ActivityName,
    GrantResult,
    RecordAmendmentRequest,
    ReserveTermRequest,
)
from models.periods import local_midnight_utc, term_end_date
from workflows.contract_collection import CollectionSteps
from workflows.contract_io import AmendmentResult
from workflows.contract_state import (
    AmendmentConflict,
    AmendmentRecord,
    DroppedAmendment,
    PendingAmendment,
    amendment_digest,
    apply_terms_amendment,
    check_amendment,
    effective_instant,
    grant_request,
    term_true_up_refusal,
    validate_amendment,
)
from workflows.contract_steps import (
    ACTIVITY_FAILURES,
    cause_of,
    conflict,
    rejected,
)


class AmendmentSteps(CollectionSteps):
    """Amendments recorded, applied now or scheduled, and re-checked when due."""

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
                raise rejected(exc) from exc
            refusal = term_true_up_refusal(st, amendment, now)
            # Patched only when it refuses: a release before it accepted such
            # a terminate, and its history must replay (signals have no validator).
            if refusal is not None and workflow.patched("term-true-up-refusal"):
                raise rejected(refusal)
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
        except ACTIVITY_FAILURES as exc:
            cause = cause_of(exc)
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
            raise conflict(AmendmentConflict(
                [("id", f"amendment {amendment.id!r} was sent before with other content")]
            ))
        return AmendmentResult(amendment_id=amendment.id, status=record.status,
                               effective=record.effective)
