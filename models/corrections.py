"""Corrections of finalized invoices (SPEC.md section 11): what is asked, what is answered.

A correction names a finalized invoice by its key and carries an id. Void,
reissue and credit share one id space per contract: sending an id again with
the same content changes nothing and gets the first answer; the same id with
other content is a conflict. These types cross the Temporal boundary (the
``correct`` update and the ledger activity) and the API.

Invariants:
- a credit names its amount either line by line (1-based positions on the
  invoice) or as one ``amount`` for the whole invoice, never both;
- a line is named at most once per note;
- the digest covers the content only, so a resend is recognised whatever
  transport carried it.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from models.bounds import BoundedPositive, Id, InvoiceKey
from models.contract import ContractTerms
from models.credits import CreditSummary
from models.money import DecimalStr
from models.operations import IssuedInvoice, RefundRequest
from models.periods import Period

__all__ = [
    "CUSTOMER_CREDIT_GRANT_PREFIX",
    "REASONS",
    "CorrectCredit",
    "CorrectReissue",
    "CorrectVoid",
    "Correction",
    "CorrectionOutcome",
    "CorrectionRecord",
    "CorrectionRequest",
    "CorrectionResult",
    "CreditLine",
    "CreditNoteAllocation",
    "CreditNoteLineView",
    "CreditNoteView",
    "PendingRefund",
    "Reason",
    "RefundRequest",
    "RefundView",
    "correct_update_id",
    "correction_digest",
    "reissue_key",
]

_IN = ConfigDict(extra="forbid", frozen=True)

# Grants that keep a credit note's remainder as customer credit: ``credit_note:<id>``.
CUSTOMER_CREDIT_GRANT_PREFIX = "credit_note:"

Reason = Literal["billing_error", "duplicate", "service_issue", "goodwill", "other"]
REASONS: tuple[str, ...] = ("billing_error", "duplicate", "service_issue", "goodwill", "other")
Remainder = Literal["refund", "credit"]


class CreditLine(BaseModel):
    model_config = _IN
    line: int = Field(ge=1, le=100_000, description="1-based position on the invoice")
    amount: BoundedPositive


class CorrectVoid(BaseModel):
    model_config = _IN
    kind: Literal["void"] = "void"
    id: Id
    invoice: InvoiceKey
    reissue: bool = False


class CorrectReissue(BaseModel):
    model_config = _IN
    kind: Literal["reissue"] = "reissue"
    id: Id
    invoice: InvoiceKey


def check_credit_form(lines: list[CreditLine] | None, amount: object) -> None:
    """A credit names either lines or one amount for the whole invoice, each line once.

    The one rule both the API's body and the workflow's correction check.
    """
    if (lines is None) == (amount is None):
        raise ValueError("give either lines or amount (the whole invoice), not both")
    if lines is not None:
        if not lines:
            raise ValueError("lines: at least one line")
        positions = [ln.line for ln in lines]
        if len(set(positions)) != len(positions):
            raise ValueError("lines: a line is named more than once")


class CorrectCredit(BaseModel):
    model_config = _IN
    kind: Literal["credit"] = "credit"
    id: Id
    invoice: InvoiceKey
    reason: Reason
    lines: list[CreditLine] | None = Field(default=None, max_length=10_000)
    amount: BoundedPositive | None = None
    remainder: Remainder = "refund"

    @model_validator(mode="after")
    def _one_form(self) -> CorrectCredit:
        check_credit_form(self.lines, self.amount)
        return self


Correction = Annotated[CorrectVoid | CorrectReissue | CorrectCredit, Field(discriminator="kind")]


def correction_digest(correction: CorrectVoid | CorrectReissue | CorrectCredit) -> str:
    """The correction's content (its id included), as a hex digest."""
    return hashlib.sha256(correction.model_dump_json().encode()).hexdigest()


def correct_update_id(correction: CorrectVoid | CorrectReissue | CorrectCredit) -> str:
    """The Temporal update id: a resend with the same content attaches to the
    first update; the same id with other content reaches the workflow, which
    refuses it as a conflict (as `amend_update_id` does for amendments)."""
    return f"correct:{correction.id}:{correction_digest(correction)[:16]}"


def reissue_key(voided_key: str, existing: int) -> str:
    """``usage:<start>/2`` for the first reissue of ``usage:<start>``, then ``/3`` ..."""
    base = voided_key.split("/", 1)[0]
    return f"{base}/{existing + 2}"


# --- answers ---------------------------------------------------------------------------

_OUT = ConfigDict(frozen=True)


class CreditNoteAllocation(BaseModel):
    model_config = _OUT
    credits_returned: DecimalStr
    outstanding_reduced: DecimalStr
    refunded: DecimalStr
    customer_credit: DecimalStr


class CreditNoteLineView(BaseModel):
    model_config = _OUT
    line: int  # 1-based position on the invoice
    kind: str
    amount: DecimalStr


class RefundView(BaseModel):
    model_config = _OUT
    refund_key: str
    amount: DecimalStr
    status: str  # pending | refunded
    method: str | None = None
    gateway_ref: str | None = None
    refunded_on: date | None = None


class CreditNoteView(BaseModel):
    """A credit note as the API, the CLI and ``billow simulate`` show it."""

    model_config = _OUT
    id: str  # the correction id
    number: str
    contract_id: str
    invoice: str  # the credited invoice's key
    invoice_number: str | None
    currency: str
    issued_on: date
    reason: str
    lines: list[CreditNoteLineView]
    total: DecimalStr
    allocation: CreditNoteAllocation
    automatic: bool = False
    refund: RefundView | None = None


class CorrectionResult(BaseModel):
    """The answer to a correction; a resend of its id gets it again."""

    model_config = _OUT
    correction_id: str
    kind: str
    invoice: str
    invoice_number: str | None
    invoice_status: str
    credit_note: CreditNoteView | None = None
    reissued: IssuedInvoice | None = None


class CorrectionRecord(BaseModel):
    """What a running contract answered to a correction id (carried in its state)."""

    id: str
    digest: str
    result: CorrectionResult


class CorrectionRequest(BaseModel):
    """What the ledger needs to apply a correction, from the workflow or the API."""

    model_config = _IN
    contract_id: str
    correction: Correction
    at: AwareDatetime  # the instant it applies
    on: date  # its local date: a note's issue date, a reissue's issue date
    terms: ContractTerms
    # The contract's invoiced periods (a reissue rates one of them again).
    # None: the ledger's invoices give them (activities/invoiced_periods.py);
    # workflows from before that send them.
    invoiced_periods: list[Period] | None = None
    term_closed: bool = False


class PendingRefund(BaseModel):
    """A refund the gateway did not pay yet: the contract retries it on a schedule."""

    request: RefundRequest
    correction_id: str
    attempts: int = 1
    next_at: AwareDatetime | None = None  # None: given up, left pending for ops


class CorrectionOutcome(BaseModel):
    """The ledger's answer: the result plus what the contract's state must learn."""

    model_config = _OUT
    result: CorrectionResult
    invoices: list[IssuedInvoice]  # every invoice the correction changed, as it is now
    credits: CreditSummary
    refund: RefundRequest | None = None
    duplicate: bool = False
