"""Ledger invariants that corrections must keep (SPEC.md section 11), read from PostgreSQL.

Per contract (`contract_problems`):
- every journal entry balances;
- for every invoice, ``outstanding = total - paid - credit_allocated`` is never
  below zero, and a ``paid`` invoice owes nothing;
- for every grant, granted = consumed + expired + balance (returned credits
  counted back), deferred revenue never below zero, and once a priced grant is
  used up, recognized + breakage = its amount paid;

per deployment (`series_problems`):
- invoice and credit note numbers are gapless.

Read-only. The tests (tests/support/correction_checks.py) and the chaos run
(bench/chaos/checks.py) both call these, so they check one rule book.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.ledger_store import load_credit_state, load_journal
from models.revenue import deferred_by_grant, recognized_by_grant

__all__ = ["contract_problems", "series_problems"]

# The numbered series: (table, column).
_SERIES = (("invoices", "number"), ("credit_notes", "number"))


async def contract_problems(conn: AsyncConnection, contract_id: str) -> list[str]:
    """What is wrong in one contract's ledger (empty: every invariant holds)."""
    out: list[str] = []
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
    return out


async def series_problems(conn: AsyncConnection) -> list[str]:
    """Gaps or duplicates in the invoice and credit note number series."""
    out: list[str] = []
    for table, column in _SERIES:
        numbers = [r[0] for r in (await conn.execute(text(
            f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")))]
        seq = sorted(int(n.rsplit("-", 1)[1]) for n in numbers)
        if seq != list(range(1, len(seq) + 1)):
            missing = sorted(set(range(1, len(seq) + 1)) - set(seq))[:8]
            out.append(f"{table} numbers not gapless ({len(seq)} issued, highest "
                       f"{seq[-1] if seq else 0}, e.g. missing {missing})")
    return out
