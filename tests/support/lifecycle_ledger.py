"""The ledger after one random lifecycle: every row the checks judge.

The database is emptied before each example (`truncate_all`, what the
``db`` fixture of tests/conftest.py does), so every row read here belongs to
the example's one contract and customer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.ledger_reports import unbilled_usage

TABLES_KEPT = {"alembic_version", "invoice_number_series"}


async def truncate_all(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        rows = await conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        tables = [r[0] for r in rows if r[0] not in TABLES_KEPT]
        # Append-only triggers fire on DELETE, not TRUNCATE.
        await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        await conn.execute(text("UPDATE invoice_number_series SET next_value = 1"))


@dataclass
class LedgerSnapshot:
    contract: dict[str, Any] | None
    invoices: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    credit_ledger: list[dict[str, Any]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)  # entries with their lines
    events: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    series_next: int = 1
    unbilled_events: int = 0
    # Corrections (SPEC.md section 11): credit notes with their ``lines`` and
    # ``refund`` (the refunds row or None), the corrections' id records, and the
    # next value of the ``CN-`` series.
    credit_notes: list[dict[str, Any]] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)
    note_series_next: int = 1


def _rows(result: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


async def read_ledger(engine: AsyncEngine, contract_doc: dict[str, Any]) -> LedgerSnapshot:
    cid = str(contract_doc.get("id"))
    async with engine.connect() as conn:
        found = _rows(await conn.execute(
            text("SELECT id, customer_id, status, starts_on, term_end, terms FROM contracts "
                 "WHERE id = :cid"), {"cid": cid}))
        snap = LedgerSnapshot(contract=found[0] if found else None)
        snap.series_next = int(await conn.scalar(text(
            "SELECT next_value FROM invoice_number_series WHERE series = 'default'")) or 1)
        snap.note_series_next = int(await conn.scalar(text(
            "SELECT next_value FROM invoice_number_series WHERE series = 'credit_notes'")) or 1)
        if snap.contract is None:
            return snap
        p = {"cid": cid}
        snap.invoices = _rows(await conn.execute(
            text("SELECT * FROM invoices WHERE contract_id = :cid ORDER BY id"), p))
        snap.lines = _rows(await conn.execute(text(
            "SELECT l.*, i.key AS invoice_key FROM invoice_lines l JOIN invoices i "
            "ON i.id = l.invoice_id WHERE i.contract_id = :cid ORDER BY l.invoice_id, "
            "l.position"), p))
        snap.grants = _rows(await conn.execute(
            text("SELECT * FROM credit_grants WHERE contract_id = :cid ORDER BY id"), p))
        snap.credit_ledger = _rows(await conn.execute(
            text("SELECT * FROM credit_ledger WHERE contract_id = :cid ORDER BY id"), p))
        entries = _rows(await conn.execute(
            text("SELECT * FROM journal_entries WHERE contract_id = :cid ORDER BY id"), p))
        lines = _rows(await conn.execute(text(
            "SELECT l.* FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id "
            "WHERE e.contract_id = :cid ORDER BY l.entry_id, l.position"), p))
        by_entry: dict[int, list[dict[str, Any]]] = {}
        for ln in lines:
            by_entry.setdefault(ln["entry_id"], []).append(ln)
        snap.journal = [e | {"lines": by_entry.get(e["id"], [])} for e in entries]
        snap.events = _rows(await conn.execute(text(
            "SELECT event_id, meter, ts, quantity, dimensions, txid FROM usage_events "
            "WHERE customer_id = :cust ORDER BY ts, event_id"),
            {"cust": snap.contract["customer_id"]}))
        snap.payments = _rows(await conn.execute(
            text("SELECT * FROM payments WHERE contract_id = :cid ORDER BY id"), p))
        snap.unbilled_events = (await unbilled_usage(conn, cid)).events
        # Every note in the database (it is emptied per example): the series check
        # must see a note of no contract too.
        notes = _rows(await conn.execute(text("SELECT * FROM credit_notes ORDER BY id")))
        note_lines = _rows(await conn.execute(text(
            "SELECT * FROM credit_note_lines ORDER BY credit_note_id, position")))
        refunds = {r["credit_note_id"]: r for r in _rows(await conn.execute(
            text("SELECT * FROM refunds ORDER BY id")))}
        snap.credit_notes = [n | {"lines": [ln for ln in note_lines
                                            if ln["credit_note_id"] == n["id"]],
                                  "refund": refunds.get(n["id"])} for n in notes]
        snap.corrections = _rows(await conn.execute(text(
            "SELECT correction_id, kind, invoice_key, digest, result, created_at FROM corrections "
            "WHERE contract_id = :cid ORDER BY id"), p))
    return snap
