"""Ledger invariants that corrections must keep (issue 14), read from PostgreSQL.

- every journal entry balances;
- for every invoice, ``outstanding = total - paid - credit_allocated`` is never
  below zero (0 once void);
- for every grant, granted = consumed + expired + balance (returned credits
  counted back), deferred revenue never below zero, and
  recognized + breakage = amount paid for it;
- invoice and credit note numbers are gapless.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.ledger_store import load_credit_state, load_journal
from models.revenue import deferred_by_grant, recognized_by_grant


async def ledger_problems(engine: AsyncEngine, contract_id: str) -> list[str]:
    out: list[str] = []
    async with engine.connect() as conn:
        unbalanced = (await conn.execute(text(
            """
            SELECT e.entry_key, sum(l.debit) AS dr, sum(l.credit) AS cr
            FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id
            WHERE e.contract_id = :cid GROUP BY e.id, e.entry_key
            HAVING sum(l.debit) <> sum(l.credit)
            """), {"cid": contract_id})).all()
        out += [f"entry {r.entry_key} unbalanced: {r.dr} != {r.cr}" for r in unbalanced]
        invoices = (await conn.execute(text(
            "SELECT key, status, total, amount_paid, credit_allocated FROM invoices "
            "WHERE contract_id = :cid AND number IS NOT NULL"), {"cid": contract_id})).all()
        for inv in invoices:
            owed = inv.total - inv.amount_paid - inv.credit_allocated
            if owed < 0:
                out.append(f"{inv.key}: outstanding {owed} below zero")
            if inv.status == "paid" and owed != 0:
                out.append(f"{inv.key}: paid with {owed} outstanding")
        state = await load_credit_state(conn, contract_id)
        journal = await load_journal(conn, contract_id)
        deferred = deferred_by_grant(journal)
        recognized = recognized_by_grant(journal)
        for grant, balance in zip(state.grants, state.balances, strict=True):
            if balance.granted != balance.consumed + balance.expired + balance.remaining:
                out.append(f"grant {grant.id}: identity broken {balance}")
            if deferred.get(grant.id, Decimal(0)) < 0:
                out.append(f"grant {grant.id}: deferred {deferred[grant.id]} below zero")
            if grant.price > 0 and balance.remaining == 0:
                got = recognized.get(grant.id, Decimal(0))
                if got != grant.price:
                    out.append(f"grant {grant.id}: recognized + breakage {got} != paid "
                               f"{grant.price}")
        for table, column in (("invoices", "number"), ("credit_notes", "number")):
            numbers = [r[0] for r in (await conn.execute(text(
                f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")))]
            seq = sorted(int(n.rsplit("-", 1)[1]) for n in numbers)
            if seq != list(range(1, len(seq) + 1)):
                out.append(f"{table} numbers not gapless: {seq}")
    return out


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())
