"""The ledger as ops read it: a contract's credit history and each invoice's
collection (payments, reminders, unapplied money). Read-only views over the
append-only tables, used by the API (and through it the CLI).

Dates are the ledger's business dates, never row timestamps (a simulated
contract writes its rows within seconds of wall time): a grant is dated by
when it takes effect, a consumption by its invoice's issue date, an expiry by
its breakage entry's booking date (else the grant's expiry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.ledger_reports import credit_summary, revenue_summary
from activities.ledger_store import INVOICE_NUMBER_ORDER, load_journal
from models.contract import ContractTerms
from models.credits import CreditSummary
from models.line_text import SoldGrant, describe_lines
from models.money import DecimalStr
from models.periods import local_date
from models.revenue import Account, EntryKind, RevenueSummary

_ZERO = Decimal(0)


class GrantHistory(BaseModel):
    grant_id: str
    credits: DecimalStr
    price: DecimalStr = Field(description="What the customer paid for the grant (0: promotional).")
    cost_basis: DecimalStr = Field(description="price / credits: revenue per credit consumed.")
    priority: int
    effective: datetime
    expires: datetime
    invoice_key: str | None = Field(description="The commitment or top-up invoice that sold it.")
    consumed: DecimalStr
    expired: DecimalStr
    balance: DecimalStr
    recognized: DecimalStr = Field(
        description="Revenue recognized from the grant's deferred balance as its credits paid "
                    "usage.")
    breakage: DecimalStr = Field(
        description="Revenue recognized when its unused credits expired.")


class CreditMovement(BaseModel):
    on: date = Field(description="Business date: effective, invoice issue date, or expiry.")
    kind: Literal["grant", "consume", "expire"]
    grant_id: str
    credits: DecimalStr = Field(description="Signed: + granted, - consumed or expired.")
    balance: DecimalStr = Field(description="Credit balance of the contract after it.")
    invoice_key: str | None
    invoice_number: str | None
    breakage: DecimalStr | None = Field(
        default=None, description="For an expiry: the revenue it recognized as breakage.")


class CreditHistory(BaseModel):
    contract_id: str
    currency: str
    summary: CreditSummary
    grants: list[GrantHistory]
    movements: list[CreditMovement]


class ContractRevenue(BaseModel):
    """The ``credits`` and ``revenue`` objects ``billow simulate`` prints, from the ledger."""

    contract_id: str
    currency: str
    credits: CreditSummary
    revenue: RevenueSummary


async def credit_history(
    conn: AsyncConnection, contract_id: str, currency: str, timezone: str
) -> CreditHistory:
    journal = await load_journal(conn, contract_id)
    recognized: dict[str, Decimal] = {}
    breakage: dict[str, Decimal] = {}
    for e in journal:
        if e.grant_id is None:
            continue
        if e.kind is EntryKind.USAGE_FROM_CREDITS:
            recognized[e.grant_id] = recognized.get(e.grant_id, _ZERO) - e.net(
                Account.DEFERRED_REVENUE)
        elif e.kind is EntryKind.BREAKAGE:
            breakage[e.grant_id] = breakage.get(e.grant_id, _ZERO) - e.net(
                Account.DEFERRED_REVENUE)
    grant_rows = (await conn.execute(text(
        """
        SELECT g.grant_id, g.credits, g.price, g.priority, g.effective, g.expires, g.invoice_key,
               coalesce(sum(-l.amount) FILTER (WHERE l.kind = 'consume'), 0) AS consumed,
               coalesce(sum(-l.amount) FILTER (WHERE l.kind = 'expire'), 0) AS expired
        FROM credit_grants g
        LEFT JOIN credit_ledger l ON l.contract_id = g.contract_id AND l.grant_id = g.grant_id
        WHERE g.contract_id = :cid GROUP BY g.id ORDER BY g.id
        """), {"cid": contract_id})).all()
    grants = [
        GrantHistory(
            grant_id=g.grant_id, credits=g.credits, price=g.price,
            cost_basis=(g.price / g.credits) if g.credits else _ZERO, priority=g.priority,
            effective=g.effective, expires=g.expires, invoice_key=g.invoice_key,
            consumed=g.consumed, expired=g.expired, balance=g.credits - g.consumed - g.expired,
            recognized=recognized.get(g.grant_id, _ZERO),
            breakage=breakage.get(g.grant_id, _ZERO),
        )
        for g in grant_rows
    ]
    by_grant = {g.grant_id: g for g in grants}
    rows = (await conn.execute(text(
        """
        SELECT l.kind, l.grant_id, l.amount, l.invoice_key, i.number, i.issued_on,
               (SELECT min(e.booked_on) FROM journal_entries e
                WHERE e.contract_id = l.contract_id AND e.grant_id = l.grant_id
                  AND e.kind = 'breakage') AS breakage_on
        FROM credit_ledger l
        LEFT JOIN invoices i ON i.contract_id = l.contract_id AND i.key = l.invoice_key
        WHERE l.contract_id = :cid ORDER BY l.id
        """), {"cid": contract_id})).all()
    movements: list[CreditMovement] = []
    balance = _ZERO
    for r in rows:
        grant = by_grant.get(r.grant_id)
        balance += r.amount
        movements.append(CreditMovement(
            on=_movement_date(r, grant, timezone), kind=r.kind, grant_id=r.grant_id,
            credits=r.amount, balance=balance,
            invoice_key=r.invoice_key if r.kind != "expire" else None,
            invoice_number=r.number if r.kind != "expire" else None,
            breakage=(grant.breakage if grant is not None else _ZERO)
            if r.kind == "expire" else None,
        ))
    return CreditHistory(contract_id=contract_id, currency=currency,
                         summary=await credit_summary(conn, contract_id),
                         grants=grants, movements=movements)


def _movement_date(row: Any, grant: GrantHistory | None, timezone: str) -> date:
    if row.kind == "consume" and row.issued_on is not None:
        return row.issued_on  # type: ignore[no-any-return]
    if row.kind == "expire" and row.breakage_on is not None:
        return row.breakage_on  # type: ignore[no-any-return]
    if grant is None:  # unreachable: every movement belongs to a grant of the contract
        raise LookupError(f"credit movement of unknown grant {row.grant_id!r}")
    return local_date(grant.effective if row.kind == "grant" else grant.expires, timezone)


async def contract_revenue(
    conn: AsyncConnection, contract_id: str, currency: str
) -> ContractRevenue:
    return ContractRevenue(
        contract_id=contract_id, currency=currency,
        credits=await credit_summary(conn, contract_id),
        revenue=await revenue_summary(conn, contract_id, currency),
    )


# --- collection -----------------------------------------------------------------


class PaymentRecord(BaseModel):
    payment_id: str
    amount: DecimalStr
    received_on: date
    method: str = Field(description="How it arrived: manual (API/CLI) or the gateway's name.")
    gateway_ref: str | None


class ReminderRecord(BaseModel):
    step: str = Field(description="overdue, reminder_1, reminder_7 or reminder_30.")
    on: date


class UnappliedRecord(BaseModel):
    payment_id: str
    amount: DecimalStr
    received_on: date
    reason: str


class InvoiceCollection(BaseModel):
    invoice_key: str
    number: str | None
    status: str
    currency: str
    total: DecimalStr
    amount_paid: DecimalStr
    due_on: date | None
    paid_on: date | None
    payments: list[PaymentRecord]
    reminders: list[ReminderRecord]
    unapplied: list[UnappliedRecord] = Field(
        description="Money a gateway took after the invoice was paid another way.")


async def collection(
    conn: AsyncConnection, contract_id: str, invoice_key: str | None = None
) -> list[InvoiceCollection]:
    """Each finalized invoice (or the one ``invoice_key``) with its payments and reminders."""
    params: dict[str, Any] = {"cid": contract_id}
    only = ""
    if invoice_key is not None:
        only = " AND key = :key"
        params["key"] = invoice_key
    invoices = (await conn.execute(text(
        "SELECT id, key, number, status, currency, total, amount_paid, due_on, paid_on "
        f"FROM invoices WHERE contract_id = :cid AND number IS NOT NULL{only} "
        f"ORDER BY {INVOICE_NUMBER_ORDER}"), params)).all()
    payments = (await conn.execute(text(
        "SELECT invoice_id, payment_key, amount, received_on, method, gateway_ref FROM payments "
        "WHERE contract_id = :cid ORDER BY id"), {"cid": contract_id})).all()
    reminders = (await conn.execute(text(
        "SELECT invoice_key, kind, occurred_on FROM dunning_events WHERE contract_id = :cid "
        "ORDER BY occurred_on, id"), {"cid": contract_id})).all()
    unapplied = (await conn.execute(text(
        "SELECT invoice_key, payment_key, amount, received_on, reason FROM unapplied_payments "
        "WHERE contract_id = :cid ORDER BY id"), {"cid": contract_id})).all()
    return [
        InvoiceCollection(
            invoice_key=inv.key, number=inv.number, status=inv.status, currency=inv.currency,
            total=inv.total, amount_paid=inv.amount_paid, due_on=inv.due_on, paid_on=inv.paid_on,
            payments=[PaymentRecord(payment_id=p.payment_key, amount=p.amount,
                                    received_on=p.received_on, method=p.method,
                                    gateway_ref=p.gateway_ref)
                      for p in payments if p.invoice_id == inv.id],
            reminders=[ReminderRecord(step=d.kind, on=d.occurred_on)
                       for d in reminders if d.invoice_key == inv.key],
            unapplied=[UnappliedRecord(payment_id=u.payment_key, amount=u.amount,
                                       received_on=u.received_on, reason=u.reason)
                       for u in unapplied if u.invoice_key == inv.key],
        )
        for inv in invoices
    ]


# --- line descriptions ------------------------------------------------------------


async def line_descriptions(
    conn: AsyncConnection, contract_id: str, invoice_key: str,
    lines: Sequence[Mapping[str, Any]],
) -> list[str]:
    """Each line of the invoice ``invoice_key`` in words (meter and fee names, the
    credits a commitment or top-up sold)."""
    row = (await conn.execute(text("SELECT terms FROM contracts WHERE id = :c"),
                              {"c": contract_id})).one_or_none()
    if row is None:
        return ["" for _ in lines]
    terms = ContractTerms.model_validate(row.terms)
    g = (await conn.execute(text(
        "SELECT grant_id, credits, effective, expires FROM credit_grants "
        "WHERE contract_id = :c AND invoice_key = :k ORDER BY id LIMIT 1"),
        {"c": contract_id, "k": invoice_key})).one_or_none()
    grant = None if g is None else SoldGrant(
        grant_id=g.grant_id, credits=g.credits,
        effective=local_date(g.effective, terms.timezone),
        expires=local_date(g.expires, terms.timezone))
    return describe_lines(lines, terms, grant)
