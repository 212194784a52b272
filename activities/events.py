"""The events outbox: written with the ledger change, sequenced after commit.

Every function that writes takes the caller's open connection: an event is
inserted in the same transaction as the change it reports, so it exists if
and only if the change committed (a rolled-back close leaves no phantom
event, a committed one can never lose its event).

Ordering. ``id`` is allocated at insert, but transactions commit in another
order, so ``id`` alone is not a safe cursor. `sequence_events` gives every
committed event a ``seq``, one sequencer at a time (a transaction-level
advisory lock), in ``id`` order over the rows its snapshot sees. A row that
commits later gets a later ``seq``: a reader that has seen ``seq <= n`` never
misses an event below ``n``. A contract's events are written under its row
lock, so their ``id`` order is their commit order, and any snapshot that sees
a later one sees the earlier ones too: ``seq`` keeps each contract's order.

For other code (the corrections of issue #14): call `emit_invoice_event`
with ``EventType.INVOICE_VOIDED`` inside the transaction that voids, and
`emit_event` with ``EventType.CREDIT_NOTE_ISSUED`` and the note as the API
shows it inside the one that issues a note.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.ledger_reports import invoice_detail_json
from models.events import EventEnvelope, EventType
from models.money import plain

__all__ = [
    "contract_json",
    "emit_contract_event",
    "emit_event",
    "emit_invoice_event",
    "list_events",
    "sequence_events",
]

# pg advisory lock key of the sequencer ("evt_seq").
SEQUENCER_LOCK_KEY = 0x6576745F736571


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "as_tuple"):  # Decimal
        return plain(value)
    return value


async def emit_event(
    conn: AsyncConnection, type: EventType, contract_id: str | None, data: dict[str, Any]
) -> int:
    """Insert one event in the caller's transaction; returns its outbox row id."""
    row_id = await conn.scalar(
        text(
            "INSERT INTO event_outbox (event_id, type, contract_id, occurred_at, payload) "
            "VALUES (:eid, :type, :cid, now(), CAST(:data AS jsonb)) RETURNING id"
        ),
        {"eid": f"evt_{uuid.uuid4().hex}", "type": type.value, "cid": contract_id,
         "data": json.dumps(_jsonable(data))},
    )
    assert row_id is not None
    return int(row_id)


async def emit_invoice_event(
    conn: AsyncConnection, type: EventType, contract_id: str, invoice_key: str
) -> int:
    """An invoice event whose ``data`` is the invoice as ``GET /v1/invoices/{number}``
    shows it now (call it after the change, inside its transaction)."""
    data = await invoice_detail_json(conn, contract_id, invoice_key)
    if data is None:
        raise LookupError(f"invoice {invoice_key!r} of contract {contract_id!r} not found")
    return await emit_event(conn, type, contract_id, data)


async def contract_json(conn: AsyncConnection, contract_id: str) -> dict[str, Any]:
    """A contract as its events show it: identity, status and term."""
    row = (
        await conn.execute(
            text("SELECT id, customer_id, plan_key, catalog_version, currency, starts_on, "
                 "term_end, status, terms FROM contracts WHERE id = :id"),
            {"id": contract_id},
        )
    ).one()
    terms = row.terms or {}
    return {
        "contract_id": row.id, "customer": terms.get("customer", {"id": row.customer_id}),
        "plan": row.plan_key, "catalog_version": row.catalog_version, "status": row.status,
        "currency": row.currency, "starts_on": row.starts_on, "term_end": row.term_end,
        "billing_cycle": terms.get("billing_cycle"),
        "payment_terms_days": terms.get("payment_terms_days"),
    }


async def emit_contract_event(
    conn: AsyncConnection, type: EventType, contract_id: str, **extra: Any
) -> int:
    data = await contract_json(conn, contract_id)
    return await emit_event(conn, type, contract_id, {**data, **extra})


async def sequence_events(conn: AsyncConnection, *, wait: bool = False) -> int:
    """Give committed events their ``seq`` (in the caller's transaction; commit it).

    Without ``wait`` it skips (returns 0) while another sequencer holds the
    lock: that one is doing the same work, and a delivery's next look finds
    the result. A reader that must see everything committed before it asked
    (``GET /v1/events`` right after a payment was recorded) waits for that
    sequencer instead: its numbers are committed when the lock is released,
    and this statement's snapshot, taken after, sees them.
    """
    if wait:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SEQUENCER_LOCK_KEY})
    else:
        locked = await conn.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                   {"k": SEQUENCER_LOCK_KEY})
        if not locked:
            return 0
    result = await conn.execute(
        text(
            """
            WITH base AS (SELECT coalesce(max(seq), 0) AS top FROM event_outbox),
            todo AS (
                SELECT id, row_number() OVER (ORDER BY id) AS n
                FROM event_outbox WHERE seq IS NULL
            )
            UPDATE event_outbox e SET seq = base.top + todo.n
            FROM todo, base WHERE e.id = todo.id
            """
        )
    )
    return int(result.rowcount or 0)


def envelope(row: Any) -> EventEnvelope:
    return EventEnvelope(id=row.event_id, type=EventType(row.type), timestamp=row.occurred_at,
                         sequence=row.seq, contract_id=row.contract_id, data=row.payload)


async def list_events(
    conn: AsyncConnection,
    *,
    after: int = 0,
    types: Sequence[str] = (),
    contract_id: str | None = None,
    limit: int = 100,
) -> list[EventEnvelope]:
    """Sequenced events with ``seq > after``, in order (types: exact names, or
    ``invoice.*`` for a family)."""
    where = ["seq IS NOT NULL", "seq > :after"]
    params: dict[str, Any] = {"after": after, "limit": limit}
    if types:
        exact = [t for t in types if not t.endswith(".*")]
        families = [t.removesuffix("*") for t in types if t.endswith(".*")]
        clauses = []
        if exact:
            clauses.append("type = ANY(:types)")
            params["types"] = exact
        for i, prefix in enumerate(families):
            clauses.append(f"starts_with(type, :family{i})")
            params[f"family{i}"] = prefix
        where.append("(" + " OR ".join(clauses) + ")")
    if contract_id is not None:
        where.append("contract_id = :cid")
        params["cid"] = contract_id
    rows = (
        await conn.execute(
            text(f"SELECT * FROM event_outbox WHERE {' AND '.join(where)} "
                 "ORDER BY seq LIMIT :limit"),
            params,
        )
    ).all()
    return [envelope(r) for r in rows]


async def event_seq(conn: AsyncConnection, event_id: str) -> int | None:
    """The ``seq`` of an event id (``evt_...``), None if unknown or not sequenced yet."""
    found = await conn.scalar(text("SELECT seq FROM event_outbox WHERE event_id = :e"),
                              {"e": event_id})
    return None if found is None else int(found)
