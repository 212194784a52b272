"""Read models for the API, straight from the ledger tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.ledger_reports import credit_summary, outstanding, unbilled_usage
from activities.ledger_store import INVOICE_NUMBER_ORDER
from activities.spend import last_progress
from api.schemas import ContractState, ContractSummary, InvoiceSummary
from models.contract import ContractTerms
from models.minimum_commitment import progress_text
from models.operations import ContractStatus, IssuedInvoice
from workflows.contract_state import UnappliedPayment

_INVOICE_COLUMNS = (
    "contract_id, key, number, kind, status, currency, period_start, period_end, issued_on, "
    "due_on, subtotal, credits_applied, total, amount_paid, paid_on, credited, credit_allocated"
)


def _summary(row: Any) -> InvoiceSummary:
    return InvoiceSummary(
        number=row.number, key=row.key, contract_id=row.contract_id, kind=row.kind,
        status=row.status, currency=row.currency, period_start=row.period_start,
        period_end=row.period_end, issued_on=row.issued_on, due_on=row.due_on,
        subtotal=row.subtotal, credits_applied=row.credits_applied, total=row.total,
        amount_paid=row.amount_paid, credited=row.credited,
        outstanding=outstanding(row.status, row.total, row.amount_paid, row.credit_allocated),
        paid_on=row.paid_on,
    )


def summary_from_issued(contract_id: str, inv: IssuedInvoice) -> InvoiceSummary:
    return InvoiceSummary(
        number=inv.number, key=inv.key, contract_id=contract_id, kind=inv.kind,
        status=inv.status, currency=inv.currency, period_start=inv.period_start,
        period_end=inv.period_end, issued_on=inv.issued_on, due_on=inv.due_on,
        subtotal=inv.subtotal, credits_applied=inv.credits_applied, total=inv.total,
        amount_paid=inv.amount_paid, credited=inv.credited,
        outstanding=outstanding(inv.status, inv.total, inv.amount_paid, inv.credit_allocated),
        paid_on=inv.paid_on,
    )


async def invoice_summaries(
    conn: AsyncConnection, *, contract_id: str | None = None, status: str | None = None,
    limit: int | None = None, offset: int = 0,
) -> list[InvoiceSummary]:
    where: list[str] = []
    params: dict[str, Any] = {"offset": offset}
    if contract_id is not None:
        where.append("contract_id = :cid")
        params["cid"] = contract_id
    if status is not None:
        where.append("status = :status")
        params["status"] = status
    else:
        # Drafts (the open period's invoice-to-be) only when asked for: their
        # amounts are computed on read by the draft preview, not stored.
        where.append("status <> 'draft'")
    sql = f"SELECT {_INVOICE_COLUMNS} FROM invoices"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {INVOICE_NUMBER_ORDER}, id OFFSET :offset"
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    rows = (await conn.execute(text(sql), params)).all()
    return [_summary(r) for r in rows]


async def invoice_by_number(conn: AsyncConnection, number: str) -> Any:
    return (
        await conn.execute(
            text(f"SELECT id, {_INVOICE_COLUMNS} FROM invoices WHERE number = :n"),
            {"n": number},
        )
    ).one_or_none()


async def contract_row(conn: AsyncConnection, contract_id: str) -> Any:
    return (
        await conn.execute(
            text(
                "SELECT id, customer_id, plan_key, status, currency, catalog_version, terms "
                "FROM contracts WHERE id = :id"
            ),
            {"id": contract_id},
        )
    ).one_or_none()


async def contract_state_from_db(
    conn: AsyncConnection, row: Any, workflow_id: str, ui_url: str
) -> ContractState:
    cid = row.id
    invoices = await invoice_summaries(conn, contract_id=cid)
    amendments = (
        await conn.execute(
            text("SELECT amendment_id, effective FROM amendments WHERE contract_id = :c "
                 "ORDER BY id"),
            {"c": cid},
        )
    ).all()
    attention = await conn.scalar(
        text("SELECT attention_reason FROM invoices WHERE contract_id = :c "
             "AND status = 'needs_attention' ORDER BY id LIMIT 1"),
        {"c": cid},
    )
    credits = await credit_summary(conn, cid)
    unbilled = await unbilled_usage(conn, cid)
    unapplied = (await conn.execute(
        text("SELECT payment_key, invoice_key, amount, reason FROM unapplied_payments "
             "WHERE contract_id = :c ORDER BY id"), {"c": cid})).all()
    terms = ContractTerms.model_validate(row.terms)
    progress = await last_progress(conn, terms, ended=row.status in ("ended", "terminated"))
    return ContractState(
        contract_id=cid, customer_id=row.customer_id, plan=row.plan_key,
        status=ContractStatus(row.status), source="database", workflow_id=workflow_id,
        temporal_ui_url=ui_url, currency=row.currency, credit_balance=credits.balance,
        next_boundary=None, attention=attention,
        has_overdue_invoice=any(i.status == "overdue" for i in invoices),
        terms=terms, invoices=invoices,
        amendments=[a.amendment_id for a in amendments], pending_amendments=[],
        unapplied_payments=[UnappliedPayment(payment_key=u.payment_key, invoice_key=u.invoice_key,
                                             amount=u.amount, reason=u.reason) for u in unapplied],
        unbilled_usage_events=unbilled.events,
        commitment=progress,
        commitment_text=None if progress is None else progress_text(progress, terms.currency),
    )


async def list_contracts(
    conn: AsyncConnection, *, status: str | None, customer: str | None, overdue: bool | None,
    after: str | None, limit: int,
) -> tuple[list[ContractSummary], str | None]:
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit + 1}
    if status is not None:
        where.append("c.status = :status")
        params["status"] = status
    if customer is not None:
        where.append("c.customer_id = :customer")
        params["customer"] = customer
    if after is not None:
        where.append("c.id > :after")
        params["after"] = after
    having = ""
    if overdue is not None:
        having = ("HAVING count(i.id) FILTER (WHERE i.status = 'overdue') > 0" if overdue
                  else "HAVING count(i.id) FILTER (WHERE i.status = 'overdue') = 0")
    sql = f"""
        SELECT c.id, c.customer_id, cu.name AS customer_name, c.plan_key, c.status,
               c.currency, c.starts_on, c.term_end, c.catalog_version,
               count(i.id) FILTER (WHERE i.status IN ('open', 'overdue')) AS open_invoices,
               count(i.id) FILTER (WHERE i.status = 'overdue') AS overdue_invoices,
               coalesce(sum(greatest(i.total - i.amount_paid - i.credit_allocated, 0))
                        FILTER (WHERE i.status IN ('open', 'overdue')), 0) AS outstanding
        FROM contracts c
        JOIN customers cu ON cu.id = c.customer_id
        LEFT JOIN invoices i ON i.contract_id = c.id
        {"WHERE " + " AND ".join(where) if where else ""}
        GROUP BY c.id, cu.name
        {having}
        ORDER BY c.id
        LIMIT :limit
    """
    rows = (await conn.execute(text(sql), params)).all()
    page = rows[:limit]
    summaries = [
        ContractSummary(
            contract_id=r.id, customer_id=r.customer_id, customer_name=r.customer_name,
            plan=r.plan_key, status=r.status, currency=r.currency, starts_on=r.starts_on,
            term_end=r.term_end, catalog_version=r.catalog_version,
            open_invoices=r.open_invoices, overdue_invoices=r.overdue_invoices,
            outstanding=r.outstanding,
        )
        for r in page
    ]
    next_after = page[-1].id if len(rows) > limit else None
    return summaries, next_after
