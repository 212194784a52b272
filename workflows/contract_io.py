"""What goes in and out of a contract workflow: its input, update arguments and
answers, and the query's view.

Kept out of workflows/contract.py on purpose. The workflow sandbox imports
the workflow's own module afresh for every workflow instance it creates, and a
pydantic model builds its validators when its class is defined: defined there,
these four cost every new instance (a cache miss, a continue-as-new) about as
much as its first task. Imported through the sandbox's passthrough, they are
built once per worker. They are plain data and hold no state.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from models.bounds import BoundedPositive, Id, InvoiceKey
from models.contract import Contract, ContractTerms
from models.minimum_commitment import CommitmentProgress
from models.operations import ContractStatus, IssuedInvoice
from workflows.contract_state import ContractState, DroppedAmendment, UnappliedPayment
from workflows.wait_labels import NextClose


class ContractWorkflowInput(BaseModel):
    contract: Contract
    terms: ContractTerms
    catalog_version: int | None = None
    terms_digest: str
    state: ContractState | None = None  # set when continuing as new


class PaymentInput(BaseModel):
    invoice: InvoiceKey  # invoice key, e.g. usage:2027-01-01
    amount: BoundedPositive
    payment_id: Id | None = None  # idempotency key; defaults to the update id


class AmendmentResult(BaseModel):
    amendment_id: str
    status: str  # applied | scheduled | duplicate
    effective: datetime | None = None


class ContractView(BaseModel):
    """The query result: live state, read without touching the database."""

    contract_id: str
    customer_id: str
    plan: str
    status: ContractStatus
    terms: ContractTerms
    credit_balance: Decimal
    next_boundary: datetime | None
    attention: str | None
    has_overdue_invoice: bool
    invoices: list[IssuedInvoice]
    applied_amendment_ids: list[str]
    pending_amendments: list[str] = Field(default_factory=list)
    dropped_amendments: list[DroppedAmendment] = Field(default_factory=list)
    unapplied_payments: list[UnappliedPayment] = Field(default_factory=list)
    # Spend against the minimum commitment as of the last usage invoice (SPEC 12).
    commitment: CommitmentProgress | None = None
    # When the next period closes (a catch-up of past periods says so) and the
    # label of the wait the workflow is in now (its timer's summary).
    next_close: NextClose | None = None
    waiting_for: str | None = None
