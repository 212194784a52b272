"""Reads behind the finance exports: journal entries with their dates, the
credit ledger. Plain rows; the arithmetic is models/exports.py."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["journal_entries"]


async def journal_entries(
    conn: AsyncConnection, *, start: date | None = None, end: date | None = None,
    contract_id: str | None = None,
) -> list[dict[str, Any]]:
    """Entries booked from ``start`` to ``end`` (inclusive), in posting order, each
    with its lines and the contract's currency."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if start is not None:
        where.append("e.booked_on >= :start")
        params["start"] = start
    if end is not None:
        where.append("e.booked_on <= :end")
        params["end"] = end
    if contract_id is not None:
        where.append("e.contract_id = :cid")
        params["cid"] = contract_id
    rows = (await conn.execute(text(
        "SELECT e.id, e.entry_key, e.contract_id, c.currency, e.kind, e.invoice_key, "
        "e.grant_id, e.booked_on, l.position, l.account, l.debit, l.credit "
        "FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id "
        "JOIN contracts c ON c.id = e.contract_id "
        + ("WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY e.id, l.position"), params)).all()
    entries: dict[int, dict[str, Any]] = {}
    for r in rows:
        entry = entries.setdefault(r.id, {
            "id": r.id, "entry_key": r.entry_key.removeprefix(f"{r.contract_id}:"),
            "contract_id": r.contract_id, "currency": r.currency, "kind": r.kind,
            "invoice_key": r.invoice_key, "grant_id": r.grant_id, "booked_on": r.booked_on,
            "lines": []})
        entry["lines"].append({"account": r.account, "debit": r.debit, "credit": r.credit})
    return list(entries.values())
