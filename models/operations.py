"""What the contract workflow asks of the ledger: activity requests and results.

These are the only types that cross the Temporal boundary between
``workflows`` and ``activities`` (besides the domain types they embed), so
both sides depend on ``models`` and never on each other. Activities are
called by the names in `ActivityName`.

Invariants:
- Every request carries the business key its side effect is idempotent on
  (contract id + invoice key, grant id, payment key, dunning step); never a
  run id or attempt number.
- Results are small: keys, numbers, statuses and totals, not documents.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from models.amendments import Amendment
from models.contract import Contract, ContractTerms
from models.credits import CreditSummary
from models.invoices import LimitLine
from models.minimum_commitment import CommitmentProgress
from models.periods import Period

__all__ = [
    "ActivityName",
    "CardCharge",
    "ChargeRequest",
    "ChargeResult",
    "ClosePeriodRequest",
    "ClosePeriodResult",
    "CompactUsageRequest",
    "CompactUsageResult",
    "ContractStatus",
    "CreditSummary",
    "DunningRequest",
    "DunningStep",
    "ExpireCreditsRequest",
    "GrantRequest",
    "GrantResult",
    "IssuedInvoice",
    "PaymentRequest",
    "PaymentResult",
    "RecordAmendmentRequest",
    "RefundRequest",
    "RegisterContractRequest",
    "ReserveTermRequest",
    "UpdateContractRequest",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class ActivityName(StrEnum):
    REGISTER_CONTRACT = "register_contract"
    UPDATE_CONTRACT = "update_contract"
    RECORD_AMENDMENT = "record_amendment"
    GRANT_CREDITS = "grant_credits"
    CLOSE_PERIOD = "close_period"
    RECORD_PAYMENT = "record_payment"
    CHARGE_INVOICE = "charge_invoice"
    DUNNING_STEP = "dunning_step"
    EXPIRE_CREDITS = "expire_credits"
    RESERVE_TERM_EXTENSION = "reserve_term_extension"
    CHARGE_CARD = "charge_card"
    RECORD_CHARGE = "record_charge"
    COMPACT_USAGE = "compact_usage"
    WAIT_FOR_EVENTS = "wait_for_events"
    DELIVER_EVENTS = "deliver_events"
    DISABLE_ENDPOINT = "disable_endpoint"
    CORRECT_INVOICE = "correct_invoice"
    REFUND = "refund"


class ContractStatus(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    NEEDS_ATTENTION = "needs_attention"
    ENDED = "ended"
    TERMINATED = "terminated"


class DunningStep(StrEnum):
    OVERDUE = "overdue"
    REMINDER_1 = "reminder_1"
    REMINDER_7 = "reminder_7"
    REMINDER_30 = "reminder_30"


class IssuedInvoice(BaseModel):
    """What the contract remembers of a finalized (or held) invoice."""

    model_config = _FROZEN
    key: str
    number: str | None
    kind: Literal["commitment", "usage", "top_up"]
    status: str
    currency: str
    period_start: date
    period_end: date
    issued_on: date | None
    due_on: date | None
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal
    amount_paid: Decimal = Decimal(0)
    paid_on: date | None = None
    # Corrections (SPEC.md section 11): the sum of its credit notes, and what
    # they took off the amount owed.
    credited: Decimal = Decimal(0)
    credit_allocated: Decimal = Decimal(0)

    @property
    def outstanding(self) -> Decimal:
        """total - paid - what credit notes took off; 0 once void."""
        if self.status == "void":
            return Decimal(0)
        return self.total - self.amount_paid - self.credit_allocated


class RegisterContractRequest(BaseModel):
    model_config = _FROZEN
    contract: Contract
    terms: ContractTerms
    catalog_version: int | None
    terms_digest: str


class UpdateContractRequest(BaseModel):
    model_config = _FROZEN
    contract_id: str
    status: ContractStatus
    terms: ContractTerms


class RecordAmendmentRequest(BaseModel):
    model_config = _FROZEN
    contract_id: str
    amendment: Amendment
    effective: AwareDatetime


class GrantRequest(BaseModel):
    """Grant credits; with ``invoice_kind`` also issue the invoice paying for them."""

    model_config = _FROZEN
    contract_id: str
    grant_id: str
    credits: Decimal
    price: Decimal
    priority: int
    effective: AwareDatetime
    expires: AwareDatetime
    currency: str
    invoice_kind: Literal["commitment", "top_up"] | None
    invoice_key: str | None
    invoice_period: tuple[date, date] | None
    issued_on: date | None
    due_on: date | None


class GrantResult(BaseModel):
    model_config = _FROZEN
    invoice: IssuedInvoice | None
    credits: CreditSummary


class ClosePeriodRequest(BaseModel):
    """Rate, apply credits and finalize the usage invoice of one period."""

    model_config = _FROZEN
    terms: ContractTerms
    period: Period
    # Earlier periods of the term, for late events (rated and labelled with
    # the period they belong to). None: the ledger's invoices give them
    # (activities/invoiced_periods.py); workflows from before that send them.
    earlier_periods: list[Period] | None = None
    issued_on: date
    due_on: date
    is_final: bool
    # The period after this one, whose draft invoice opens now (None: last).
    next_period: Period | None = None


class RefundRequest(BaseModel):
    """A credit note's refund the ledger recorded as pending; the gateway pays it."""

    model_config = _FROZEN
    contract_id: str
    customer_id: str
    refund_key: str
    amount: Decimal
    currency: str
    on: date


class ClosePeriodResult(BaseModel):
    model_config = _FROZEN
    invoice: IssuedInvoice
    # Set when the invoice is held: unpriced usage or another business error.
    attention: str | None
    credits: CreditSummary
    # Spend against the minimum commitment after this invoice (SPEC 12).
    commitment: CommitmentProgress | None = None
    # Its minimum and maximum lines (SPEC 12), for the workflow's details.
    limit_lines: list[LimitLine] = Field(default_factory=list)
    # Automatic credit notes for falls in late usage (SPEC.md section 11): the
    # invoices they credited, as they are now, and the refunds they owe.
    credited: list[IssuedInvoice] = Field(default_factory=list)
    refunds: list[RefundRequest] = Field(default_factory=list)
    # The ledger's invoices now hold every period of the term invoiced so far
    # (activities/invoiced_periods.py): later requests need not carry them.
    # False in results recorded by releases before it, so their histories
    # replay with the requests they made.
    periods_in_ledger: bool = False


class PaymentRequest(BaseModel):
    model_config = _FROZEN
    contract_id: str
    invoice_key: str
    payment_key: str
    amount: Decimal
    received_on: date
    method: str = "manual"
    gateway_ref: str | None = None


class PaymentResult(BaseModel):
    model_config = _FROZEN
    invoice_key: str
    status: str
    amount_paid: Decimal
    paid_on: date | None
    applied: bool  # as the first recording answered (a resend gets the first answer)


class ChargeRequest(BaseModel):
    """Charge the customer's payment method for an invoice (auto-pay)."""

    model_config = _FROZEN
    contract_id: str
    customer_id: str
    invoice_key: str
    amount: Decimal
    currency: str
    attempt: int  # business retry number (1, 2, ...), part of the charge key
    on: date

    @property
    def idempotency_key(self) -> str:
        """The gateway's idempotency key and the payment's id: one per business
        attempt (never Temporal's attempt), so a retried activity cannot charge twice."""
        return f"charge:{self.contract_id}:{self.invoice_key}:{self.attempt}"


class ChargeResult(BaseModel):
    model_config = _FROZEN
    accepted: bool
    reason: str | None
    payment: PaymentResult | None
    # Accepted by the gateway but refused by the invoice (paid meanwhile):
    # recorded as an unapplied payment for ops, never charged again.
    unapplied: bool = False


class CardCharge(BaseModel):
    """What the payment gateway answered to one charge (nothing recorded yet)."""

    model_config = _FROZEN
    accepted: bool
    reference: str | None
    reason: str | None
    method: str  # the gateway's name, recorded with the payment


class DunningRequest(BaseModel):
    model_config = _FROZEN
    contract_id: str
    invoice_key: str
    step: DunningStep
    on: date


class ReserveTermRequest(BaseModel):
    """An ``extend_term``'s new end, checked against the customer's other
    contracts (SPEC.md section 1) and written so a racing create sees it."""

    model_config = _FROZEN
    contract_id: str
    customer_id: str
    meters: list[str]
    start: AwareDatetime
    end: AwareDatetime
    term_end: date


class ExpireCreditsRequest(BaseModel):
    """Term end: expire what is left and record the contract's final status."""

    model_config = _FROZEN
    contract_id: str
    at: datetime
    on: date
    status: ContractStatus
    terms: ContractTerms


class CompactUsageRequest(BaseModel):
    """Fold usage of UTC days before ``before`` (None: today's UTC midnight)."""

    model_config = _FROZEN
    before: AwareDatetime | None = None


class CompactUsageResult(BaseModel):
    model_config = _FROZEN
    compaction_id: int | None  # None: nothing new to fold
    folded_before: AwareDatetime
    events: int
    rollup_rows: int
