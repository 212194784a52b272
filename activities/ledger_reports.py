"""Read models over the ledger: invoices as documents, credit and revenue
summaries. Used by ``billow simulate``, the API and tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.ledger_store import load_credit_state, load_journal
from models.credits import CreditSummary
from models.money import plain
from models.revenue import RevenueSummary, summarize


def _line_json(doc: dict[str, Any]) -> dict[str, Any]:
    # Split-part instants only appear on lines of a split period.
    return {k: v for k, v in doc.items() if not (k in ("part_start", "part_end") and v is None)}


async def invoice_documents(conn: AsyncConnection, contract_id: str) -> list[dict[str, Any]]:
    """Finalized invoices in issue (number) order, in the SPEC.md section 9 shape."""
    invoices = (
        await conn.execute(
            text(
                "SELECT * FROM invoices WHERE contract_id = :cid AND number IS NOT NULL "
                "ORDER BY number"
            ),
            {"cid": contract_id},
        )
    ).all()
    lines = (
        await conn.execute(
            text(
                "SELECT l.invoice_id, l.document FROM invoice_lines l "
                "JOIN invoices i ON i.id = l.invoice_id WHERE i.contract_id = :cid "
                "ORDER BY l.invoice_id, l.position"
            ),
            {"cid": contract_id},
        )
    ).all()
    by_invoice: dict[int, list[dict[str, Any]]] = {}
    for ln in lines:
        by_invoice.setdefault(ln.invoice_id, []).append(_line_json(ln.document))
    return [
        {
            "key": inv.key,
            "number": inv.number,
            "kind": inv.kind,
            "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
            "issued_on": inv.issued_on.isoformat() if inv.issued_on else None,
            "due_on": inv.due_on.isoformat() if inv.due_on else None,
            "lines": by_invoice.get(inv.id, []),
            "subtotal": plain(inv.subtotal),
            "credits_applied": plain(inv.credits_applied),
            "total": plain(inv.total),
            "status": inv.status,
            "paid_on": inv.paid_on.isoformat() if inv.paid_on else None,
        }
        for inv in invoices
    ]


async def credit_summary(conn: AsyncConnection, contract_id: str) -> CreditSummary:
    return (await load_credit_state(conn, contract_id)).summary()


async def revenue_summary(conn: AsyncConnection, contract_id: str, currency: str) -> RevenueSummary:
    return summarize(await load_journal(conn, contract_id), currency)
