"""Rows of corrections, credit notes and refunds, read and written inside a transaction.

Small helpers ``activities/corrections.py`` composes (the caller owns the
transaction), and the read side the API and ``billow simulate`` use: a credit
note as `CreditNoteView`, in issue (number) order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.contract import ContractTerms
from models.corrections import (
    Correction,
    CorrectionRequest,
    CreditNoteAllocation,
    CreditNoteLineView,
    CreditNoteView,
    RefundView,
)
from models.credit_notes import Consumption, InvoiceLineState
from models.periods import local_date
from models.revenue import JournalEntry

__all__ = [
    "CREDIT_NOTE_SERIES",
    "NOTE_NUMBER_ORDER",
    "credit_note_rows",
    "credit_note_view",
    "credit_notes_of",
    "invoice_consumption",
    "invoice_journal",
    "invoice_lines_for_credit",
    "ledger_request",
    "number_credit_note",
]

CREDIT_NOTE_SERIES = "credit_notes"
# Credit note numbers in issue order (by their sequence, not as text).
NOTE_NUMBER_ORDER = "CAST(substring(n.number FROM '[0-9]+$') AS numeric) NULLS LAST, n.id"


async def number_credit_note(conn: AsyncConnection, note_id: int) -> str:
    """Number a stored note in the ``CN-`` series: the last statement of its transaction.

    The series row's lock serialises issues until COMMIT (a rollback returns
    the number), so the series is gapless, as invoices' is
    (`activities.ledger_store.next_invoice_number`).
    """
    number = await conn.scalar(
        text(
            """
            WITH n AS (
                UPDATE invoice_number_series SET next_value = next_value + 1
                WHERE series = :s RETURNING prefix, next_value - 1 AS value
            )
            UPDATE credit_notes SET number = n.prefix || CASE
                    WHEN n.value < 1000000 THEN lpad(n.value::text, 6, '0')
                    ELSE n.value::text END
            FROM n WHERE credit_notes.id = :id AND credit_notes.number IS NULL
            RETURNING credit_notes.number
            """
        ),
        {"s": CREDIT_NOTE_SERIES, "id": note_id},
    )
    if number is None:
        raise LookupError(f"credit note {note_id} is numbered already or missing")
    return str(number)


async def invoice_lines_for_credit(
    conn: AsyncConnection, invoice_id: int
) -> list[InvoiceLineState]:
    """The invoice's lines (1-based positions) with what earlier notes credited on each."""
    rows = (
        await conn.execute(
            text(
                """
                SELECT l.position + 1 AS position, l.kind, l.amount,
                       coalesce((SELECT sum(cl.amount) FROM credit_note_lines cl
                                 JOIN credit_notes n ON n.id = cl.credit_note_id
                                 WHERE n.invoice_id = l.invoice_id
                                   AND cl.invoice_line = l.position + 1), 0) AS credited
                FROM invoice_lines l WHERE l.invoice_id = :id ORDER BY l.position
                """
            ),
            {"id": invoice_id},
        )
    ).all()
    return [InvoiceLineState(position=r.position, kind=r.kind, amount=r.amount,
                             credited=r.credited) for r in rows]


async def invoice_consumption(conn: AsyncConnection, cid: str, key: str) -> list[Consumption]:
    """Credits the invoice consumed per grant, in burn order, with what was returned."""
    rows = (
        await conn.execute(
            text(
                """
                SELECT grant_id,
                       coalesce(sum(-amount) FILTER (WHERE kind = 'consume'), 0) AS consumed,
                       coalesce(sum(amount) FILTER (WHERE kind = 'return'), 0) AS returned
                FROM credit_ledger
                WHERE contract_id = :cid AND invoice_key = :key
                  AND kind IN ('consume', 'return')
                GROUP BY grant_id
                HAVING coalesce(sum(-amount) FILTER (WHERE kind = 'consume'), 0) > 0
                ORDER BY min(id) FILTER (WHERE kind = 'consume')
                """
            ),
            {"cid": cid, "key": key},
        )
    ).all()
    return [Consumption(grant_id=r.grant_id, consumed=r.consumed, returned=r.returned)
            for r in rows]


async def invoice_journal(conn: AsyncConnection, cid: str, key: str) -> list[JournalEntry]:
    """The journal entries posted for one invoice (its issue, payments, notes)."""
    rows = (
        await conn.execute(
            text(
                """
                SELECT e.entry_key, e.kind, e.grant_id, l.account, l.debit, l.credit,
                       l.grant_id AS line_grant_id
                FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id
                WHERE e.contract_id = :cid AND e.invoice_key = :key
                ORDER BY e.id, l.position
                """
            ),
            {"cid": cid, "key": key},
        )
    ).all()
    grouped: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry_key = r.entry_key.removeprefix(f"{cid}:")
        entry = grouped.setdefault(
            entry_key, {"key": entry_key, "kind": r.kind, "grant_id": r.grant_id, "lines": []}
        )
        entry["lines"].append({"account": r.account, "debit": r.debit, "credit": r.credit,
                               "grant_id": r.line_grant_id})
    return [JournalEntry.model_validate(e) for e in grouped.values()]


_NOTE_SELECT = """
    SELECT n.*, i.number AS invoice_number,
           r.refund_key, r.amount AS refund_amount, r.status AS refund_status,
           r.method AS refund_method, r.gateway_ref AS refund_ref, r.refunded_on
    FROM credit_notes n
    JOIN invoices i ON i.id = n.invoice_id
    LEFT JOIN refunds r ON r.credit_note_id = n.id
"""


async def credit_note_rows(
    conn: AsyncConnection, *, contract_id: str | None = None, number: str | None = None,
    note_id: int | None = None, limit: int | None = None, offset: int = 0,
) -> list[Any]:
    where = ["n.number IS NOT NULL"]
    params: dict[str, Any] = {"offset": offset}
    for column, value in (("n.contract_id", contract_id), ("n.number", number),
                          ("n.id", note_id)):
        if value is not None:
            name = column.split(".")[1]
            where.append(f"{column} = :{name}")
            params[name] = value
    sql = _NOTE_SELECT + " WHERE " + " AND ".join(where) + f" ORDER BY {NOTE_NUMBER_ORDER}"
    sql += " OFFSET :offset"
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    return list((await conn.execute(text(sql), params)).all())


async def credit_note_view(conn: AsyncConnection, row: Any) -> CreditNoteView:
    lines = (
        await conn.execute(
            text("SELECT invoice_line, kind, amount FROM credit_note_lines "
                 "WHERE credit_note_id = :id ORDER BY position"),
            {"id": row.id},
        )
    ).all()
    refund = None
    if row.refund_key is not None:
        refund = RefundView(refund_key=row.refund_key, amount=row.refund_amount,
                            status=row.refund_status, method=row.refund_method,
                            gateway_ref=row.refund_ref, refunded_on=row.refunded_on)
    return CreditNoteView(
        id=row.correction_id, number=row.number, contract_id=row.contract_id,
        invoice=row.invoice_key, invoice_number=row.invoice_number, currency=row.currency,
        issued_on=row.issued_on, reason=row.reason,
        lines=[CreditNoteLineView(line=ln.invoice_line, kind=ln.kind, amount=ln.amount)
               for ln in lines],
        total=row.total,
        allocation=CreditNoteAllocation(
            credits_returned=row.credits_returned, outstanding_reduced=row.outstanding_reduced,
            refunded=row.refunded, customer_credit=row.customer_credit,
        ),
        automatic=row.automatic,
        refund=refund,
    )


async def credit_notes_of(conn: AsyncConnection, contract_id: str) -> list[CreditNoteView]:
    """The contract's credit notes in issue order."""
    return [await credit_note_view(conn, r)
            for r in await credit_note_rows(conn, contract_id=contract_id)]


async def ledger_request(
    conn: AsyncConnection, contract_id: str, correction: Correction, now: datetime
) -> CorrectionRequest:
    """The request the contract's workflow would send, built from the ledger (for
    corrections after the workflow has completed: SPEC.md section 11)."""
    row = (
        await conn.execute(
            text("SELECT status, terms FROM contracts WHERE id = :id"), {"id": contract_id})
    ).one()
    terms = ContractTerms.model_validate(row.terms)
    return CorrectionRequest(
        contract_id=contract_id, correction=correction, at=now,
        on=local_date(now, terms.timezone), terms=terms, invoiced_periods=None,
        term_closed=row.status in ("ended", "terminated"),
    )
