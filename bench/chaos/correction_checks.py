"""Corrections in one run's ledger (issue 14): recorded exactly once, and the rules kept.

* every correction the client was told took effect is recorded once, with the
  content it was sent with (a resend of its id with other content changed
  nothing); nothing the client was refused, or skipped, is recorded;
* every credit note it was told about exists once, and its refund (when it
  refunds) exists once, paid back, for the refunded amount;
* no credit note the client did not ask for (the workload has no meter whose
  late usage can fall, so no automatic note is due);
* the ledger invariants of SPEC.md section 11 (`activities.ledger_invariants`)
  for every contract, and both number series gapless.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.ledger_invariants import contract_problems, series_problems
from bench.chaos.driver import RunRecord
from bench.chaos.workload import Workload

_MAX = 50


async def _rows(conn: AsyncConnection, sql: str) -> list[Any]:
    return list((await conn.execute(text(sql))).all())


async def corrections_recorded(conn: AsyncConnection, record: RunRecord) -> list[str]:
    out: list[str] = []
    applied = {(c.contract_id, c.correction_id): c for c in record.corrections if c.applied}
    rows = await _rows(conn, "SELECT contract_id, correction_id, kind, invoice_key, document "
                             "FROM corrections")
    got = Counter((r.contract_id, r.correction_id) for r in rows)
    for key in sorted(set(got) | set(applied)):
        if got[key] != (1 if key in applied else 0):
            told = "told it applied" if key in applied else "never told it applied"
            out.append(f"{key[0]} correction {key[1]}: recorded {got[key]} times, {told}")
    for r in rows:
        sent = applied.get((r.contract_id, r.correction_id))
        if sent is None or sent.body is None:
            continue
        doc = r.document or {}
        if (r.kind, r.invoice_key) != (sent.action, sent.invoice_key) or any(
                _differs(doc.get(k), v) for k, v in sent.body.items()):
            out.append(f"{r.contract_id} correction {r.correction_id}: recorded {doc}, "
                       f"sent {sent.action} {sent.invoice_key} {sent.body}")
    notes = await _rows(
        conn, "SELECT n.contract_id, n.correction_id, n.refunded, n.automatic, "
        "count(r.id) AS refunds, coalesce(sum(r.amount), 0) AS refund_amount, "
        "bool_and(r.status = 'refunded') AS paid_back FROM credit_notes n "
        "LEFT JOIN refunds r ON r.credit_note_id = n.id GROUP BY n.id")
    credits = {k for k, c in applied.items() if c.action == "credit"}
    seen = Counter((n.contract_id, n.correction_id) for n in notes)
    for key in sorted(credits - set(seen)):
        out.append(f"{key[0]} credit note {key[1]}: told it was issued, not in the ledger")
    for n in notes:
        key = (n.contract_id, n.correction_id)
        if key not in credits:
            out.append(f"{key[0]} credit note {key[1]} ({'automatic' if n.automatic else 'sent'})"
                       ": not asked for by the client")
        if n.refunded > 0 and (n.refunds != 1 or n.refund_amount != n.refunded
                               or not n.paid_back):
            out.append(f"{key[0]} credit note {key[1]}: refunds {n.refunds} of "
                       f"{n.refund_amount} (paid back: {n.paid_back}) for {n.refunded} refunded")
        if n.refunded == 0 and n.refunds:
            out.append(f"{key[0]} credit note {key[1]}: refunds nothing, has {n.refunds} refunds")
    return out[:_MAX]


def _differs(recorded: Any, sent: Any) -> bool:
    """A stored correction field against the body's (amounts as decimals)."""
    if isinstance(sent, list) and isinstance(recorded, list):
        return len(sent) != len(recorded) or any(
            _differs(r.get(k) if isinstance(r, dict) else None, v)
            for r, s in zip(recorded, sent, strict=True) for k, v in s.items())
    if isinstance(sent, str) and isinstance(recorded, str | int | float):
        try:
            return Decimal(str(recorded)) != Decimal(sent)
        except ArithmeticError:
            return str(recorded) != sent
    return bool(recorded != sent)


async def ledger_invariants(conn: AsyncConnection, workload: Workload) -> list[str]:
    out = await series_problems(conn)
    for plan in workload.contracts:
        out += [f"{plan.contract_id}: {p}" for p in
                await contract_problems(conn, plan.contract_id)]
    return out[:_MAX]
