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

__all__ = [
    "DeliverEventsRequest",
    "DeliverEventsResult",
    "DeliveryOptions",
    "DisableEndpointRequest",
    "EndpointDeliveryInput",
    "EventEnvelope",
    "EventType",
    "WaitForEventsRequest",
    "WaitForEventsResult",
    "check_filter",
    "matches",
]


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


# --- webhook delivery (activities/webhook_delivery.py, workflows/webhook_delivery.py) ---

_REQ = ConfigDict(extra="forbid", frozen=True)


class DeliveryOptions(BaseModel):
    """How an endpoint is delivered: at least once, retried with exponential
    backoff for ``give_up_after_seconds`` (three days), then disabled."""

    model_config = _REQ
    initial_retry_seconds: float = 5.0
    max_retry_seconds: float = 3600.0
    give_up_after_seconds: float = 3 * 24 * 3600.0
    poll_seconds: float = 1.0  # how often an idle endpoint looks for new events
    max_wait_seconds: float = 300.0  # one idle wait (then the workflow loops)
    request_timeout_seconds: float = 10.0
    batch: int = 100


class EndpointDeliveryInput(BaseModel):
    model_config = _REQ
    endpoint_id: str
    options: DeliveryOptions = Field(default_factory=DeliveryOptions)


class WaitForEventsRequest(BaseModel):
    model_config = _REQ
    endpoint_id: str
    poll_seconds: float
    max_wait_seconds: float


class WaitForEventsResult(BaseModel):
    model_config = _REQ
    status: str  # the endpoint's: enabled, disabled, deleted (or missing)
    pending: bool


class DeliverEventsRequest(BaseModel):
    model_config = _REQ
    endpoint_id: str
    batch: int
    request_timeout_seconds: float


class DeliverEventsResult(BaseModel):
    model_config = _REQ
    delivered: int
    cursor: int


class DisableEndpointRequest(BaseModel):
    model_config = _REQ
    endpoint_id: str
    reason: str


def matches(event_type: str, filters: list[str]) -> bool:
    """An endpoint's filter: empty or ``*`` takes all; ``invoice.*`` a family."""
    if not filters:
        return True
    return any(f == "*" or f == event_type or (f.endswith(".*") and
               event_type.startswith(f[:-1])) for f in filters)


def check_filter(value: str) -> str:
    """A valid event-type filter (an exact type, ``family.*`` or ``*``) or ValueError."""
    if value == "*" or value in {t.value for t in EventType}:
        return value
    if value.endswith(".*") and any(t.value.startswith(value[:-1]) for t in EventType):
        return value
    raise ValueError(f"unknown event type {value!r} (known: "
                     f"{', '.join(t.value for t in EventType)}; or 'invoice.*', '*')")
