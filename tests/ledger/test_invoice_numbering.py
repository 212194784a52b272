"""Invoice numbering holds the series lock only for the instant of the commit.

Numbers stay gapless, unique and in finalization (commit) order
(`test_concurrent_finalizations_get_distinct_consecutive_numbers` in
test_ledger_activities.py), but a finalization that is slow or blocked in its
own work must not stop every other contract's finalization: the number is the
last thing its transaction takes (issue 13).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.ledger.test_ledger_activities import Ledger, run


async def _waiting_on_a_lock(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND wait_event_type = 'Lock'")
            )
            or 0
        )


async def test_a_blocked_finalization_does_not_hold_up_the_others(db: AsyncEngine) -> None:
    slow, other = Ledger(db, "c-slow", "cust-slow"), Ledger(db, "c-other", "cust-other")
    await slow.register()
    await other.register()
    # Another transaction holds the slow contract's open draft (an operator's
    # edit, a report taking it FOR UPDATE): the close, which finalizes that
    # row, has to wait for it.
    blocker = await db.connect()
    tx = await blocker.begin()
    await blocker.execute(
        text("SELECT id FROM invoices WHERE contract_id = 'c-slow' "
             "AND key = 'usage:2027-01-01' FOR UPDATE")
    )
    request = slow.close_request(0).model_copy(update={"next_period": slow.periods[1]})
    slow_close = asyncio.create_task(run(slow.acts.close_period, request))
    try:
        for _ in range(100):
            if await _waiting_on_a_lock(db) >= 1:
                break
            await asyncio.sleep(0.05)
        assert not slow_close.done()
        # Before issue 13 the slow close held the series row lock here, and
        # this finalization of another contract waited for it.
        finished = await asyncio.wait_for(
            run(other.acts.close_period, other.close_request(0)), timeout=10
        )
        assert finished.invoice.number == "INV-000001"
    finally:
        await tx.rollback()
        await blocker.close()
    slow_result = await asyncio.wait_for(slow_close, timeout=10)
    # Numbers follow the order in which finalizations committed.
    assert slow_result.invoice.number == "INV-000002"
    async with db.connect() as conn:
        series = await conn.scalar(
            text("SELECT next_value FROM invoice_number_series WHERE series = 'default'"))
        draft = await conn.scalar(
            text("SELECT status FROM invoices WHERE contract_id = 'c-slow' "
                 "AND key = 'usage:2027-02-01'")
        )
    assert (series, draft) == (3, "draft")


async def test_a_retried_finalization_keeps_its_number(db: AsyncEngine) -> None:
    ledger = Ledger(db)
    await ledger.register()
    first = await run(ledger.acts.close_period, ledger.close_request(0))
    again = await run(ledger.acts.close_period, ledger.close_request(0))
    second = await run(ledger.acts.close_period, ledger.close_request(1))
    assert (first.invoice.number, again.invoice.number, second.invoice.number) == (
        "INV-000001", "INV-000001", "INV-000002")
    assert first.invoice.status == "open" and first.invoice.total > 0


async def test_numbers_past_six_digits_keep_every_digit(db: AsyncEngine) -> None:
    ledger = Ledger(db)
    await ledger.register()
    async with db.begin() as conn:
        await conn.execute(text(
            "UPDATE invoice_number_series SET next_value = 999999 WHERE series = 'default'"))
    a = await run(ledger.acts.close_period, ledger.close_request(0))
    b = await run(ledger.acts.close_period, ledger.close_request(1))
    assert (a.invoice.number, b.invoice.number) == ("INV-999999", "INV-1000000")
