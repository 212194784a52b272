"""Ledger invariants that corrections must keep (issue 14), read from PostgreSQL.

The rules live in `activities.ledger_invariants` (the chaos run checks them
too); this is the tests' one-call form per contract:

- every journal entry balances;
- for every invoice, ``outstanding = total - paid - credit_allocated`` is never
  below zero (0 once void);
- for every grant, granted = consumed + expired + balance (returned credits
  counted back), deferred revenue never below zero, and
  recognized + breakage = amount paid for it;
- invoice and credit note numbers are gapless.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.ledger_invariants import contract_problems, series_problems


async def ledger_problems(engine: AsyncEngine, contract_id: str) -> list[str]:
    async with engine.connect() as conn:
        return await contract_problems(conn, contract_id) + await series_problems(conn)


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())
