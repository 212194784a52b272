"""Read models over the ledger: invoices as documents, credit and revenue
summaries. Used by ``billow simulate``, the API and tests."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.ledger_store import INVOICE_NUMBER_ORDER, load_credit_state, load_journal
from models.contract import ContractTerms
from models.credits import CreditSummary
from models.money import plain, round_money
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
                f"ORDER BY {INVOICE_NUMBER_ORDER}"
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
            # Corrections (SPEC.md section 11): the sum of its credit notes and
            # what is still owed (total - paid - what the notes took off).
            "credited": plain(round_money(inv.credited, inv.currency)),
            "outstanding": plain(round_money(
                max(inv.total - inv.amount_paid - inv.credit_allocated, Decimal(0))
                if inv.status in ("open", "overdue") else Decimal(0), inv.currency)),
        }
        for inv in invoices
    ]


async def credit_summary(conn: AsyncConnection, contract_id: str) -> CreditSummary:
    return (await load_credit_state(conn, contract_id)).summary()


async def revenue_summary(conn: AsyncConnection, contract_id: str, currency: str) -> RevenueSummary:
    return summarize(await load_journal(conn, contract_id), currency)


class UnbilledUsage(BaseModel):
    """Usage of an ended contract that arrived after its final invoice (SPEC.md 3)."""

    events: int
    first_event_at: datetime | None
    last_event_at: datetime | None


async def unbilled_usage(conn: AsyncConnection, contract_id: str) -> UnbilledUsage:
    """Events inside an ended term that no invoice will ever bill.

    Every usage invoice bills the events below its watermark; once the final
    invoice is issued, events of the term at or above the last watermark have
    no invoice left to land on. They are recorded, never dropped, and shown
    to ops here. A running contract has none: its next invoice bills them as
    late usage.
    """
    row = (
        await conn.execute(
            text(
                """
                SELECT c.customer_id, c.status, c.terms,
                       (SELECT max(usage_watermark) FROM invoices i
                        WHERE i.contract_id = c.id AND i.number IS NOT NULL) AS watermark
                FROM contracts c WHERE c.id = :cid
                """
            ),
            {"cid": contract_id},
        )
    ).one_or_none()
    if row is None or row.status not in ("ended", "terminated") or row.watermark is None:
        return UnbilledUsage(events=0, first_event_at=None, last_event_at=None)
    terms = ContractTerms.model_validate(row.terms)
    found = (
        await conn.execute(
            text(
                """
                SELECT count(*) AS n, min(ts) AS first, max(ts) AS last FROM usage_events
                WHERE customer_id = :cust AND ts >= :start AND ts < :end AND txid >= :wm
                """
            ),
            {"cust": row.customer_id, "start": terms.term_start_at, "end": terms.term_end_at,
             "wm": row.watermark},
        )
    ).one()
    return UnbilledUsage(events=found.n, first_event_at=found.first, last_event_at=found.last)
