"""Reads behind the finance exports: journal entries with their dates, the
credit ledger. Plain rows; the arithmetic is models/exports.py."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.money import plain

__all__ = ["credit_ledger", "journal_entries"]


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


async def credit_ledger(conn: AsyncConnection, contract_id: str) -> dict[str, Any]:
    """A contract's credit grants and every movement of them (grants, consumption
    per invoice, expiries), oldest first."""
    grants = (await conn.execute(text(
        """
        SELECT g.grant_id, g.credits, g.price, g.priority, g.effective, g.expires,
               g.invoice_key,
               coalesce(sum(-l.amount) FILTER (WHERE l.kind = 'consume'), 0) AS consumed,
               coalesce(sum(-l.amount) FILTER (WHERE l.kind = 'expire'), 0) AS expired
        FROM credit_grants g LEFT JOIN credit_ledger l
          ON l.contract_id = g.contract_id AND l.grant_id = g.grant_id
        WHERE g.contract_id = :cid GROUP BY g.id ORDER BY g.id
        """), {"cid": contract_id})).all()
    moves = (await conn.execute(text(
        "SELECT id, grant_id, kind, amount, invoice_key, created_at FROM credit_ledger "
        "WHERE contract_id = :cid ORDER BY id"), {"cid": contract_id})).all()
    breakage: dict[str, Decimal] = {r[0]: r[1] for r in (await conn.execute(text(
        "SELECT e.grant_id, sum(l.debit) FROM journal_entries e JOIN journal_lines l "
        "ON l.entry_id = e.id WHERE e.contract_id = :cid AND e.kind = 'breakage' "
        "AND l.account = 'deferred_revenue' GROUP BY e.grant_id"),
        {"cid": contract_id})).all()}
    return {
        "grants": [{
            "grant_id": g.grant_id, "credits": plain(g.credits), "price": plain(g.price),
            "priority": g.priority, "effective": g.effective, "expires": g.expires,
            "invoice_key": g.invoice_key, "consumed": plain(g.consumed),
            "expired": plain(g.expired),
            "balance": plain(g.credits - g.consumed - g.expired),
            "breakage_revenue": plain(breakage.get(g.grant_id) or Decimal(0)),
        } for g in grants],
        "movements": [{
            "id": m.id, "grant_id": m.grant_id, "kind": m.kind, "amount": plain(m.amount),
            "invoice_key": m.invoice_key, "at": m.created_at,
        } for m in moves],
    }
