"""The contract workflow's carried state and its pure transitions.

Everything here is deterministic and free of Temporal calls, so it can be
unit-tested and carried across continue-as-new as one pydantic payload.

Invariants:
- ``periods`` holds the periods not yet invoiced, in order, as UTC instants;
  it is recomputed (never patched by hand) whenever the term or the cycle
  changes, from the open period's start.
- ``applied_amendment_ids`` survives continue-as-new: Temporal deduplicates
  update ids within one run only.
- An amendment effective before the open period's start takes effect from
  that start: finalized invoices never change.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, Field

from models.amendments import (
    Amendment,
    ChangeBillingCycleAmendment,
    ChangePaymentTermsAmendment,
    ExtendTermAmendment,
    GrantCreditsAmendment,
    RateOverrideAmendment,
    SetAutoPayAmendment,
    SetMinimumCommitmentAmendment,
    TerminateAmendment,
)
from models.bounds import MAX_TERM_MONTHS
from models.contract import (
    COMMITMENT_GRANT_ID,
    CONTRACT_GRANT_AMENDMENT_PREFIX,
    Contract,
    ContractTerms,
    CreditGrantSpec,
    add_rate_override,
    to_instant,
)
from models.corrections import CUSTOMER_CREDIT_GRANT_PREFIX, CorrectionRecord, PendingRefund
from models.errors import BillowValidationError
from models.invoices import LimitLine, due_on
from models.minimum_commitment import CommitmentProgress
from models.minimum_terms import ScheduledMinimumCommitment, minimum_commitment_problems
from models.money import round_money
from models.operations import ContractStatus, DunningStep, GrantRequest, IssuedInvoice
from models.periods import (
    Period,
    billing_periods,
    local_date,
    local_midnight_utc,
    term_end_date,
    termination_end_date,
)

# Reminder schedule after the due date (SPEC.md section 6): days -> step.
REMINDERS: tuple[tuple[int, DunningStep], ...] = (
    (1, DunningStep.REMINDER_1),
    (7, DunningStep.REMINDER_7),
    (30, DunningStep.REMINDER_30),
)
# Auto-pay retry schedule after a declined charge, in days after issue.
CHARGE_RETRY_DAYS: tuple[int, ...] = (1, 3, 7)


class CollectionState(BaseModel):
    """Collection of one unpaid invoice: due-date rules and auto-pay retries."""

    invoice_key: str
    # Instant the invoice turns overdue: first instant of the day after due_on.
    overdue_at: AwareDatetime
    due_on: date
    steps_done: list[DunningStep] = Field(default_factory=list)
    charge_attempts: int = 0
    next_charge_at: AwareDatetime | None = None

    def next_steps(self, timezone: str) -> list[tuple[datetime, DunningStep]]:
        """Dunning steps not yet done, with the instant each falls due."""
        steps = [(self.overdue_at, DunningStep.OVERDUE)]
        for days, step in REMINDERS:
            steps.append((local_midnight_utc(self.due_on + timedelta(days=days), timezone), step))
        return [(at, step) for at, step in steps if step not in self.steps_done]

    def next_instant(self, timezone: str) -> datetime | None:
        candidates = [at for at, _ in self.next_steps(timezone)]
        if self.next_charge_at is not None:
            candidates.append(self.next_charge_at)
        return min(candidates) if candidates else None


class PendingAmendment(BaseModel):
    """An amendment accepted now that takes effect at a later instant."""

    amendment: Amendment
    effective: AwareDatetime


class AmendmentRecord(BaseModel):
    """What the contract answered to an amendment id, to answer a resend the same way."""

    id: str
    digest: str
    status: str  # applied | scheduled
    effective: AwareDatetime


class DroppedAmendment(BaseModel):
    """A scheduled amendment that no longer applied when it fell due (docs/billing-rules.md)."""

    id: str
    kind: str
    reason: str
    at: AwareDatetime


class UnappliedPayment(BaseModel):
    """Money the gateway took that its invoice refused (paid another way meanwhile)."""

    payment_key: str
    invoice_key: str
    amount: Decimal
    reason: str


class ContractState(BaseModel):
    contract: Contract
    terms: ContractTerms
    catalog_version: int | None
    terms_digest: str
    status: ContractStatus = ContractStatus.SCHEDULED
    registered: bool = False
    term_opened: bool = False
    term_closed: bool = False
    periods: list[Period] = Field(default_factory=list)
    # The periods invoiced so far: once a close says the ledger holds them
    # (migration 0010, `periods_in_ledger`), only the last one, which the
    # schedule continues from; before, all of them, sent with every close.
    invoiced_periods: list[Period] = Field(default_factory=list)
    periods_in_ledger: bool = False
    invoices: list[IssuedInvoice] = Field(default_factory=list)
    collections: list[CollectionState] = Field(default_factory=list)
    applied_amendment_ids: list[str] = Field(default_factory=list)
    # Ids of the credit grants made so far (commitment, contract, amendments).
    grant_ids: list[str] = Field(default_factory=list)
    # Payment keys recorded through this workflow: a resend is answered with
    # the recorded result instead of being refused as an overpayment.
    payment_keys: list[str] = Field(default_factory=list)
    pending_amendments: list[PendingAmendment] = Field(default_factory=list)
    # Answers given per amendment id (absent for ids applied by runs before it existed).
    amendment_records: list[AmendmentRecord] = Field(default_factory=list)
    dropped_amendments: list[DroppedAmendment] = Field(default_factory=list)
    unapplied_payments: list[UnappliedPayment] = Field(default_factory=list)
    # Answers given per correction id (void, reissue, credit: SPEC.md section 11).
    correction_records: list[CorrectionRecord] = Field(default_factory=list)
    # Credit note refunds the gateway has not paid yet, retried on a schedule.
    pending_refunds: list[PendingRefund] = Field(default_factory=list)
    credit_balance: Decimal = Decimal(0)
    attention: str | None = None
    terminated_at: AwareDatetime | None = None
    # When the workflow first started. A backdated contract gives usage of
    # its past periods one grace window from creation before closing them.
    created_at: AwareDatetime | None = None
    # Spend against the minimum commitment as of the last usage invoice (SPEC 12).
    commitment: CommitmentProgress | None = None
    # The last usage invoice's minimum and maximum lines (SPEC 12), for the UI.
    limit_lines: list[LimitLine] = Field(default_factory=list)
    limit_lines_invoice: str | None = None

    # --- derived views -------------------------------------------------
    @property
    def open_period(self) -> Period | None:
        return self.periods[0] if self.periods else None

    @property
    def open_start(self) -> datetime:
        """Start of the first period not yet invoiced (or the term end)."""
        period = self.open_period
        return period.start if period else self.terms.term_end_at

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=int(self.terms.usage_grace_hours * 3600))

    def close_at(self, period: Period) -> datetime:
        end = period.end if self.created_at is None else max(period.end, self.created_at)
        return end + self.grace

    def invoice(self, key: str) -> IssuedInvoice | None:
        return next((inv for inv in self.invoices if inv.key == key), None)

    def put_invoice(self, invoice: IssuedInvoice) -> None:
        self.invoices = [inv for inv in self.invoices if inv.key != invoice.key] + [invoice]

    @property
    def has_overdue_invoice(self) -> bool:
        return any(inv.status == "overdue" for inv in self.invoices)

    def outstanding(self, key: str) -> Decimal:
        inv = self.invoice(key)
        return Decimal(0) if inv is None else inv.outstanding

    def amendment_record(self, amendment_id: str) -> AmendmentRecord | None:
        return next((r for r in self.amendment_records if r.id == amendment_id), None)

    @property
    def reserved_grant_ids(self) -> set[str]:
        """Grant ids the contract itself makes (commitment, contract grants) or made."""
        ids = {g.id for g in self.terms.credit_grants} | set(self.grant_ids)
        if self.terms.commitment is not None:
            ids.add(COMMITMENT_GRANT_ID)
        return ids

    def next_amendment_at(self) -> datetime | None:
        return min((p.effective for p in self.pending_amendments), default=None)

    def next_refund_at(self) -> datetime | None:
        return min((p.next_at for p in self.pending_refunds if p.next_at is not None),
                   default=None)

    def next_collection_at(self) -> datetime | None:
        instants = [
            at for c in self.collections if (at := c.next_instant(self.terms.timezone)) is not None
        ]
        return min(instants, default=None)

    # --- schedule --------------------------------------------------------
    def recompute_periods(self) -> None:
        """Periods from the open start to the term end, under the current terms."""
        if self.open_period is not None:
            start_date = self.open_period.start_date
        elif self.invoiced_periods:
            start_date = self.invoiced_periods[-1].end_date
        else:
            start_date = self.terms.starts_on
        self.periods = self.periods_from(start_date)

    def periods_from(self, start_date: date) -> list[Period]:
        """Periods from ``start_date`` to the term end under the current terms."""
        t = self.terms
        if start_date >= t.term_end:
            return []
        return billing_periods(
            t.starts_on,
            t.term_end,
            t.billing_cycle,
            t.billing_anchor,
            t.timezone,
            cycle_anchor=t.cycle_anchor,
            from_date=start_date,
        )

    def local_date(self, instant: datetime) -> date:
        return local_date(instant, self.terms.timezone)


def initial_state(
    contract: Contract, terms: ContractTerms, catalog_version: int | None, terms_digest: str
) -> ContractState:
    state = ContractState(
        contract=contract, terms=terms, catalog_version=catalog_version, terms_digest=terms_digest
    )
    state.recompute_periods()
    return state


# --- amendments ------------------------------------------------------------


class AmendmentConflict(BillowValidationError):
    """The amendment's id was used before for different content (SPEC.md section 7)."""


def amendment_digest(amendment: Amendment) -> str:
    """The amendment's content, without when billow received it."""
    canonical = amendment.model_dump_json(exclude={"received_at"})
    return hashlib.sha256(canonical.encode()).hexdigest()


def amend_update_id(amendment: Amendment) -> str:
    """The Temporal update id to send ``amendment`` under.

    Temporal answers a repeated update id from its cache without running the
    validator: the id carries the content, so a resend with the same content
    gets the first answer and the same amendment id with other content reaches
    the workflow, which refuses it as a conflict.
    """
    return f"amend:{amendment.id}:{amendment_digest(amendment)[:16]}"


def validate_amendment(state: ContractState, amendment: Amendment, now: datetime) -> None:
    """Raise BillowValidationError if ``amendment`` cannot apply to this contract.

    Checked when the update arrives (so an invalid amendment changes nothing
    and its caller gets the reason) and again under the workflow's lock right
    before it applies, since another handler or a boundary may have changed
    the contract in between. A resend of an id is accepted (and answered as
    the first time) only with the same content; otherwise AmendmentConflict.
    """
    if amendment.id.startswith(CONTRACT_GRANT_AMENDMENT_PREFIX):
        raise BillowValidationError(
            [("id", f"{CONTRACT_GRANT_AMENDMENT_PREFIX!r} ids are reserved")]
        )
    if amendment.id in state.applied_amendment_ids:
        record = state.amendment_record(amendment.id)
        if record is not None and record.digest != amendment_digest(amendment):
            raise AmendmentConflict(
                [("id", f"amendment {amendment.id!r} was sent before with other content")]
            )
        return  # a resend: accepted and ignored
    check_amendment(state, amendment, effective_instant(state, amendment, now), now)


def check_amendment(
    state: ContractState, amendment: Amendment, effective: datetime, now: datetime
) -> None:
    """Whether ``amendment`` applies at ``effective`` to the contract as it is now.

    Runs the apply path's own functions on a copy of the state, so whatever
    passes here applies without raising. Used on arrival and again when a
    scheduled amendment falls due (one that no longer applies is dropped).
    """
    t = state.terms
    if state.term_closed:
        raise BillowValidationError([(
            "effective", f"after the term end {t.term_end.isoformat()}: "
            f"contract {t.contract_id} has ended"
        )])
    if isinstance(amendment, SetMinimumCommitmentAmendment):
        _validate_minimum_commitment(state, amendment, effective)
    if effective >= t.term_end_at and not isinstance(amendment, ExtendTermAmendment):
        raise BillowValidationError(
            [("effective", f"at or after the term end {t.term_end.isoformat()}")]
        )
    pending_kinds = {p.amendment.kind for p in state.pending_amendments
                     if p.amendment.id != amendment.id}
    if isinstance(amendment, TerminateAmendment):
        if state.terminated_at is not None or "terminate" in pending_kinds:
            raise BillowValidationError([("kind", "contract is already terminated")])
    elif isinstance(amendment, ExtendTermAmendment):
        if state.terminated_at is not None or "terminate" in pending_kinds:
            raise BillowValidationError([("kind", "cannot extend a terminated contract")])
        if t.term_months + amendment.term_months > MAX_TERM_MONTHS:
            raise BillowValidationError([(
                "term_months",
                f"the term would be {t.term_months + amendment.term_months} months; "
                f"at most {MAX_TERM_MONTHS} including extensions",
            )])
    elif isinstance(amendment, ChangePaymentTermsAmendment):
        try:
            due_on(t.term_end, amendment.payment_terms_days)
        except OverflowError:
            raise BillowValidationError(
                [("payment_terms_days", "due dates would be past the calendar's end")]
            ) from None
    if isinstance(amendment, GrantCreditsAmendment):
        _validate_grant(state, amendment, effective)
        grant_request(state, amendment, effective, now)
        return
    try:
        apply_terms_amendment(state.model_copy(), amendment, effective)
    except BillowValidationError:
        raise
    except (ValueError, OverflowError, ArithmeticError) as exc:
        raise BillowValidationError([(_main_field(amendment), str(exc))]) from exc


def term_true_up_refusal(
    state: ContractState, amendment: Amendment, now: datetime
) -> BillowValidationError | None:
    """A terminate must leave a final invoice for the term minimum's true-up.

    The true-up is on the term's final usage invoice (SPEC.md section 12). A
    terminate effective at the boundary whose invoice is already finalized
    would end the term there, and that invoice, issued as not final, would
    be the last one: the true-up would never be billed. Refused, naming how
    to do it: void that invoice first (its reissue is then the final invoice
    and carries the true-up), or end the term after the boundary.

    Separate from `check_amendment` because the workflow applies it behind
    ``workflow.patched``: releases before it accepted such a terminate.
    """
    if not isinstance(amendment, TerminateAmendment) or amendment.id in state.applied_amendment_ids:
        return None
    t = state.terms
    if not state.invoiced_periods:
        return None
    last = state.invoiced_periods[-1]
    effective = effective_instant(state, amendment, now)
    if termination_end_date(effective, t.timezone) > last.end_date:
        return None  # a period is left: its invoice is the final one
    minimum = t.minimum_commitment_at(last.start)
    if minimum is None or minimum.per != "term":
        return None
    issued = next((i for i in state.invoices if i.kind == "usage" and i.status != "void"
                   and i.period_start == last.start_date), None)
    if issued is None:
        return None
    name = issued.number or issued.key
    return BillowValidationError([("effective", (
        f"the term would end on {last.end_date.isoformat()}, the end of a period already "
        f"invoiced by {name} without the term minimum's true-up, which would then never be "
        f"billed: void {name} first (its reissue is then the final invoice and carries the "
        f"true-up), or terminate later"
    ))])


def _main_field(amendment: Amendment) -> str:
    return {
        "extend_term": "term_months",
        "change_payment_terms": "payment_terms_days",
        "change_billing_cycle": "billing_cycle",
        "rate_override": "override",
        "set_minimum_commitment": "minimum_commitment",
    }.get(amendment.kind, "effective")


def _validate_minimum_commitment(
    state: ContractState, amendment: SetMinimumCommitmentAmendment, effective: datetime
) -> None:
    t = state.terms
    problems = []
    if amendment.minimum_commitment is not None:
        problems = minimum_commitment_problems(
            amendment.minimum_commitment, t.currency, "minimum_commitment")
    if effective >= t.term_end_at:  # the term's last period is open: no boundary left
        problems.append(("effective", f"takes effect from the next boundary, the term end "
                                      f"{t.term_end.isoformat()}: no period is left to bill"))
    if problems:
        raise BillowValidationError(problems)


def contract_grant_amendment(grant: CreditGrantSpec, effective: datetime) -> GrantCreditsAmendment:
    """A priced grant written in the contract, as the grant amendment that makes it.

    It goes the way a bought top-up goes (SPEC.md section 1): when it takes
    effect it is granted and its ``top_up`` invoice issued.
    """
    return GrantCreditsAmendment(
        kind="grant_credits",
        id=f"{CONTRACT_GRANT_AMENDMENT_PREFIX}{grant.id}",
        grant_id=grant.id,
        credits=grant.credits,
        price=grant.price,
        priority=grant.priority,
        expires=grant.expires,
        effective=effective,
    )


def _contract_grant_effective(terms: ContractTerms, grant: CreditGrantSpec) -> datetime:
    return to_instant(grant.effective, terms.timezone) if grant.effective else terms.term_start_at


def _priced(amendment: GrantCreditsAmendment) -> bool:
    """A grant with a price issues a top-up; ``price: 0`` is a promotional grant."""
    return amendment.price is not None and amendment.price > 0


def grant_request(
    state: ContractState, amendment: GrantCreditsAmendment, effective: datetime, now: datetime
) -> GrantRequest:
    """The ledger request that makes ``amendment``'s grant (and its top-up invoice).

    A top-up is keyed by its effective date and dated the day it is issued:
    its effective date, or today if that is later (SPEC.md section 8) - a
    back-dated grant, or one that resolves a held period, is never issued in
    the past.
    """
    t = state.terms
    expires = to_instant(amendment.expires, t.timezone) if amendment.expires else t.term_end_at
    priced = _priced(amendment)
    effective_on = state.local_date(effective)
    issued_on = state.local_date(max(effective, now))
    return GrantRequest(
        contract_id=t.contract_id,
        grant_id=amendment.grant_id or amendment.id,
        credits=amendment.credits,
        price=amendment.price or Decimal(0),
        priority=amendment.priority,
        effective=effective,
        expires=expires,
        currency=t.currency,
        invoice_kind="top_up" if priced else None,
        invoice_key=f"top_up:{effective_on.isoformat()}" if priced else None,
        invoice_period=(effective_on, state.local_date(expires)) if priced else None,
        issued_on=issued_on if priced else None,
        due_on=due_on(issued_on, t.payment_terms_days) if priced else None,
    )


def _validate_grant(state: ContractState, amendment: GrantCreditsAmendment,
                    effective: datetime) -> None:
    t = state.terms
    problems: list[tuple[str, str]] = []
    try:
        expires = to_instant(amendment.expires, t.timezone) if amendment.expires else t.term_end_at
    except (ValueError, OverflowError) as exc:
        raise BillowValidationError([("expires", str(exc))]) from exc
    if expires <= effective:
        problems.append(("expires", "must be after the grant's effective instant"))
    elif expires > t.term_end_at:
        problems.append(("expires", f"after the term end {t.term_end.isoformat()}"))
    for field, amount in (("credits", amendment.credits), ("price", amendment.price)):
        if amount is not None and round_money(amount, t.currency) != amount:
            problems.append((field, f"more decimals than {t.currency} has"))
    grant_id = amendment.grant_id or amendment.id
    others = [p for p in state.pending_amendments if p.amendment.id != amendment.id]
    pending_ids = {
        p.amendment.grant_id or p.amendment.id
        for p in others
        if isinstance(p.amendment, GrantCreditsAmendment)
    }
    if grant_id.startswith(CUSTOMER_CREDIT_GRANT_PREFIX):
        problems.append(("grant_id", f"{CUSTOMER_CREDIT_GRANT_PREFIX!r} grant ids are reserved "
                                     "for customer credit from credit notes"))
    own = amendment.id == f"{CONTRACT_GRANT_AMENDMENT_PREFIX}{grant_id}"  # the contract's own grant
    if not own and (grant_id in state.reserved_grant_ids or grant_id in pending_ids):
        problems.append(("grant_id", f"a grant {grant_id!r} exists already or is reserved"))
    if _priced(amendment):
        # The top-up invoice's key is its effective date (SPEC.md section 8).
        key = f"top_up:{state.local_date(effective).isoformat()}"
        pending = [
            f"top_up:{state.local_date(p.effective).isoformat()}"
            for p in others
            if isinstance(p.amendment, GrantCreditsAmendment) and _priced(p.amendment)
        ]
        # The contract's own priced grants not made yet take their day too.
        pending += [
            f"top_up:{state.local_date(_contract_grant_effective(t, g)).isoformat()}"
            for g in t.credit_grants
            if g.price > 0 and g.id not in state.grant_ids and g.id != grant_id
        ]
        if state.invoice(key) is not None or key in pending:
            problems.append(("effective", f"a top-up is already invoiced as {key}; one per day"))
    if problems:
        raise BillowValidationError(problems)


# Kinds whose purpose can be to resolve a held invoice: without an explicit
# effective they apply from the held period's start.
_RESOLVING_KINDS = (RateOverrideAmendment, GrantCreditsAmendment)


def effective_instant(state: ContractState, amendment: Amendment, now: datetime) -> datetime:
    """When an amendment takes effect (SPEC.md section 7).

    Without an explicit ``effective`` an amendment takes effect when billow
    received it (``received_at``, else now), except a
    price or credit amendment while an invoice is held for attention: that one
    takes effect from the held period's start, since resolving the hold is
    what it is for. Nothing takes effect inside an invoiced period.
    """
    held = state.attention is not None and isinstance(amendment, _RESOLVING_KINDS)
    received = now if amendment.received_at is None else min(amendment.received_at, now)
    default = state.open_start if held else received
    effective = max(amendment.effective or default, state.open_start)
    if isinstance(amendment, ChangeBillingCycleAmendment):
        # A new cycle starts at the next boundary.
        period = state.open_period
        return period.end if period else effective
    if isinstance(amendment, SetMinimumCommitmentAmendment):
        return boundary_at_or_after(state, effective)
    return effective


def boundary_at_or_after(state: ContractState, instant: datetime) -> datetime:
    """The first period boundary (a period start, or the term end) at or after
    ``instant``; ``instant`` itself when it is past the term end."""
    for period in state.periods:
        if period.start >= instant:
            return period.start
        if period.end >= instant:
            return period.end
    return instant


def apply_terms_amendment(state: ContractState, amendment: Amendment, effective: datetime) -> None:
    """Apply an amendment that only changes terms (no side effect of its own)."""
    t = state.terms
    if isinstance(amendment, RateOverrideAmendment):
        state.terms = add_rate_override(t, amendment.override, effective)
    elif isinstance(amendment, ChangePaymentTermsAmendment):
        state.terms = t.model_copy(update={"payment_terms_days": amendment.payment_terms_days})
    elif isinstance(amendment, SetAutoPayAmendment):
        state.terms = t.model_copy(update={"auto_pay": amendment.auto_pay})
    elif isinstance(amendment, ChangeBillingCycleAmendment):
        anchor = state.local_date(effective)
        state.terms = t.model_copy(
            update={"billing_cycle": amendment.billing_cycle, "cycle_anchor": anchor}
        )
        open_period = state.open_period
        if open_period is not None and open_period.end == effective:
            # The period ending at this boundary is not invoiced yet (its grace
            # window is open) but was billed under the old cycle: keep it whole.
            state.periods = [open_period]
            state.periods += state.periods_from(open_period.end_date)
        else:
            state.recompute_periods()
    elif isinstance(amendment, ExtendTermAmendment):
        months = t.term_months + amendment.term_months
        state.terms = t.model_copy(
            update={"term_months": months, "term_end": term_end_date(t.starts_on, months)}
        )
        state.recompute_periods()
    elif isinstance(amendment, SetMinimumCommitmentAmendment):
        # A schedule, so a closed period keeps the minimum of its start.
        kept = [m for m in t.minimum_commitments
                if m.effective is None or m.effective < effective]
        entry = ScheduledMinimumCommitment(effective=effective,
                                           commitment=amendment.minimum_commitment)
        state.terms = t.model_copy(update={"minimum_commitments": [*kept, entry]})
    elif isinstance(amendment, TerminateAmendment):
        end = termination_end_date(effective, t.timezone)
        state.terms = t.model_copy(update={"term_end": max(end, t.starts_on)})
        state.terminated_at = effective
        state.recompute_periods()
    else:  # pragma: no cover - grant_credits is applied through an activity
        raise TypeError(f"{amendment.kind} is not a terms-only amendment")
