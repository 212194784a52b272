"""Reading and writing ledger rows inside one transaction.

Small helpers the ledger activities compose. Each takes an open
``AsyncConnection`` (the caller owns the transaction), so an activity's whole
effect commits or rolls back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.credits import CreditBalance, CreditGrant, CreditState
from models.operations import IssuedInvoice
from models.revenue import JournalEntry


async def lock_contract(conn: AsyncConnection, contract_id: str) -> None:
    """Serialise ledger writes of one contract (row lock until commit)."""
    found = await conn.scalar(
        text("SELECT id FROM contracts WHERE id = :id FOR UPDATE"), {"id": contract_id}
    )
    if found is None:
        raise LookupError(f"contract {contract_id!r} is not registered")


async def load_credit_state(conn: AsyncConnection, contract_id: str) -> CreditState:
    """The contract's grants with balances summed from the append-only ledger.

    Corrections (SPEC.md section 11) move credits too: ``return`` rows give
    credits a voided or credited invoice consumed back to their grant (they
    count against ``consumed``), ``revoke`` rows take unused credits out of
    ``granted`` and lower the grant's amount paid (``price_amount``). A grant
    with nothing left granted (a voided commitment) is no longer listed.
    """
    rows = (
        await conn.execute(
            text(
                """
                SELECT g.grant_id, g.credits, g.price, g.priority, g.effective, g.expires,
                       coalesce(sum(-l.amount) FILTER (WHERE l.kind = 'consume'), 0)
                       - coalesce(sum(l.amount) FILTER (WHERE l.kind = 'return'), 0)
                           AS consumed,
                       coalesce(sum(-l.amount) FILTER (WHERE l.kind = 'expire'), 0) AS expired,
                       coalesce(sum(-l.amount) FILTER (WHERE l.kind = 'revoke'), 0) AS revoked,
                       coalesce(sum(l.price_amount) FILTER (WHERE l.kind = 'revoke'), 0)
                           AS price_removed
                FROM credit_grants g
                LEFT JOIN credit_ledger l
                  ON l.contract_id = g.contract_id AND l.grant_id = g.grant_id
                WHERE g.contract_id = :cid
                GROUP BY g.id
                ORDER BY g.id
                """
            ),
            {"cid": contract_id},
        )
    ).all()
    grants: list[CreditGrant] = []
    balances: list[CreditBalance] = []
    for seq, r in enumerate(rows):
        granted = r.credits - r.revoked
        if granted <= 0:
            continue
        grants.append(
            CreditGrant(
                id=r.grant_id,
                credits=granted,
                price=r.price - r.price_removed,
                priority=r.priority,
                effective=r.effective,
                expires=r.expires,
                seq=seq,
            )
        )
        balances.append(
            CreditBalance(
                grant_id=r.grant_id,
                granted=granted,
                consumed=r.consumed,
                expired=r.expired,
                remaining=granted - r.consumed - r.expired,
            )
        )
    return CreditState(grants=grants, balances=balances)


async def insert_ledger_entry(
    conn: AsyncConnection,
    *,
    entry_key: str,
    contract_id: str,
    grant_id: str,
    kind: str,
    amount: Decimal,
    invoice_key: str | None,
    price_amount: Decimal | None = None,
) -> bool:
    """Append one credit movement; False if its key was already written."""
    inserted = await conn.scalar(
        text(
            """
            INSERT INTO credit_ledger (entry_key, contract_id, grant_id, kind, amount, invoice_key,
                price_amount)
            VALUES (:key, :cid, :gid, :kind, :amount, :inv, :price)
            ON CONFLICT (entry_key) DO NOTHING RETURNING id
            """
        ),
        {
            "key": entry_key,
            "cid": contract_id,
            "gid": grant_id,
            "kind": kind,
            "amount": amount,
            "inv": invoice_key,
            "price": price_amount,
        },
    )
    return inserted is not None


async def post_journal(
    conn: AsyncConnection,
    contract_id: str,
    entries: Sequence[JournalEntry],
    booked_on: date,
    invoice_key: str | None = None,
) -> None:
    """Post balanced entries; an entry whose key exists is skipped (idempotent).

    One statement per entry: the entry and its lines together (a line is
    written only if its entry was), so a close posts in as many round trips
    as it has entries (issue 13)."""
    for entry in entries:
        await conn.execute(
            text(
                """
                WITH entry AS (
                    INSERT INTO journal_entries
                        (entry_key, contract_id, kind, invoice_key, grant_id, booked_on)
                    VALUES (:key, :cid, :kind, :inv, :gid, :on)
                    ON CONFLICT (entry_key) DO NOTHING RETURNING id
                )
                INSERT INTO journal_lines (entry_id, position, account, debit, credit, grant_id)
                SELECT entry.id, l.pos, l.account, l.debit, l.credit, l.gid
                FROM entry, unnest(CAST(:positions AS int[]), CAST(:accounts AS text[]),
                                   CAST(:debits AS numeric[]), CAST(:credits AS numeric[]),
                                   CAST(:grants AS text[]))
                    AS l(pos, account, debit, credit, gid)
                """
            ),
            {
                "key": f"{contract_id}:{entry.key}",
                "cid": contract_id,
                "kind": entry.kind.value,
                "inv": invoice_key,
                "gid": entry.grant_id,
                "on": booked_on,
                "positions": list(range(len(entry.lines))),
                "accounts": [ln.account.value for ln in entry.lines],
                "debits": [ln.debit for ln in entry.lines],
                "credits": [ln.credit for ln in entry.lines],
                "grants": [ln.grant_id for ln in entry.lines],
            },
        )


async def load_journal(conn: AsyncConnection, contract_id: str) -> list[JournalEntry]:
    """The contract's journal as pure entries (for recognition caps and summaries)."""
    rows = (
        await conn.execute(
            text(
                """
                SELECT e.entry_key, e.kind, e.grant_id, l.account, l.debit, l.credit,
                       l.grant_id AS line_grant_id
                FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id
                WHERE e.contract_id = :cid ORDER BY e.id, l.position
                """
            ),
            {"cid": contract_id},
        )
    ).all()
    grouped: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = r.entry_key.removeprefix(f"{contract_id}:")
        entry = grouped.setdefault(
            key, {"key": key, "kind": r.kind, "grant_id": r.grant_id, "lines": []}
        )
        entry["lines"].append({"account": r.account, "debit": r.debit, "credit": r.credit,
                               "grant_id": r.line_grant_id})
    return [JournalEntry.model_validate(e) for e in grouped.values()]


# Invoice numbers in issue order: by their sequence, not as text ("INV-1000000"
# sorts before "INV-999999" as text); the prefix only separates series.
INVOICE_NUMBER_ORDER = (
    "CAST(substring(number FROM '[0-9]+$') AS numeric) NULLS LAST, number NULLS LAST"
)


async def next_invoice_number(
    conn: AsyncConnection, invoice_id: int, series: str = "default",
    events: Sequence[int] = (),
) -> IssuedInvoice:
    """Number a stored, unnumbered invoice: the last statement of its transaction.

    The series row's lock serialises finalizations from this UPDATE until
    COMMIT, so it must be the transaction's final statement: every other
    write of the close (lines, credit ledger, journal, the next period's
    draft) happens before, while other contracts keep finalizing. Numbers are
    still gapless (a rollback returns the number with the lock), never
    reused, and in commit order: the lock is taken in the order the
    finalizations commit. One statement (a data-modifying CTE) takes the
    number and writes it, so the lock is held for one round trip plus COMMIT.
    ``events``: outbox rows (written before, with the invoice as it stood)
    whose ``data.number`` the same statement fills in.
    """
    numbered = """
        WITH n AS (
            UPDATE invoice_number_series SET next_value = next_value + 1
            WHERE series = :s RETURNING prefix, next_value - 1 AS value
        ), inv AS (
            UPDATE invoices SET number = n.prefix || CASE
                    WHEN n.value < 1000000 THEN lpad(n.value::text, 6, '0')
                    ELSE n.value::text END
            FROM n WHERE invoices.id = :id AND invoices.number IS NULL
            RETURNING invoices.*
        )"""
    params: dict[str, Any] = {"s": series, "id": invoice_id}
    if events:
        numbered += """, ev AS (
            UPDATE event_outbox e SET payload = jsonb_set(e.payload, '{number}',
                to_jsonb(inv.number))
            FROM inv WHERE e.id = ANY(CAST(:events AS bigint[])) RETURNING e.id
        )"""
        params["events"] = list(events)
    row = (await conn.execute(text(numbered + " SELECT * FROM inv"), params)).one()
    return issued_from_row(row)


async def find_invoice(conn: AsyncConnection, contract_id: str, key: str) -> IssuedInvoice | None:
    row = (
        await conn.execute(
            text("SELECT * FROM invoices WHERE contract_id = :cid AND key = :key"),
            {"cid": contract_id, "key": key},
        )
    ).one_or_none()
    return None if row is None else issued_from_row(row)


def issued_from_row(row: Any) -> IssuedInvoice:
    return IssuedInvoice(
        key=row.key,
        number=row.number,
        kind=row.kind,
        status=row.status,
        currency=row.currency,
        period_start=row.period_start,
        period_end=row.period_end,
        issued_on=row.issued_on,
        due_on=row.due_on,
        subtotal=row.subtotal,
        credits_applied=row.credits_applied,
        total=row.total,
        amount_paid=row.amount_paid,
        paid_on=row.paid_on,
        credited=getattr(row, "credited", None) or Decimal(0),
        credit_allocated=getattr(row, "credit_allocated", None) or Decimal(0),
    )
