"""The term's steps: open it (commitment invoice, grants), close each period,
close the term (breakage).
"""

from __future__ import annotations

from temporalio import workflow

from models.contract import COMMITMENT_GRANT_ID, to_instant
from models.corrections import (
    PendingRefund,
)
from models.invoices import due_on
from models.operations import (
    ActivityName,
    ClosePeriodRequest,
    ClosePeriodResult,
    ContractStatus,
    CreditSummary,
    ExpireCreditsRequest,
    GrantRequest,
    GrantResult,
)
from models.periods import Period
from workflows.contract_amendments import AmendmentSteps
from workflows.contract_state import (
    PendingAmendment,
    contract_grant_amendment,
    grant_request,
)
from workflows.contract_steps import (
    LONG,
)
from workflows.corrections import (
    learn_credited,
)
from workflows.wait_labels import period_label


class TermSteps(AmendmentSteps):
    """The term opened, its periods closed and invoiced, the term closed."""

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
                # Once the ledger has the earlier periods, none are sent
                # (issue 13); the first close after an upgrade sends them
                # once, and the ledger stores what its invoices lacked.
                earlier_periods=None if st.periods_in_ledger else list(st.invoiced_periods),
                issued_on=issued_on,
                due_on=due_on(issued_on, t.payment_terms_days),
                is_final=len(st.periods) == 1,
                next_period=st.periods[1] if len(st.periods) > 1 else None,
            ),
            result_type=ClosePeriodResult,
            summary=f"rate usage {period_label(period, t.billing_cycle.months)}",
            activity_timeout=LONG,
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
        if result.periods_in_ledger:
            # The ledger has the others. Decided by the recorded result, not
            # a patch: a history from before it replays its own requests.
            st.invoiced_periods = [period]
            st.periods_in_ledger = True
        else:
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
