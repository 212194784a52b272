"""Writing invoices: the next period's draft, a held invoice, a finalized one
with its lines, and the events a finalization emits (before the number, which
the close takes in its last statement)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.events import emit_event
from activities.ledger_reports import invoice_detail_json
from activities.ledger_store import (
    issued_from_row,
)
from models.contract import ContractTerms
from models.credits import CreditState, crossed_low_balance
from models.events import EventType
from models.invoices import (
    InvoiceDocument,
    Line,
    invoice_key_usage,
)
from models.operations import (
    IssuedInvoice,
)
from models.periods import Period


async def open_draft(conn: AsyncConnection, terms: ContractTerms, period: Period) -> None:
    """The draft invoice of a period that has just opened (idempotent).

    A draft has no number and no lines of its own: until it is finalized its
    content is whatever `compute_usage_invoice` says now (see the API's draft
    preview), so it never goes stale.
    """
    await conn.execute(
        text(
            """
            INSERT INTO invoices (contract_id, key, kind, status, currency, period_start,
                period_end, full_period_start, full_period_end, subtotal, credits_applied,
                total, amount_paid)
            VALUES (:cid, :key, 'usage', 'draft', :cur, :ps, :pe, :fps, :fpe, 0, 0, 0, 0)
            ON CONFLICT (contract_id, key) DO NOTHING
            """
        ),
        {"cid": terms.contract_id, "key": invoice_key_usage(period.start_date),
         "cur": terms.currency, **_span(period)},
    )


def _span(period: Period) -> dict[str, date]:
    """The invoice columns of a period: the span billed and its full cycle period."""
    return {"ps": period.start_date, "pe": period.end_date,
            "fps": period.full_start_date, "fpe": period.full_end_date}


async def hold_invoice(
    conn: AsyncConnection, cid: str, key: str, terms: ContractTerms, period: Period, reason: str
) -> IssuedInvoice:
    """Keep (or refresh) the period's invoice as needs_attention, without a number."""
    row = (
        await conn.execute(
            text(
                """
                INSERT INTO invoices (contract_id, key, kind, status, currency, period_start,
                    period_end, full_period_start, full_period_end, subtotal, credits_applied,
                    total, amount_paid, attention_reason)
                VALUES (:cid, :key, 'usage', 'needs_attention', :cur, :ps, :pe, :fps, :fpe,
                    0, 0, 0, 0, :why)
                ON CONFLICT (contract_id, key) DO UPDATE
                    SET attention_reason = EXCLUDED.attention_reason, status = EXCLUDED.status,
                        period_end = EXCLUDED.period_end,
                        full_period_start = EXCLUDED.full_period_start,
                        full_period_end = EXCLUDED.full_period_end
                WHERE invoices.number IS NULL
                RETURNING *
                """
            ),
            {"cid": cid, "key": key, "cur": terms.currency, "why": reason, **_span(period)},
        )
    ).one()
    return issued_from_row(row)


async def store_finalized(
    conn: AsyncConnection,
    cid: str,
    doc: InvoiceDocument,
    issued_on: date,
    due_on: date,
    *,
    watermark: int | None = None,
    full_period: tuple[date, date] | None = None,
) -> int:
    """Insert (or finalize a held or draft) invoice with its lines, without a number yet.

    Returns its id; the caller numbers it with `next_invoice_number` as the
    last statement of the same transaction, so nothing outside sees it
    unnumbered and the series lock is not held while the close does its work.
    ``full_period``: a usage invoice's full cycle period (see migration 0010).
    """
    status = "paid" if doc.total == 0 else "open"
    row = (
        await conn.execute(
            text(
                """
                WITH stored AS (
                INSERT INTO invoices (contract_id, key, number, kind, status, currency,
                    period_start, period_end, full_period_start, full_period_end, issued_on,
                    due_on, subtotal, credits_applied, total, amount_paid, paid_on,
                    usage_watermark, finalized_at)
                VALUES (:cid, :key, NULL, :kind, :status, :cur, :ps, :pe, :fps, :fpe, :issued,
                    :due, :sub, :cred, :total, 0, :paid_on, :wm, now())
                ON CONFLICT (contract_id, key) DO UPDATE SET
                    status = EXCLUDED.status,
                    -- a draft opened before a termination shortened its period
                    period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
                    full_period_start = EXCLUDED.full_period_start,
                    full_period_end = EXCLUDED.full_period_end,
                    issued_on = EXCLUDED.issued_on, due_on = EXCLUDED.due_on,
                    subtotal = EXCLUDED.subtotal, credits_applied = EXCLUDED.credits_applied,
                    total = EXCLUDED.total, paid_on = EXCLUDED.paid_on,
                    usage_watermark = EXCLUDED.usage_watermark, attention_reason = NULL,
                    finalized_at = now()
                WHERE invoices.number IS NULL
                RETURNING *
                ),
                -- Lines left by nothing today (a held or draft invoice has none),
                -- removed in the same statement so a finalization is never
                -- appended to them (issue 13: one round trip less per close).
                cleared AS (DELETE FROM invoice_lines WHERE invoice_id IN (SELECT id FROM stored))
                SELECT * FROM stored
                """
            ),
            {
                "cid": cid,
                "key": doc.key,
                "kind": doc.kind.value,
                "status": status,
                "cur": doc.currency,
                "ps": doc.period.start,
                "pe": doc.period.end,
                "fps": full_period[0] if full_period else None,
                "fpe": full_period[1] if full_period else None,
                "issued": issued_on,
                "due": due_on,
                "sub": doc.subtotal,
                "cred": doc.credits_applied,
                "total": doc.total,
                "paid_on": issued_on if status == "paid" else None,
                "wm": watermark,
            },
        )
    ).one()
    if not doc.lines:  # a period with no usage and no fees: a zero invoice, no lines
        return int(row.id)
    await conn.execute(
        text(
            """
            INSERT INTO invoice_lines (invoice_id, position, kind, meter, fee, dimensions,
                quantity, unit_price, amount, line_period_start, line_period_end, document)
            VALUES (:iid, :pos, :kind, :meter, :fee, CAST(:dims AS jsonb), :q, :up, :amount,
                :lps, :lpe, CAST(:doc AS jsonb))
            """
        ),
        [_line_params(row.id, i, ln) for i, ln in enumerate(doc.lines)],
    )
    return int(row.id)


def _line_params(invoice_id: int, position: int, ln: Line) -> dict[str, Any]:
    meter = getattr(ln, "meter", None)
    dims = getattr(ln, "dimensions", None)
    return {
        "iid": invoice_id,
        "pos": position,
        "kind": ln.kind,
        "meter": meter,
        "fee": getattr(ln, "fee", None),
        "dims": None if dims is None else json.dumps(dims),
        "q": getattr(ln, "quantity", None),
        "up": getattr(ln, "unit_price", None),
        "amount": ln.amount,
        "lps": getattr(ln, "period_start", None),
        "lpe": getattr(ln, "period_end", None),
        "doc": ln.model_dump_json(),
    }


async def finalized_events(conn: AsyncConnection, cid: str, key: str) -> list[int]:
    """invoice.finalized (and invoice.paid for one paid at issue: a zero total),
    written before the number, which `next_invoice_number` fills in."""
    data = await invoice_detail_json(conn, cid, key)
    if data is None:
        raise LookupError(f"invoice {key!r} of contract {cid!r} not found")
    events = [await emit_event(conn, EventType.INVOICE_FINALIZED, cid, data)]
    if data["status"] == "paid":  # the same invoice, read once for both (issue 13)
        events.append(await emit_event(conn, EventType.INVOICE_PAID, cid, data))
    return events


async def credits_low(conn: AsyncConnection, terms: ContractTerms, before: CreditState,
                       after: CreditState, invoice_key: str) -> None:
    """credits.low when this invoice took the balance below the contract's threshold."""
    threshold = terms.low_balance_threshold
    if threshold is None:
        return
    was, now = before.summary(), after.summary()
    if crossed_low_balance(threshold, now.granted, was.balance, now.balance):
        await emit_event(conn, EventType.CREDITS_LOW, terms.contract_id, {
            "contract_id": terms.contract_id, "balance": now.balance, "granted": now.granted,
            "threshold": threshold, "invoice_key": invoice_key, "currency": terms.currency})
