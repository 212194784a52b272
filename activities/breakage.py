"""Expired credits and their breakage revenue, written once per grant."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.events import emit_event
from activities.ledger_store import (
    insert_ledger_entry,
    load_journal,
    post_journal,
)
from models.credits import CreditState
from models.events import EventType
from models.revenue import (
    breakage,
    recognized_by_grant,
)


async def write_expiries_and_breakage(
    conn: AsyncConnection, cid: str, state: CreditState, booked_on: date
) -> None:
    """Ledger expiry rows for newly expired credits and breakage for their deferred revenue.

    ``state`` is the credit state after expiring; only what the ledger has not
    recorded as expired yet is written, so a grant can expire again after a
    correction returned credits to it (SPEC.md section 11), and repeating the
    call writes nothing.
    """
    written = {
        r.grant_id: (r.expired, r.n)
        for r in (
            await conn.execute(
                text(
                    "SELECT grant_id, coalesce(sum(-amount), 0) AS expired, count(*) AS n "
                    "FROM credit_ledger WHERE contract_id = :cid AND kind = 'expire' "
                    "GROUP BY grant_id"
                ),
                {"cid": cid},
            )
        ).all()
    }
    journal = await load_journal(conn, cid)
    recognized = recognized_by_grant(journal)
    expired: list[dict[str, Any]] = []
    keys = {e.key for e in journal}
    for grant, balance in zip(state.grants, state.balances, strict=True):
        done, n = written.get(grant.id, (Decimal(0), 0))
        delta = balance.expired - done
        if delta <= 0:
            continue
        if not await insert_ledger_entry(
            conn,
            entry_key=f"expire:{cid}:{grant.id}" if n == 0 else f"expire:{cid}:{grant.id}:{n + 1}",
            contract_id=cid,
            grant_id=grant.id,
            kind="expire",
            amount=-delta,
            invoice_key=None,
        ):
            continue  # written by an earlier call: its breakage and event too
        entry = breakage(grant, recognized.get(grant.id, Decimal(0)))
        if entry is not None:
            if entry.key in keys:  # the grant expired before: this is breakage again
                entry = entry.model_copy(update={"key": f"{entry.key}:{n + 1}"})
            await post_journal(conn, cid, [entry], booked_on)
        expired.append({"grant_id": grant.id, "credits": delta,
                        "breakage": entry.amount if entry is not None else Decimal(0)})
    if expired:
        await emit_event(conn, EventType.CREDITS_EXPIRED, cid, {
            "contract_id": cid, "on": booked_on, "grants": expired,
            "balance": state.summary().balance})
