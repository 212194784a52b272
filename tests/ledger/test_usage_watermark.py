"""The usage watermark: on-time usage is billed on time, every event exactly once.

Only transactions that can still insert usage hold an invoice's cut-off back
(activities/usage_query.py `read_watermark`). An open write transaction in
another database of the server, or one writing something unrelated in this
database, must not push an on-time event onto a later invoice. An ingest
transaction still open at the close holds it back (its events are billed
late, once); one that has only begun does not.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.db import asyncpg_dsn
from activities.ledger_reports import invoice_documents
from activities.usage_ingest import ingest_usage
from activities.usage_query import read_watermark, widen_xid
from activities.usage_rollup import compact_usage
from tests.ledger.test_ledger_activities import Ledger, run
from tests.support.scenario import event
from worker.simulate import ingest_all


@pytest.fixture
async def ledger(db: AsyncEngine) -> AsyncIterator[Ledger]:
    ledger = Ledger(db)
    await ledger.register()
    yield ledger


@pytest.fixture
async def other_database(server_url: str) -> AsyncIterator[str]:
    """Another database on the same server (another application, say)."""
    name = f"billow_other_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    from sqlalchemy.engine import make_url

    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _docs(ledger: Ledger) -> dict[str, dict[str, object]]:
    async with ledger.engine.connect() as conn:
        return {d["key"]: d for d in await invoice_documents(conn, ledger.terms.contract_id)}


def _late(doc: dict[str, object]) -> list[tuple[str, str, str]]:
    lines = doc["lines"]
    assert isinstance(lines, list)
    return [(ln["quantity"], ln["amount"], ln["period_start"])
            for ln in lines if ln["kind"] == "late_usage"]


async def test_open_transactions_elsewhere_do_not_hold_on_time_usage_back(
    ledger: Ledger, database_url: str, other_database: str
) -> None:
    elsewhere = await asyncpg.connect(asyncpg_dsn(other_database))
    bystander = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await elsewhere.execute("CREATE TABLE jobs (id int)")
        other_tx = elsewhere.transaction()
        await other_tx.start()
        await elsewhere.execute("INSERT INTO jobs VALUES (1)")  # a write: it has an xid
        same_db_tx = bystander.transaction()
        await same_db_tx.start()
        # Something unrelated in billow's own database (a long close, an admin).
        await bystander.execute(
            "INSERT INTO customers (id, name) VALUES ('bystander', 'Bystander')"
        )
        # Sent inside January's grace window, after both transactions began.
        await ingest_all(ledger.engine, [event("on-time", "2027-01-31T12:00:00Z", "1000")])
        jan = await run(ledger.acts.close_period, ledger.close_request(0))
        assert jan.invoice.total == Decimal("530.00")  # 1000 x 0.03 + 500.00 fee
        await other_tx.rollback()
        await same_db_tx.rollback()
    finally:
        await elsewhere.close()
        await bystander.close()
    feb = await run(ledger.acts.close_period, ledger.close_request(1))
    assert feb.invoice.total == Decimal("500.00")  # billed once, on time
    assert _late((await _docs(ledger))["usage:2027-02-01"]) == []


async def test_an_open_ingest_transaction_holds_the_close_back_and_is_billed_late_once(
    ledger: Ledger, database_url: str
) -> None:
    ingest = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tx = ingest.transaction()
        await tx.start()
        report = await ingest_usage(ingest, [event("slow", "2027-01-20T00:00:00Z", "2000")])
        assert report.accepted == 1  # stored, not committed yet
        jan = await run(ledger.acts.close_period, ledger.close_request(0))
        assert jan.invoice.total == Decimal("500.00")  # it could not see the event
        await tx.commit()
    finally:
        await ingest.close()
    feb = await run(ledger.acts.close_period, ledger.close_request(1))
    mar = await run(ledger.acts.close_period, ledger.close_request(2))
    assert _late((await _docs(ledger))["usage:2027-02-01"]) == [("2000", "60.00", "2027-01-01")]
    assert (feb.invoice.total, mar.invoice.total) == (Decimal("560.00"), Decimal("500.00"))


async def test_an_ingest_that_has_not_written_yet_does_not_hold_the_close_back(
    ledger: Ledger, database_url: str
) -> None:
    """It holds the ingest lock but has no xid yet: its xid will be above any
    watermark read now, so the close need not wait for it."""
    await ingest_all(ledger.engine, [event("e1", "2027-01-10T00:00:00Z", "1000")])
    begun = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tx = begun.transaction()
        await tx.start()
        await begun.execute("SELECT billow_begin_usage_ingest()")
        async with ledger.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            watermark = await read_watermark(raw)
            xmax = await raw.fetchval(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
        assert watermark == xmax
        await begun.execute(
            "INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions) "
            "VALUES ('e2', 'cust-1', 'tokens', '2027-01-11T00:00:00Z', 1000, "
            "'{\"model\": \"gpt-4\"}')")
        assert await begun.fetchval("SELECT pg_current_xact_id()::text::bigint") >= watermark
        jan = await run(ledger.acts.close_period, ledger.close_request(0))
        assert jan.invoice.total == Decimal("530.00")  # e1 only: e2 is not committed
        await tx.commit()
    finally:
        await begun.close()
    feb = await run(ledger.acts.close_period, ledger.close_request(1))
    assert feb.invoice.total == Decimal("530.00")  # e2, late, once


async def test_a_usage_insert_after_another_write_in_its_transaction_is_refused(
    ledger: Ledger, database_url: str
) -> None:
    """Its xid would predate its ingest mark: a close could miss it for good."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO customers (id, name) VALUES ('x', 'X')")
            with pytest.raises(asyncpg.PostgresError, match="usage_events"):
                await conn.execute(
                    "INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, "
                    "dimensions) VALUES ('e', 'cust-1', 'tokens', now(), 1, '{}')")
        # First write of its transaction: fine (the trigger marks it).
        await conn.execute(
            "INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions) "
            "VALUES ('e', 'cust-1', 'tokens', now(), 1, '{}')")
    finally:
        await conn.close()


async def test_a_close_in_repeatable_read_is_refused(ledger: Ledger, database_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction(isolation="repeatable_read"):
            with pytest.raises(ValueError, match="READ COMMITTED"):
                await read_watermark(conn)
    finally:
        await conn.close()


async def test_concurrent_ingestion_closes_and_compactions_bill_every_event_once(
    ledger: Ledger, database_url: str
) -> None:
    """Batches stream in on four connections while January to June close one
    after another and the compactor folds days; July's invoice then bills
    whatever arrived after its period closed. Every period's quantity, on time
    plus late, is exactly what was sent for it."""
    rng = random.Random(7)
    start = datetime(2027, 1, 1, tzinfo=UTC)
    events = [
        event(f"e{i}", start + timedelta(seconds=rng.randrange(181 * 86400)),
              str(rng.randrange(1, 100)))
        for i in range(6000)
    ]
    batches = [events[i: i + 60] for i in range(0, len(events), 60)]
    queue: asyncio.Queue[list[dict[str, object]]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def producer() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            while not queue.empty():
                batch = queue.get_nowait()
                assert (await ingest_usage(conn, batch)).accepted == len(batch)
                await asyncio.sleep(rng.random() / 200)
        finally:
            await conn.close()

    async def compactor() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            for day in range(1, 180, 9):
                await compact_usage(conn, before=start + timedelta(days=day))
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    async def closes() -> None:
        for index in range(6):
            await asyncio.sleep(0.05)
            await run(ledger.acts.close_period, ledger.close_request(index))

    await asyncio.gather(*(producer() for _ in range(4)), compactor(), closes())
    await run(ledger.acts.close_period, ledger.close_request(6))

    sent: dict[str, Decimal] = {}
    for e in events:
        month = str(e["timestamp"])[:7] + "-01"
        sent[month] = sent.get(month, Decimal(0)) + Decimal(str(e["quantity"]))
    billed: dict[str, Decimal] = {}
    on_time: dict[str, Decimal] = {}
    late = Decimal(0)
    for key, doc in (await _docs(ledger)).items():
        lines = doc["lines"]
        assert isinstance(lines, list)
        for ln in lines:
            if ln["kind"] == "usage":
                period = key.removeprefix("usage:")
                on_time[period] = on_time.get(period, Decimal(0)) + Decimal(ln["quantity"])
            elif ln["kind"] == "late_usage":
                period = ln["period_start"]
                late += Decimal(ln["quantity"])
            else:
                continue
            billed[period] = billed.get(period, Decimal(0)) + Decimal(ln["quantity"])
    assert billed == sent
    assert sum(on_time.values()) > 0 and late > 0  # the closes really raced the producers


async def test_a_watermark_read_again_in_one_transaction_sees_new_ingest_transactions(
    ledger: Ledger, database_url: str
) -> None:
    """pg_stat_activity is cached per transaction: read_watermark refreshes it."""
    closer = await asyncpg.connect(asyncpg_dsn(database_url))
    ingest = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with closer.transaction():
            first = await read_watermark(closer)
            await closer.fetchval("SELECT count(*) FROM pg_stat_activity")  # fills the cache
            tx = ingest.transaction()
            await tx.start()
            await ingest_usage(ingest, [event("x", "2027-01-02T00:00:00Z", "1")])
            xid = await ingest.fetchval("SELECT pg_current_xact_id()::text::bigint")
            second = await read_watermark(closer)
            await tx.rollback()
        assert first <= second <= xid
    finally:
        await closer.close()
        await ingest.close()


@pytest.mark.parametrize(
    ("xid", "reference", "expected"),
    [
        (100, 105, 100),
        (110, 105, 110),
        (0xFFFFFFF0, (1 << 32) + 5, 0xFFFFFFF0),  # before the epoch wrapped
        (3, (5 << 32) - 2, (5 << 32) + 3),  # after it
    ],
)
def test_xids_are_widened_against_a_nearby_xid8(xid: int, reference: int, expected: int) -> None:
    assert widen_xid(xid, reference) == expected


async def test_an_ingest_transaction_left_idle_is_ended_after_five_minutes(
    ledger: Ledger, database_url: str
) -> None:
    """A stuck producer cannot hold every close back for good."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await ingest_usage(conn, [event("x", "2027-01-02T00:00:00Z", "1")])
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "5min"
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "0"
        await conn.execute("SET idle_in_transaction_session_timeout = '10s'")
        async with conn.transaction():
            await ingest_usage(conn, [event("y", "2027-01-02T00:00:00Z", "1")])
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"
    finally:
        await conn.close()
