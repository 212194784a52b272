"""Events other systems hear about (SPEC.md section 13): types and envelopes.

Invariants:
- An event is written in the same transaction as the change it reports
  (activities/events.py); its ``data`` is the object as the API shows it
  then, never recomputed later.
- ``sequence`` orders all events of a deployment; a contract's events are in
  the order its changes committed. It is the cursor of ``GET /v1/events`` and
  of webhook delivery.
- The envelope is what a webhook receiver gets as the body, and what the list
  shows: ``{id, type, timestamp, sequence, contract_id, data}``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EventEnvelope", "EventType"]


class EventType(StrEnum):
    CONTRACT_CREATED = "contract.created"
    CONTRACT_ACTIVATED = "contract.activated"
    CONTRACT_AMENDED = "contract.amended"
    CONTRACT_NEEDS_ATTENTION = "contract.needs_attention"
    CONTRACT_ENDED = "contract.ended"
    INVOICE_FINALIZED = "invoice.finalized"
    INVOICE_PAID = "invoice.paid"
    INVOICE_OVERDUE = "invoice.overdue"
    INVOICE_VOIDED = "invoice.voided"
    CREDIT_NOTE_ISSUED = "credit_note.issued"
    PAYMENT_RECORDED = "payment.recorded"
    CREDITS_LOW = "credits.low"
    CREDITS_EXPIRED = "credits.expired"


class EventEnvelope(BaseModel):
    """One event as delivered and listed."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"example": {
        "id": "evt_3f1c2a9e0b7d4c5f8a6e1d2c3b4a5f60", "type": "invoice.paid",
        "timestamp": "2027-05-20T09:00:00Z", "sequence": 42, "contract_id": "acme-2027",
        "data": {"number": "INV-000002", "status": "paid", "total": "1500.00"}}})
    id: str = Field(description="Unique event id; the `webhook-id` header of its deliveries.")
    type: EventType
    timestamp: datetime = Field(description="When the change committed (the transaction).")
    sequence: int = Field(description="Order of all events; the cursor for `after`.")
    contract_id: str | None
    data: dict[str, Any] = Field(description="The object as the API showed it then.")
