"""Read models over the ledger: invoices as documents, credit and revenue
summaries. Used by ``billow simulate``, the API and tests."""

from __future__ import annotations

import json
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

# Keys shown only when set: split-part instants (lines of a split period) and
# the period a minimum or maximum adjustment for late usage belongs to.
_ONLY_WHEN_SET: dict[str, tuple[str, ...] | None] = {
    "part_start": None, "part_end": None,
    "period_start": ("minimum", "maximum"), "period_end": ("minimum", "maximum"),
}


def _line_json(doc: dict[str, Any]) -> dict[str, Any]:
    def hidden(key: str, value: Any) -> bool:
        if value is not None or key not in _ONLY_WHEN_SET:
            return False
        kinds = _ONLY_WHEN_SET[key]
        return kinds is None or doc.get("kind") in kinds

    return {k: v for k, v in doc.items() if not hidden(k, v)}


def _json_value(value: Any) -> Any:
    """A json/jsonb column as Python (decoded unless the driver did)."""
    return json.loads(value) if isinstance(value, str) else value


def _invoice_json(inv: Any, lines: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "key": inv.key,
        "number": inv.number,
        "kind": inv.kind,
        "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
        "issued_on": inv.issued_on.isoformat() if inv.issued_on else None,
        "due_on": inv.due_on.isoformat() if inv.due_on else None,
        "lines": lines,
        "subtotal": plain(inv.subtotal),
        "credits_applied": plain(inv.credits_applied),
        "total": plain(inv.total),
        "status": inv.status,
        "paid_on": inv.paid_on.isoformat() if inv.paid_on else None,
        # Corrections (SPEC.md section 11): the sum of its credit notes and what is
        # still owed (total - paid - what the notes took off).
        "credited": plain(round_money(inv.credited, inv.currency)),
        "outstanding": plain(round_money(
            outstanding(inv.status, inv.total, inv.amount_paid, inv.credit_allocated),
            inv.currency)),
    }


def outstanding(status: str, total: Decimal, paid: Decimal,
                allocated: Decimal = Decimal(0)) -> Decimal:
    """What is still owed: total - paid - what credit notes took off; nothing unless
    the invoice is open or overdue."""
    return (max(total - paid - allocated, Decimal(0)) if status in ("open", "overdue")
            else Decimal(0))


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
    return [_invoice_json(inv, by_invoice.get(inv.id, [])) for inv in invoices]


async def invoice_detail_json(
    conn: AsyncConnection, contract_id: str, key: str
) -> dict[str, Any] | None:
    """One invoice as ``GET /v1/invoices/{number}`` shows it (also the ``data`` of its
    events, written before the number is: it may still be null then)."""
    inv = (  # one statement: it is read for the events of every close (issue 13)
        await conn.execute(
            text("SELECT i.*, coalesce((SELECT jsonb_agg(l.document ORDER BY l.position) "
                 "FROM invoice_lines l WHERE l.invoice_id = i.id), '[]') AS line_documents "
                 "FROM invoices i WHERE i.contract_id = :cid AND i.key = :key"),
            {"cid": contract_id, "key": key},
        )
    ).one_or_none()
    if inv is None:
        return None
    doc = _invoice_json(inv, [_line_json(d) for d in _json_value(inv.line_documents)])
    return {
        "number": doc.pop("number"), "key": doc.pop("key"), "contract_id": contract_id,
        "kind": doc.pop("kind"), "currency": inv.currency, **doc,
        "amount_paid": plain(inv.amount_paid),
    }


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
