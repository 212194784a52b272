"""What every part of ``ContractWorkflow`` stands on: its fields, the ledger calls
and how their failures are read, and what it shows ops.

`ContractWorkflow` (workflows/contract.py) is split by idea: term steps
(contract_term.py), collection (contract_collection.py), amendments
(contract_amendments.py) and corrections (contract_corrections.py), each a
class on top of `ContractSteps`. They are imported through the sandbox's
passthrough, so they are loaded once per worker, not for every workflow
instance; none holds module state, and all of it is workflow code: it is
deterministic and runs only inside the workflow's activations.

- Ledger steps are local activities (one marker each); the gateway is a
  regular one (`REMOTE`).
- A ledger step's business error never fails the workflow: `ContractSteps._step`
  holds the contract (needs_attention) and returns None.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from models.errors import BillowValidationError
from models.minimum_commitment import months_left, progress_text
from models.operations import (
    ActivityName,
    ContractStatus,
    UpdateContractRequest,
)
from workflows import search_attributes as sa
from workflows.contract_state import (
    AmendmentConflict,
    ContractState,
)
from workflows.wait_labels import state_next_close

# A refund the gateway declined is tried again this many days after the note.
REFUND_RETRY_DAYS: tuple[int, ...] = (1, 3, 7)

# Continue-as-new after this many closed periods in one run (history bound).
PERIODS_PER_RUN = 12

# Ledger steps: transient failures (the database restarting) retry until it
# is back; business errors are non-retryable (activities/errors.py) and
# become needs_attention here, so nothing retries forever.
ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)
)
# The payment gateway is remote I/O run outside the contract lock: a few
# attempts, then the charge counts as declined and the business retry
# schedule (CHARGE_RETRY_DAYS) takes over.
CHARGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
)
SHORT = timedelta(seconds=60)
REMOTE = frozenset({ActivityName.CHARGE_INVOICE, ActivityName.REFUND})
T = TypeVar("T")
LONG = timedelta(minutes=15)


def _refused(exc: BillowValidationError, kind: str) -> ApplicationError:
    """The caller gets every ``field: reason`` of the refusal in the details."""
    return ApplicationError(
        str(exc),
        [{"field": path, "reason": reason} for path, reason in exc.problems],
        type=kind,
        non_retryable=True,
    )


def rejected(exc: BillowValidationError) -> ApplicationError:
    """An invalid amendment."""
    return _refused(exc, "InvalidAmendment")


def conflict(exc: AmendmentConflict) -> ApplicationError:
    """An amendment id sent before with other content."""
    return _refused(exc, "AmendmentConflict")


# How a failed activity reaches workflow code: a regular activity's failure as
# ActivityError (the ApplicationError is its cause), a local activity's as the
# ApplicationError itself.
ACTIVITY_FAILURES = (ActivityError, ApplicationError)


def cause_of(exc: ActivityError | ApplicationError) -> ApplicationError | None:
    """The ApplicationError an activity failed with, however it reached us."""
    cause = exc if isinstance(exc, ApplicationError) else exc.cause
    return cause if isinstance(cause, ApplicationError) else None


def refusal(exc: ActivityError | ApplicationError) -> str:
    """The reason a ledger activity gave for a business error."""
    cause = cause_of(exc) or exc.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'error'}: {cause.message}"
    return str(cause or exc)


def invalid(kind: str, field: str, reason: str) -> ApplicationError:
    """A validator rejection: the caller gets ``field: reason`` and the details."""
    return ApplicationError(
        f"{field}: {reason}", [{"field": field, "reason": reason}], type=kind, non_retryable=True
    )


class ContractSteps:
    """The fields every part of the workflow shares (set in ``ContractWorkflow.__init__``)."""

    state: ContractState
    _lock: asyncio.Lock
    _wakeup: int  # bumped by handlers to re-evaluate the main loop
    _held_at: int | None  # _wakeup when the open period was held for attention
    _periods_this_run: int
    _sa_sent: dict[str, object]
    _sleeping_until: datetime | None
    _waiting_for: str | None  # the current wait's label (query)
    _renewed: bool  # an extend_term applied in this run
    _last_refusal: str | None  # reason of the last business error

    def _next_wake(self) -> datetime | None:
        st = self.state
        candidates = [st.next_amendment_at(), st.next_collection_at(), st.next_refund_at()]
        if not st.term_closed and st.open_period is not None and not self._held:
            candidates.append(st.close_at(st.open_period))
        return min((c for c in candidates if c is not None), default=None)

    @property
    def _held(self) -> bool:
        return self.state.attention is not None and self._held_at == self._wakeup

    async def _call(
        self,
        name: ActivityName,
        arg: BaseModel,
        result_type: type[T],
        *,
        summary: str,
        activity_timeout: timedelta = SHORT,
    ) -> T:
        """Run an activity and return its typed result.

        Ledger activities are short database transactions and run as local
        activities: one marker event instead of three events plus a workflow
        task, which is what keeps a monthly contract-year under 200 history
        events. The payment gateway is remote I/O with its own latency and
        runs as a regular activity.
        """
        if name in REMOTE:
            result = await workflow.execute_activity(
                name.value,
                arg,
                result_type=result_type,
                start_to_close_timeout=activity_timeout,
                retry_policy=ACTIVITY_RETRY,
                summary=summary,
            )
        else:
            result = await workflow.execute_local_activity(
                name.value,
                arg,
                result_type=result_type,
                start_to_close_timeout=activity_timeout,
                retry_policy=ACTIVITY_RETRY,
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
        activity_timeout: timedelta = SHORT,
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
        except ACTIVITY_FAILURES as exc:
            reason = self._note_refusal(summary, exc)
            if hold:
                await self._hold(reason)
            return None

    async def _step_run(self, name: ActivityName, arg: BaseModel, *, summary: str) -> bool:
        """`_step` for activities without a result; never holds (False if refused)."""
        try:
            await self._run(name, arg, summary=summary)
            return True
        except ACTIVITY_FAILURES as exc:
            self._note_refusal(summary, exc)
            return False

    def _note_refusal(self, summary: str, exc: ActivityError | ApplicationError) -> str:
        self._last_refusal = f"{summary}: {refusal(exc)}"
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
        activity_timeout: timedelta = SHORT,
    ) -> None:
        await workflow.execute_local_activity(
            name.value,
            arg,
            start_to_close_timeout=activity_timeout,
            retry_policy=ACTIVITY_RETRY,
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
