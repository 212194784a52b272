"""SQLModel tables: PostgreSQL is billow's source of truth for money.

Invariants the schema enforces (not just the code):
- every side effect has a business key with a UNIQUE constraint, so retries
  and replays collapse into one row (``INSERT ... ON CONFLICT DO NOTHING``);
- invoice numbers come from ``invoice_number_series`` inside the finalizing
  transaction: a row lock serialises finalizations and a rollback returns the
  number, so the series has no gaps and no reuse;
- ``credit_ledger``, ``journal_entries``/``journal_lines`` and
  ``catalog_versions`` are append-only (triggers in the migration refuse
  UPDATE and DELETE);
- ``usage_events.event_id`` is the primary key: an event id is stored once,
  forever.

These classes never cross a Temporal boundary; activities convert rows to the
pydantic models of ``models``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    Numeric,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def _now_column() -> Any:
    return Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )


def _numeric(nullable: bool = False) -> Any:
    # Unbounded NUMERIC keeps every digit the pricing produced; rounding is
    # done by models/ exactly where SPEC.md says, never by the column type.
    return Field(sa_type=Numeric(asdecimal=True), nullable=nullable)


def _jsonb(nullable: bool = False) -> Any:
    return Field(sa_type=JSONB, nullable=nullable)


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    id: str = Field(primary_key=True)
    name: str
    created_at: datetime = _now_column()


class CatalogVersion(SQLModel, table=True):
    """One applied catalog document. Contracts pin a version; versions never change."""

    __tablename__ = "catalog_versions"
    version: int = Field(primary_key=True)
    digest: str = Field(unique=True)
    document: dict[str, Any] = _jsonb()
    created_at: datetime = _now_column()


class CatalogMeter(SQLModel, table=True):
    """Meters of each catalog version, for ingestion's per-event validation."""

    __tablename__ = "catalog_meters"
    version: int = Field(primary_key=True, foreign_key="catalog_versions.version")
    key: str = Field(primary_key=True)
    aggregation: str
    group_by: list[str] = _jsonb()
    unique_by: str | None = None


class CatalogPlan(SQLModel, table=True):
    __tablename__ = "catalog_plans"
    version: int = Field(primary_key=True, foreign_key="catalog_versions.version")
    key: str = Field(primary_key=True)
    currency: str
    meters: list[str] = _jsonb()


class Contract(SQLModel, table=True):
    __tablename__ = "contracts"
    id: str = Field(primary_key=True)
    customer_id: str = Field(foreign_key="customers.id", index=True)
    plan_key: str
    catalog_version: int = Field(foreign_key="catalog_versions.version")
    currency: str
    starts_on: date
    term_end: date
    status: str = Field(index=True)
    # Digest of the contract as created: same id + same digest is a no-op,
    # same id + different digest is a conflict (SPEC.md section 10).
    terms_digest: str
    document: dict[str, Any] = _jsonb()
    terms: dict[str, Any] = _jsonb()
    created_at: datetime = _now_column()
    updated_at: datetime = _now_column()


class Amendment(SQLModel, table=True):
    __tablename__ = "amendments"
    __table_args__ = (UniqueConstraint("contract_id", "amendment_id"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    contract_id: str = Field(foreign_key="contracts.id")
    amendment_id: str
    kind: str
    effective: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    document: dict[str, Any] = _jsonb()
    applied_at: datetime = _now_column()


class UsageEvent(SQLModel, table=True):
    """Raw usage. Written set-based only (see activities/usage_ingest.py)."""

    __tablename__ = "usage_events"
    event_id: str = Field(primary_key=True)
    customer_id: str
    meter: str
    ts: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    quantity: Decimal = _numeric()
    dimensions: dict[str, str] = _jsonb()
    # Inserting transaction id (xid8 as bigint). Rating includes events whose
    # transaction precedes the usage watermark, which is safe against commit
    # reordering (activities/usage_query.py `read_watermark`; the trigger of
    # migration 0005_usage_ingest_lock marks every inserting transaction).
    txid: int = Field(
        sa_column=Column(
            BigInteger, nullable=False, server_default=text("(pg_current_xact_id()::text)::bigint")
        )
    )
    received_at: datetime = _now_column()


class UsageCompaction(SQLModel, table=True):
    """One run of the usage compactor (activities/usage_rollup.py).

    After run k, every event with ``txid < upto_txid`` and ``ts <
    folded_before`` is folded into exactly one rollup row of runs <= k.
    """

    __tablename__ = "usage_compactions"
    __table_args__ = (UniqueConstraint("upto_txid", "folded_before"),)
    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=False), primary_key=True)
    )
    from_txid: int = Field(sa_type=BigInteger)
    upto_txid: int = Field(sa_type=BigInteger)
    folded_from: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    folded_before: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    events: int = Field(sa_type=BigInteger)
    rollup_rows: int = Field(sa_type=BigInteger)
    created_at: datetime = _now_column()


class UsageRollup(SQLModel, table=True):
    """Events of one customer, UTC day, meter and exact dimensions, folded by one compaction.

    Carries what every aggregation needs: sum, count and max of quantities,
    the first instant (line order) and the latest event (``latest`` meters).
    Rating adds rollups of whole days to the raw events of partial days.
    """

    __tablename__ = "usage_rollups"
    __table_args__ = (
        Index("ix_usage_rollups_customer_meter_day", "customer_id", "meter", "day",
              "compaction_id"),
    )
    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=False), primary_key=True)
    )
    customer_id: str
    meter: str
    day: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    compaction_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("usage_compactions.id"), nullable=False)
    )
    dimensions: dict[str, str] = _jsonb()
    quantity_sum: Decimal = _numeric()
    event_count: int = Field(sa_type=BigInteger)
    quantity_max: Decimal = _numeric()
    first_ts: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_ts: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_event_id: str
    last_quantity: Decimal = _numeric()


class InvoiceNumberSeries(SQLModel, table=True):
    __tablename__ = "invoice_number_series"
    series: str = Field(primary_key=True)
    prefix: str
    next_value: int = Field(sa_type=BigInteger)


class Invoice(SQLModel, table=True):
    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("contract_id", "key"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    contract_id: str = Field(foreign_key="contracts.id")
    key: str
    number: str | None = Field(default=None, unique=True)
    kind: str
    status: str = Field(index=True)
    currency: str
    period_start: date
    period_end: date
    # A usage invoice's full billing-cycle period (migration 0010): NULL before it.
    full_period_start: date | None = None
    full_period_end: date | None = None
    issued_on: date | None = None
    due_on: date | None = None
    subtotal: Decimal = _numeric()
    credits_applied: Decimal = _numeric()
    total: Decimal = _numeric()
    amount_paid: Decimal = _numeric()
    paid_on: date | None = None
    attention_reason: str | None = None
    usage_watermark: int | None = Field(default=None, sa_type=BigInteger)
    # Corrections (SPEC.md section 11): the sum of the invoice's credit notes,
    # what they took off the amount owed, when it was voided, and (on a
    # reissue) the key of the voided invoice it replaces.
    credited: Decimal = Field(sa_type=Numeric(asdecimal=True), nullable=False,
                              sa_column_kwargs={"server_default": "0"})
    credit_allocated: Decimal = Field(sa_type=Numeric(asdecimal=True), nullable=False,
                                      sa_column_kwargs={"server_default": "0"})
    voided_on: date | None = None
    reissue_of: str | None = None
    created_at: datetime = _now_column()
    finalized_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class InvoiceLine(SQLModel, table=True):
    __tablename__ = "invoice_lines"
    invoice_id: int = Field(sa_type=BigInteger, primary_key=True, foreign_key="invoices.id")
    position: int = Field(primary_key=True)
    kind: str
    meter: str | None = None
    fee: str | None = None
    dimensions: dict[str, str] | None = _jsonb(nullable=True)
    quantity: Decimal | None = _numeric(nullable=True)
    unit_price: Decimal | None = _numeric(nullable=True)
    amount: Decimal = _numeric()
    line_period_start: date | None = None
    line_period_end: date | None = None
    document: dict[str, Any] = _jsonb()


class CreditGrant(SQLModel, table=True):
    __tablename__ = "credit_grants"
    __table_args__ = (UniqueConstraint("contract_id", "grant_id"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    contract_id: str = Field(foreign_key="contracts.id")
    grant_id: str
    credits: Decimal = _numeric()
    price: Decimal = _numeric()
    priority: int
    effective: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    invoice_key: str | None = None
    created_at: datetime = _now_column()


class CreditLedgerEntry(SQLModel, table=True):
    """Append-only movements of credits: grant (+), consume (-), expire (-)."""

    __tablename__ = "credit_ledger"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    entry_key: str = Field(unique=True)
    contract_id: str = Field(foreign_key="contracts.id", index=True)
    grant_id: str
    kind: str
    amount: Decimal = _numeric()
    invoice_key: str | None = None
    # On a ``revoke`` row: how much the grant's amount paid falls with it.
    price_amount: Decimal | None = _numeric(nullable=True)
    created_at: datetime = _now_column()


class Payment(SQLModel, table=True):
    """One payment; its id is unique within its contract (SPEC 10)."""

    __tablename__ = "payments"
    __table_args__ = (
        UniqueConstraint("contract_id", "payment_key", name="uq_payments_contract_payment_key"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    payment_key: str
    contract_id: str = Field(foreign_key="contracts.id")
    invoice_id: int = Field(sa_type=BigInteger, foreign_key="invoices.id", index=True)
    amount: Decimal = _numeric()
    received_on: date
    method: str
    gateway_ref: str | None = None
    # The invoice as this payment left it: what a resend answers (NULL for
    # payments recorded before migration 0006_payment_keys_per_contract).
    result_status: str | None = None
    result_amount_paid: Decimal | None = _numeric(nullable=True)
    result_paid_on: date | None = None
    created_at: datetime = _now_column()


class UnappliedPayment(SQLModel, table=True):
    """Money a gateway took that its invoice refused (paid another way meanwhile)."""

    __tablename__ = "unapplied_payments"
    __table_args__ = (
        UniqueConstraint("contract_id", "payment_key", name="uq_unapplied_payments_contract_key"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    contract_id: str = Field(foreign_key="contracts.id")
    payment_key: str
    invoice_key: str
    amount: Decimal = _numeric()
    received_on: date
    method: str
    gateway_ref: str | None = None
    reason: str
    created_at: datetime = _now_column()


class JournalEntry(SQLModel, table=True):
    __tablename__ = "journal_entries"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    entry_key: str = Field(unique=True)
    contract_id: str = Field(foreign_key="contracts.id", index=True)
    kind: str
    invoice_key: str | None = None
    # Set for movements of a grant's deferred revenue (recognition, breakage).
    grant_id: str | None = None
    booked_on: date
    created_at: datetime = _now_column()


class JournalLine(SQLModel, table=True):
    __tablename__ = "journal_lines"
    entry_id: int = Field(sa_type=BigInteger, primary_key=True, foreign_key="journal_entries.id")
    position: int = Field(primary_key=True)
    account: str
    debit: Decimal = _numeric()
    credit: Decimal = _numeric()
    # The grant whose deferred revenue the line moves, when its entry moves
    # several grants' (a void's reversal); else the entry's ``grant_id``.
    grant_id: str | None = None


class Correction(SQLModel, table=True):
    """A void, reissue or credit: idempotent on its id (one id space for the three)."""

    __tablename__ = "corrections"
    __table_args__ = (
        UniqueConstraint("contract_id", "correction_id", name="uq_corrections_contract_id"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    contract_id: str = Field(foreign_key="contracts.id")
    correction_id: str
    kind: str
    invoice_key: str
    digest: str
    document: dict[str, Any] = _jsonb()
    result: dict[str, Any] = _jsonb()
    created_at: datetime = _now_column()


class CreditNote(SQLModel, table=True):
    """A credit note against a finalized invoice, numbered in the ``CN-`` series."""

    __tablename__ = "credit_notes"
    __table_args__ = (
        UniqueConstraint("contract_id", "correction_id", name="uq_credit_notes_contract_id"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    contract_id: str = Field(foreign_key="contracts.id")
    correction_id: str
    number: str | None = Field(default=None, unique=True)
    invoice_id: int = Field(sa_type=BigInteger, foreign_key="invoices.id", index=True)
    invoice_key: str
    currency: str
    issued_on: date
    reason: str
    total: Decimal = _numeric()
    credits_returned: Decimal = _numeric()
    outstanding_reduced: Decimal = _numeric()
    refunded: Decimal = _numeric()
    customer_credit: Decimal = _numeric()
    automatic: bool = Field(default=False, sa_column_kwargs={"server_default": "false"})
    created_at: datetime = _now_column()


class CreditNoteLine(SQLModel, table=True):
    __tablename__ = "credit_note_lines"
    credit_note_id: int = Field(sa_type=BigInteger, primary_key=True,
                                foreign_key="credit_notes.id")
    position: int = Field(primary_key=True)
    invoice_line: int  # 1-based position on the invoice
    kind: str
    amount: Decimal = _numeric()
    quantity: Decimal | None = _numeric(nullable=True)  # automatic notes: taken back


class Refund(SQLModel, table=True):
    """Money paid back through the payment gateway; idempotent on its key."""

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("contract_id", "refund_key", name="uq_refunds_contract_key"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    contract_id: str = Field(foreign_key="contracts.id")
    refund_key: str
    credit_note_id: int = Field(sa_type=BigInteger, foreign_key="credit_notes.id")
    amount: Decimal = _numeric()
    currency: str
    status: str
    method: str | None = None
    gateway_ref: str | None = None
    refunded_on: date | None = None
    created_at: datetime = _now_column()


class DunningEvent(SQLModel, table=True):
    __tablename__ = "dunning_events"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    event_key: str = Field(unique=True)
    contract_id: str = Field(foreign_key="contracts.id")
    invoice_key: str
    kind: str
    occurred_on: date
    created_at: datetime = _now_column()


class ApiKey(SQLModel, table=True):
    """An API key: only the SHA-256 of its secret is stored (the key is shown once).

    A key reads ``bk_<key_id>_<secret>``; ``key_id`` finds the row, the secret's
    hash proves possession. Revoked keys keep their row (``revoked_at`` set).
    """

    __tablename__ = "api_keys"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    key_id: str = Field(unique=True)
    secret_hash: str
    name: str
    scopes: list[str] = _jsonb()
    created_at: datetime = _now_column()
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class WebhookDelivery(SQLModel, table=True):
    """A signed webhook delivery accepted once: a replay hits a unique constraint."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("source", "signature"),
        UniqueConstraint("source", "delivery_id"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    source: str
    signature: str
    delivery_id: str | None = None
    event: str
    signed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    contract_id: str | None = None
    received_at: datetime = _now_column()


class IdempotencyKey(SQLModel, table=True):
    """The first outcome of a mutating API request sent with an ``Idempotency-Key``.

    Scoped to the API key (``principal``) and the route (method and path): a
    retry with the same key and request answers with the stored response; the
    same key with another request is a conflict. While the first request runs,
    ``claim_token`` holds it (until ``claimed_until``, after which a retry may
    take over: the API process may have died). Only known outcomes are stored
    (``status``); an unknown one (503/504) releases the claim and the retry
    runs the request again, which the request's business ids make safe.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("principal", "route", "key"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    principal: str
    route: str
    key: str
    request_hash: str
    claim_token: str | None = None
    claimed_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    status: int | None = None
    content_type: str | None = None
    response_body: bytes | None = Field(default=None, sa_type=LargeBinary)
    created_at: datetime = _now_column()
    completed_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class EventOutbox(SQLModel, table=True):
    """Events, written in the ledger change's transaction (activities/events.py).

    ``seq`` is assigned after commit by the sequencer, in commit order: the
    cursor of ``GET /v1/events`` and of webhook delivery.
    """

    __tablename__ = "event_outbox"
    __table_args__ = (
        UniqueConstraint("event_id", name="uq_event_outbox_event_id"),
        UniqueConstraint("seq", name="uq_event_outbox_seq"),
        Index("ix_event_outbox_contract", "contract_id", "seq"),
    )
    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=False), primary_key=True)
    )
    event_id: str
    seq: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    type: str
    contract_id: str | None = None
    occurred_at: datetime = _now_column()
    payload: dict[str, Any] = _jsonb()


class WebhookEndpoint(SQLModel, table=True):
    """A receiver of events; its workflow delivers everything after ``cursor_seq``.

    ``secret`` signs the deliveries (Standard Webhooks secrets are symmetric);
    the API shows it once, at creation.
    """

    __tablename__ = "webhook_endpoints"
    id: str = Field(primary_key=True)
    url: str
    description: str = Field(sa_column=Column(String, nullable=False, server_default=""))
    event_types: list[str] = _jsonb()
    secret: str
    status: str
    cursor_seq: int = Field(sa_type=BigInteger)
    delivered: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    last_attempt_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    last_error: str | None = None
    failing_since: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    disabled_reason: str | None = None
    created_at: datetime = _now_column()
