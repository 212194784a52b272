"""Recording a payment against an invoice, idempotent on its payment key: the same
key with the same content answers as the first time, with other content it is
a conflict."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.exceptions import ApplicationError

from activities.events import emit_event, emit_invoice_event
from activities.ledger_store import (
    post_journal,
)
from models.events import EventType
from models.operations import (
    PaymentRequest,
    PaymentResult,
)
from models.revenue import (
    payment_received,
)


async def record_payment_in(conn: AsyncConnection, req: PaymentRequest) -> PaymentResult:
    """Record a payment inside the caller's transaction, idempotent on its id.

    The id (``payment_key``) is scoped to the contract (SPEC 10). Sending it
    again with the same invoice and amount records nothing and answers what
    the first call answered (stored with the payment); with another invoice
    or amount it is a conflict (`PaymentConflict`, non-retryable; the API's
    409) naming the differing field, and nothing changes.
    """
    row = (
        await conn.execute(
            text("SELECT * FROM invoices WHERE contract_id = :cid AND key = :key FOR UPDATE"),
            {"cid": req.contract_id, "key": req.invoice_key},
        )
    ).one_or_none()
    if row is None:
        raise LookupError(f"invoice {req.invoice_key!r} of contract {req.contract_id!r} not found")
    inserted = await conn.scalar(
        text(
            """
            INSERT INTO payments (payment_key, contract_id, invoice_id, amount, received_on,
                method, gateway_ref)
            VALUES (:key, :cid, :iid, :amount, :on, :method, :ref)
            ON CONFLICT (contract_id, payment_key) DO NOTHING RETURNING id
            """
        ),
        {
            "key": req.payment_key,
            "cid": req.contract_id,
            "iid": row.id,
            "amount": req.amount,
            "on": req.received_on,
            "method": req.method,
            "ref": req.gateway_ref,
        },
    )
    if inserted is None:
        return await _payment_resent(conn, req)
    # What credit notes took off the amount owed is not owed (SPEC.md section 11).
    outstanding = row.total - row.amount_paid - row.credit_allocated
    if row.status in ("paid", "void", "draft", "needs_attention") or req.amount > outstanding:
        # The insert above is rolled back with the caller's transaction.
        raise ApplicationError(
            f"amount: {req.amount} exceeds what {req.invoice_key} still owes ({outstanding}, "
            f"status {row.status})",
            type="PaymentRejected",
            non_retryable=True,
        )
    paid = row.amount_paid + req.amount
    settled = paid + row.credit_allocated >= row.total
    updated = (
        await conn.execute(
            text(
                """
                UPDATE invoices SET amount_paid = :paid,
                    status = CASE WHEN :settled THEN 'paid' ELSE status END,
                    paid_on = CASE WHEN :settled THEN CAST(:on AS date) ELSE paid_on END
                WHERE id = :id RETURNING *
                """
            ),
            {"paid": paid, "settled": settled, "on": req.received_on, "id": row.id},
        )
    ).one()
    await conn.execute(
        text(
            "UPDATE payments SET result_status = :status, result_amount_paid = :paid, "
            "result_paid_on = :paid_on WHERE id = :id"
        ),
        {"status": updated.status, "paid": updated.amount_paid, "paid_on": updated.paid_on,
         "id": inserted},
    )
    await post_journal(
        conn,
        req.contract_id,
        [payment_received(f"payment:{req.payment_key}", req.amount)],
        req.received_on,
        req.invoice_key,
    )
    await emit_event(conn, EventType.PAYMENT_RECORDED, req.contract_id, {
        "payment_id": req.payment_key, "contract_id": req.contract_id,
        "invoice_number": updated.number, "invoice_key": updated.key, "amount": req.amount,
        "currency": updated.currency, "received_on": req.received_on, "method": req.method,
        "invoice_status": updated.status, "invoice_amount_paid": updated.amount_paid,
    })
    if settled:
        await emit_invoice_event(conn, EventType.INVOICE_PAID, req.contract_id, updated.key)
    return PaymentResult(
        invoice_key=updated.key,
        status=updated.status,
        amount_paid=updated.amount_paid,
        paid_on=updated.paid_on,
        applied=True,
    )


async def _payment_resent(conn: AsyncConnection, req: PaymentRequest) -> PaymentResult:
    """The answer to a payment id this contract has recorded already: the first
    call's answer if the content is the same, else a `PaymentConflict`."""
    stored = (
        await conn.execute(
            text(
                """
                SELECT p.amount, p.result_status, p.result_amount_paid, p.result_paid_on,
                       i.key AS invoice_key, i.status, i.amount_paid, i.paid_on
                FROM payments p JOIN invoices i ON i.id = p.invoice_id
                WHERE p.contract_id = :cid AND p.payment_key = :key
                """
            ),
            {"cid": req.contract_id, "key": req.payment_key},
        )
    ).one()
    differing = [
        f"{field}: {theirs} (payment {req.payment_key!r} was recorded with {ours})"
        for field, ours, theirs in (
            ("invoice", stored.invoice_key, req.invoice_key),
            ("amount", stored.amount, req.amount),
        )
        if ours != theirs  # Decimal compares by value: 100 == 100.00
    ]
    if differing:
        raise ApplicationError(
            "; ".join(differing),
            {"fields": [d.split(":", 1)[0] for d in differing]},
            type="PaymentConflict",
            non_retryable=True,
        )
    if stored.result_status is None:  # recorded before results were stored
        return PaymentResult(invoice_key=stored.invoice_key, status=stored.status,
                             amount_paid=stored.amount_paid, paid_on=stored.paid_on, applied=True)
    return PaymentResult(
        invoice_key=stored.invoice_key,
        status=stored.result_status,
        amount_paid=stored.result_amount_paid,
        paid_on=stored.result_paid_on,
        applied=True,
    )
