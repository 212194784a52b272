"""Request and response bodies of the HTTP API (with OpenAPI examples).

Inputs reuse the domain models of ``models`` (contracts, amendments,
catalogs: the same shapes as the YAML files of SPEC.md section 8, as JSON);
this module adds the API's envelopes. Decimals are strings in both
directions; unknown fields are errors. Inputs are bounded like the models
(`models.bounds`, SPEC.md section 6): ids up to 256 characters, amounts
below 10^18 with at most 12 decimals.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from models.bounds import BoundedPositive, Id
from models.contract import Contract, ContractTerms
from models.invoices import InvoiceDocument
from models.minimum_commitment import CommitmentProgress
from models.money import DecimalStr
from models.operations import ContractStatus
from workflows.contract_state import DroppedAmendment, UnappliedPayment
from workflows.wait_labels import NextClose

_IN = ConfigDict(extra="forbid")

NEXT_CLOSE_DESCRIPTION = (
    "When the next billing period closes (is rated and invoiced): its boundary plus the "
    "usage grace window. A contract created after some of its boundaries had passed closes "
    "those past periods together one grace window after it was created (`catch_up: true`, "
    "`periods` of them). None when no period is left to close.")

# --- examples (shared with the route docs) -------------------------------------

CONTRACT_EXAMPLE: dict[str, Any] = {
    "id": "acme-2027",
    "customer": {"id": "acme", "name": "Acme Corp"},
    "plan": "pro",
    "starts_on": "2027-01-01",
    "term_months": 12,
    "billing_cycle": "quarterly",
    "payment_terms_days": 45,
    "auto_pay": False,
    "rate_overrides": [{"discount_percent": "50"}],
    "commitment": {"amount": "100000.00", "bonus_percent": "20"},
}

CATALOG_EXAMPLE: dict[str, Any] = {
    "meters": [
        {"key": "tokens", "name": "LLM tokens (thousands)", "aggregation": "sum",
         "group_by": ["model"],
         "rate_card": [{"match": {"model": "gpt-4"}, "unit_price": "0.03"},
                       {"match": {"model": "gpt-3.5"}, "unit_price": "0.002"}]},
        {"key": "requests", "name": "API requests", "aggregation": "sum",
         "group_by": ["region"],
         "rate_card": [{"match": {"region": "eu"}, "unit_price": "0.0012"},
                       {"match": {}, "unit_price": "0.001"}]},
    ],
    "plans": [
        {"key": "pro", "name": "Pro Plan", "currency": "USD", "meters": ["tokens", "requests"],
         "billing_cycle": "monthly", "payment_terms_days": 30, "auto_pay": False,
         "recurring_fees": [{"key": "platform", "name": "Platform fee",
                             "monthly_amount": "500.00"}]},
    ],
}

AMENDMENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "rate_override": {
        "summary": "New gpt-4 price from mid-April",
        "value": {"id": "crm-amend-0042", "kind": "rate_override",
                  "effective": "2027-04-15T00:00:00Z",
                  "override": {"meter": "tokens", "match": {"model": "gpt-4"},
                               "unit_price": "0.01"}},
    },
    "grant_credits": {
        "summary": "Top-up: 20,000 credits for 18,000",
        "value": {"id": "crm-amend-0043", "kind": "grant_credits", "credits": "20000.00",
                  "price": "18000.00"},
    },
    "change_payment_terms": {
        "summary": "Net-60 from now on",
        "value": {"id": "crm-amend-0044", "kind": "change_payment_terms",
                  "payment_terms_days": 60},
    },
    "set_minimum_commitment": {
        "summary": "Commit to 250,000 over the term, from the next boundary",
        "value": {"id": "crm-amend-0046", "kind": "set_minimum_commitment",
                  "minimum_commitment": {"amount": "250000.00", "per": "term",
                                         "prorate_on_termination": False}},
    },
    "terminate": {
        "summary": "Terminate mid-term",
        "value": {"id": "crm-amend-0045", "kind": "terminate",
                  "effective": "2027-08-15T00:00:00Z"},
    },
}

USAGE_EXAMPLES: dict[str, dict[str, Any]] = {
    "tokens_and_requests": {
        "summary": "Two events of two meters",
        "value": {"events": [
            {"id": "evt-0001", "customer": "acme", "meter": "tokens",
             "timestamp": "2027-01-20T08:00:00Z", "quantity": "2000",
             "dimensions": {"model": "gpt-3.5"}},
            {"id": "evt-0002", "customer": "acme", "meter": "requests",
             "timestamp": "2027-01-20T08:00:01Z", "dimensions": {"region": "eu"}},
        ]},
    },
    "resend": {
        "summary": "A resend: the same id and content is reported `duplicate`, stored once",
        "value": {"events": [
            {"id": "evt-0001", "customer": "acme", "meter": "tokens",
             "timestamp": "2027-01-20T08:00:00Z", "quantity": "2000",
             "dimensions": {"model": "gpt-3.5"}},
        ]},
    },
}

PAYMENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "wire": {
        "summary": "A bank transfer, keyed by its reference",
        "value": {"amount": "1500.00", "payment_id": "wire-2027-05-20-acme"},
    },
    "partial": {
        "summary": "Part of what is owed",
        "value": {"amount": "500.00", "payment_id": "wire-2027-05-02-acme-1"},
    },
}

INVOICE_SUMMARY_EXAMPLE: dict[str, Any] = {
    "number": "INV-000002", "key": "usage:2027-01-01", "contract_id": "acme-2027",
    "kind": "usage", "status": "open", "currency": "USD",
    "period_start": "2027-01-01", "period_end": "2027-04-01",
    "issued_on": "2027-04-01", "due_on": "2027-05-16",
    "subtotal": "21501.20", "credits_applied": "20001.20", "total": "1500.00",
    "amount_paid": "0.00", "outstanding": "1500.00", "paid_on": None,
}


NEXT_CLOSE_EXAMPLE: dict[str, Any] = {
    "at": "2027-04-01T01:00:00Z", "boundary": "2027-04-01T00:00:00Z",
    "boundary_date": "2027-04-01", "period": "2027-Q1", "periods": 1, "catch_up": False,
    "grace_seconds": 3600,
    "label": "close 2027-Q1 at 2027-04-01 01:00 UTC: the 2027-04-01 boundary + the 1 h "
             "usage grace window",
}

WEBHOOK_EXAMPLE: dict[str, Any] = {
    "event": "deal.closed_won", "id": "dlv_01J9Z6", "occurred_at": "2026-12-15T10:00:00Z",
    "deal": {"id": "D-4242", "contract_id": "acme-2027",
             **{k: v for k, v in CONTRACT_EXAMPLE.items() if k != "id"}},
}


# --- contracts -------------------------------------------------------------------


CONTRACT_CREATED_EXAMPLE: dict[str, Any] = {
    "contract_id": "acme-2027", "workflow_id": "contract:acme-2027",
    "run_id": "0199a6b5-7c1e-7f39-9d55-3f1f8c1b2a10", "created": True,
    "catalog_version": 1,
    "temporal_ui_url": "http://localhost:8233/namespaces/default/workflows/contract:acme-2027",
    "contract": CONTRACT_EXAMPLE,
    "next_close": NEXT_CLOSE_EXAMPLE,
}
# The 200 answer: the same contract existed, nothing changed.
CONTRACT_EXISTS_EXAMPLE: dict[str, Any] = {**CONTRACT_CREATED_EXAMPLE, "created": False}


class ContractCreated(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": CONTRACT_CREATED_EXAMPLE})
    contract_id: str
    workflow_id: str
    run_id: str | None = Field(description="None when the contract's workflow already closed.")
    created: bool = Field(description="False when the same contract already existed.")
    catalog_version: int = Field(description="The catalog version the contract is billed by.")
    temporal_ui_url: str
    contract: Contract
    next_close: NextClose | None = Field(default=None, description=NEXT_CLOSE_DESCRIPTION)


class InvoiceSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": INVOICE_SUMMARY_EXAMPLE})
    number: str | None = Field(description="Assigned at finalization; None while held.")
    key: str = Field(description="Business key: commitment:<date>, usage:<period start>, "
                                 "top_up:<date>.")
    contract_id: str
    kind: str
    status: str = Field(description="draft, open, paid, overdue, void or needs_attention.")
    currency: str
    period_start: date
    period_end: date
    issued_on: date | None
    due_on: date | None
    subtotal: DecimalStr
    credits_applied: DecimalStr
    total: DecimalStr
    amount_paid: DecimalStr
    credited: DecimalStr = Field(default=Decimal(0), description="Sum of its credit notes.")
    outstanding: DecimalStr
    paid_on: date | None


class ContractState(BaseModel):
    """A contract as it stands: live from its workflow, or from the database once ended."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "contract_id": "acme-2027", "customer_id": "acme", "plan": "pro", "status": "active",
        "source": "workflow", "workflow_id": "contract:acme-2027",
        "temporal_ui_url": "http://localhost:8233/namespaces/default/workflows/contract:acme-2027",
        "currency": "USD", "credit_balance": "99998.80",
        "next_boundary": "2027-07-01T00:00:00Z", "attention": None,
        "has_overdue_invoice": False, "terms": {"...": "the resolved contract terms"},
        "invoices": [INVOICE_SUMMARY_EXAMPLE], "amendments": ["crm-amend-0042"],
        "pending_amendments": [], "next_close": NEXT_CLOSE_EXAMPLE,
        "waiting_for": "sleep until 2027-04-01 boundary + 1 h usage grace, then close 2027-Q1",
    }})
    contract_id: str
    customer_id: str
    plan: str
    status: ContractStatus
    source: Literal["workflow", "database"] = Field(
        description="'workflow': the running workflow's `state` query; 'database': the "
                    "contract's workflow has closed (or did not answer), read from the ledger.")
    workflow_id: str
    temporal_ui_url: str
    currency: str
    credit_balance: DecimalStr
    next_boundary: datetime | None
    attention: str | None = Field(description="Why the contract needs attention, if it does.")
    has_overdue_invoice: bool
    terms: ContractTerms
    invoices: list[InvoiceSummary]
    amendments: list[str] = Field(description="Ids of the amendments applied or scheduled.")
    pending_amendments: list[str] = Field(description="Ids scheduled for a later instant.")
    dropped_amendments: list[DroppedAmendment] = Field(
        default_factory=list,
        description="Scheduled amendments that no longer applied when they fell due, with "
                    "the reason (docs/billing-rules.md, \"Amendments\").")
    unapplied_payments: list[UnappliedPayment] = Field(
        default_factory=list,
        description="Money a gateway took after its invoice was paid another way: kept "
                    "for ops to refund or apply.")
    next_close: NextClose | None = Field(default=None, description=NEXT_CLOSE_DESCRIPTION)
    waiting_for: str | None = Field(
        default=None,
        description="What the running workflow waits for now (its timer's label in the "
                    "Temporal UI); None while it works or once it has closed.")
    unbilled_usage_events: int = Field(
        default=0,
        description="Events inside an ended term that arrived after its final invoice: "
                    "recorded, never billed (docs/billing-rules.md, \"Rating\"). Counted "
                    "while the workflow still collects too.")
    commitment: CommitmentProgress | None = Field(
        default=None,
        description="Spend against the minimum commitment as of the last usage invoice: "
                    "`minimum`, `spend` (the term's so far, or the "
                    "period's), `shortfall` and the `true_up` that invoice billed.")
    commitment_text: str | None = Field(
        default=None, description="The same for people: 'spent 180,000.00 of 250,000.00 "
                                  "USD, 3 months left'.")


class DraftInvoice(InvoiceDocument):
    """The open period's invoice as it would be finalized now, not stored (minimum,
    maximum and true-up lines included)."""

    descriptions: list[str] = Field(
        default_factory=list, description="Each line in words, in order (as on invoices).")
    commitment: CommitmentProgress | None = Field(
        default=None,
        description="Spend to date against the minimum commitment in force for the "
                    "period, counting this draft (`true_up`: what it would bill now).")


class ContractSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "contract_id": "acme-2027", "customer_id": "acme", "customer_name": "Acme Corp",
        "plan": "pro", "status": "active", "currency": "USD", "starts_on": "2027-01-01",
        "term_end": "2028-01-01", "catalog_version": 1, "open_invoices": 1,
        "overdue_invoices": 0, "outstanding": "1500.00",
    }})
    contract_id: str
    customer_id: str
    customer_name: str
    plan: str
    status: str
    currency: str
    starts_on: date
    term_end: date
    catalog_version: int
    open_invoices: int = Field(description="Invoices open or overdue.")
    overdue_invoices: int
    outstanding: DecimalStr = Field(description="Unpaid total of open and overdue invoices.")


class ContractList(BaseModel):
    contracts: list[ContractSummary]
    next_after: str | None = Field(
        description="Pass as `after` to get the next page; None on the last page.")


class AmendmentAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "contract_id": "acme-2027", "amendment_id": "crm-amend-0042", "status": "applied",
        "effective": "2027-04-15T00:00:00Z",
    }})
    contract_id: str
    amendment_id: str
    status: str = Field(
        description="`applied` now, `scheduled` for its `effective` instant, or "
                    "`duplicate`: an amendment with this id was already taken. Resending the "
                    "same amendment returns the first answer and changes nothing.")
    effective: datetime | None


# --- usage -------------------------------------------------------------------------


class UsageBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"events": [
        {"id": "evt-0001", "customer": "acme", "meter": "tokens",
         "timestamp": "2027-01-20T08:00:00Z", "quantity": "2000",
         "dimensions": {"model": "gpt-3.5"}},
        {"id": "evt-0002", "customer": "acme", "meter": "requests",
         "timestamp": "2027-01-20T08:00:01Z", "dimensions": {"region": "eu"}},
    ]}})
    events: list[Any] = Field(
        description="Up to 10,000 usage events `{id, customer, meter, timestamp, quantity?, "
                    "dimensions?}` (docs/file-formats.md). Each is validated on its own: a bad "
                    "event is reported `rejected` with its reason and the rest are stored.",
        json_schema_extra={"maxItems": 10_000, "items": {"type": "object"}},
    )


class UsageResult(BaseModel):
    index: int = Field(description="Position of the event in the batch.")
    id: str | None
    status: Literal["accepted", "duplicate", "conflict", "rejected"]
    reason: str | None = None


class UsageReport(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "accepted": 1, "duplicate": 0, "conflict": 0, "rejected": 1,
        "results": [
            {"index": 0, "id": "evt-0001", "status": "accepted", "reason": None},
            {"index": 1, "id": "evt-0002", "status": "rejected",
             "reason": "timestamp: Input should have timezone info"},
        ],
    }})
    accepted: int
    duplicate: int
    conflict: int = Field(description="Events whose id is stored with other content.")
    rejected: int
    results: list[UsageResult]


# --- invoices ----------------------------------------------------------------------


class InvoiceList(BaseModel):
    invoices: list[InvoiceSummary]
    next_offset: int | None = Field(description="Pass as `offset` for the next page.")


class InvoicePeriodOut(BaseModel):
    start: date
    end: date


class InvoiceDetail(BaseModel):
    """The invoice document (as `billow simulate` prints it, docs/file-formats.md) plus
    where it stands."""

    model_config = ConfigDict(json_schema_extra={"example": {
        "number": "INV-000002", "key": "usage:2027-01-01", "contract_id": "acme-2027",
        "kind": "usage", "currency": "USD",
        "period": {"start": "2027-01-01", "end": "2027-04-01"},
        "issued_on": "2027-04-01", "due_on": "2027-05-16",
        "lines": [{"kind": "usage", "meter": "tokens", "dimensions": {"model": "gpt-4"},
                   "quantity": "1000000", "unit_price": "0.015", "amount": "15000.00"},
                  {"kind": "fee", "fee": "platform", "amount": "1500.00"}],
        "subtotal": "16500.00", "credits_applied": "15000.00", "total": "1500.00",
        "status": "open", "amount_paid": "0.00", "outstanding": "1500.00", "paid_on": None,
    }})
    number: str
    key: str
    contract_id: str
    kind: str
    currency: str
    period: InvoicePeriodOut
    issued_on: date | None
    due_on: date | None
    lines: list[dict[str, Any]]
    subtotal: DecimalStr
    credits_applied: DecimalStr
    total: DecimalStr
    status: str
    amount_paid: DecimalStr
    credited: DecimalStr = Field(default=Decimal(0), description="Sum of its credit notes.")
    outstanding: DecimalStr
    paid_on: date | None
    descriptions: list[str] = Field(
        default_factory=list,
        description="Each line in words, in order: the meter's or fee's name beside its key, "
                    "what a commitment or top-up sold.")


class PaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "amount": "1500.00", "payment_id": "wire-2027-05-20-acme"}})
    amount: BoundedPositive = Field(description="Amount received, in the invoice's currency.")
    payment_id: Id | None = Field(
        default=None,
        description="Idempotency key: sending the same payment_id again records nothing new "
                    "and returns the invoice as it stands.")


class PaymentOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "invoice_number": "INV-000002", "invoice_key": "usage:2027-01-01",
        "contract_id": "acme-2027", "currency": "USD", "status": "paid",
        "amount_paid": "1500.00",
        "paid_on": "2027-05-20", "applied": True, "recorded_via": "workflow"}})
    invoice_number: str
    invoice_key: str
    contract_id: str
    currency: str | None = None
    status: str
    amount_paid: DecimalStr
    paid_on: date | None
    applied: bool = Field(description="Whether this payment was recorded; a resend of the "
                          "same payment answers as the first time.")
    recorded_via: Literal["workflow", "ledger"] = Field(
        description="'workflow': the running contract's `pay` update; 'ledger': recorded "
                    "directly because the contract's workflow has closed.")


# --- catalog -----------------------------------------------------------------------


class CatalogApplied(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "version": 2, "created": True, "meters": ["tokens", "requests"], "plans": ["pro"]}})
    version: int
    created: bool = Field(description="False when an identical document was already applied "
                                      "(its version is returned).")
    meters: list[str]
    plans: list[str]


class CatalogVersionOut(BaseModel):
    version: int
    catalog: dict[str, Any]


# --- CRM webhook -----------------------------------------------------------------


class CrmDeal(Contract):
    """A closed-won deal: the contract fields (docs/file-formats.md), keyed by the deal.

    ``id`` is the CRM's deal id; the contract id is ``contract_id`` when given,
    else the deal id.
    """

    contract_id: Id | None = None

    def to_contract(self) -> Contract:
        data = self.model_dump(exclude={"contract_id"}, exclude_unset=True)
        data["id"] = self.contract_id or self.id
        return Contract.model_validate(data)


class CrmWebhookPayload(BaseModel):
    """``POST /v1/webhooks/crm`` body.

    ``event: deal.closed_won`` creates the deal's contract (idempotently);
    other events are acknowledged and ignored.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": WEBHOOK_EXAMPLE})
    event: str = Field(description="Event type; only `deal.closed_won` acts.")
    id: Id | None = Field(
        default=None, description="Delivery id (also accepted as header X-Billow-Delivery).")
    occurred_at: AwareDatetime | None = None
    deal: CrmDeal


class WebhookAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "status": "created", "event": "deal.closed_won", "contract_id": "acme-2027",
        "workflow_id": "contract:acme-2027",
        "temporal_ui_url": "http://localhost:8233/namespaces/default/workflows/contract:acme-2027",
    }})
    status: Literal["created", "exists", "ignored"]
    event: str
    contract_id: str | None = None
    workflow_id: str | None = None
    temporal_ui_url: str | None = None
