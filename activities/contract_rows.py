"""The contract's rows: registered idempotently on its id (by the API before the
workflow starts, and by the workflow's first step), and its status and terms
saved when they change, with the status events."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.events import emit_contract_event
from activities.invoice_store import open_draft
from models.events import EventType
from models.operations import (
    RegisterContractRequest,
    UpdateContractRequest,
)
from models.periods import billing_periods


async def register_contract_rows(conn: AsyncConnection, req: RegisterContractRequest) -> None:
    """Insert the customer and the contract if absent (idempotent on their ids).

    Called by the API before it starts the workflow (so usage is accepted at
    once) and by the workflow's first activity (so a workflow started any
    other way is registered too).
    """
    t = req.terms
    await conn.execute(
        text("INSERT INTO customers (id, name) VALUES (:id, :name) ON CONFLICT (id) DO NOTHING"),
        {"id": t.customer.id, "name": t.customer.name},
    )
    created = await conn.scalar(
        text(
            """
            INSERT INTO contracts (id, customer_id, plan_key, catalog_version, currency,
                starts_on, term_end, status, terms_digest, document, terms)
            VALUES (:id, :cust, :plan, :ver, :cur, :starts, :end, 'scheduled', :digest,
                CAST(:doc AS jsonb), CAST(:terms AS jsonb))
            ON CONFLICT (id) DO NOTHING RETURNING id
            """
        ),
        {
            "id": t.contract_id,
            "cust": t.customer.id,
            "plan": t.plan_key,
            "ver": req.catalog_version,
            "cur": t.currency,
            "starts": t.starts_on,
            "end": t.term_end,
            "digest": req.terms_digest,
            "doc": req.contract.model_dump_json(),
            "terms": t.model_dump_json(),
        },
    )
    if created is not None:
        await emit_contract_event(conn, EventType.CONTRACT_CREATED, t.contract_id)
    periods = billing_periods(t.starts_on, t.term_end, t.billing_cycle, t.billing_anchor,
                              t.timezone, cycle_anchor=t.cycle_anchor)
    if periods:
        await open_draft(conn, t, periods[0])


async def save_contract_row(conn: AsyncConnection, req: UpdateContractRequest) -> None:
    """The contract's status and terms in force, for queries after it ends.

    A change of status is an event (contract.activated, .needs_attention,
    .ended), written here, where the status changes: a retry finds the status
    already saved and writes none.
    """
    before = await conn.scalar(
        text("SELECT status FROM contracts WHERE id = :id FOR UPDATE"), {"id": req.contract_id}
    )
    await conn.execute(
        text(
            "UPDATE contracts SET status = :status, terms = CAST(:terms AS jsonb), "
            "term_end = :end, updated_at = now() WHERE id = :id"
        ),
        {
            "status": req.status.value,
            "terms": req.terms.model_dump_json(),
            "end": req.terms.term_end,
            "id": req.contract_id,
        },
    )
    event = _status_event(before, req.status.value)
    if event is not None:
        await emit_contract_event(conn, event, req.contract_id)


def _status_event(before: str | None, after: str) -> EventType | None:
    if before is None or before == after:
        return None
    if after == "active" and before == "scheduled":
        return EventType.CONTRACT_ACTIVATED
    if after == "needs_attention":
        return EventType.CONTRACT_NEEDS_ATTENTION
    if after in ("ended", "terminated"):
        return EventType.CONTRACT_ENDED
    return None
