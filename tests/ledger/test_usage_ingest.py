"""Usage ingestion and the rating aggregation, against a real PostgreSQL.

The database comes from the session harness in tests/conftest.py
(``database_url``: embedded server, migrated; ``db``: tables truncated
before each test); customers and catalog rows are inserted with plain SQL.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest

from activities.db import asyncpg_dsn
from activities.usage_ingest import MAX_BATCH, BatchTooLarge, IngestStatus, ingest_usage
from activities.usage_query import (
    AggregateRow,
    MeterSpec,
    aggregate_late_usage,
    aggregate_usage,
    read_watermark,
)
from tests.ledger.usage_fixtures import METERS_V1

ACCEPTED, DUPLICATE, REJECTED = IngestStatus.ACCEPTED, IngestStatus.DUPLICATE, IngestStatus.REJECTED
CONFLICT = IngestStatus.CONFLICT
JAN = datetime(2027, 1, 1, tzinfo=UTC)
FEB = datetime(2027, 2, 1, tzinfo=UTC)
MAR = datetime(2027, 3, 1, tzinfo=UTC)

def ev(
    id: str,
    *,
    customer: str = "acme",
    meter: str = "tokens",
    ts: str | datetime = "2027-01-05T10:00:00Z",
    quantity: Any = "1",
    dimensions: Any = None,
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "id": id,
        "customer": customer,
        "meter": meter,
        "timestamp": ts.isoformat() if isinstance(ts, datetime) else ts,
        "quantity": quantity,
    }
    if dimensions is not None:
        e["dimensions"] = dimensions
    return e


async def stored(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM usage_events")
    return {r["event_id"]: r for r in rows}


# --- ingestion --------------------------------------------------------------------------


async def test_batch_stores_exactly_the_good_new_events_and_reports_each(
    conn: asyncpg.Connection,
) -> None:
    batch: list[Any] = [
        ev("e-ok", quantity="1500.25", dimensions={"model": "gpt-4"}),  # 0
        ev("e-ok", quantity="9"),  # 1 same id later in the batch, other content
        ev("e-meter", meter="gpus"),  # 2 a v2 meter; acme pins v1
        ev("e-cust", customer="nobody"),  # 3
        ev("e-naive", ts="2027-01-05T10:00:00"),  # 4
        ev("e-qty", quantity="lots"),  # 5
        ev("e-neg", quantity="-3"),  # 6
        ev("e-gx", customer="globex", meter="gpus", ts="2027-01-05T12:00:00+02:00"),  # 7
        ev("e-float", quantity=1.5),  # 8 binary floats are not decimals
        ev("e-dims", dimensions={"model": 4}),  # 9
        ev(""),  # 10
        ev("e-fixed", ts="yesterday"),  # 11 rejected first try ...
        ev("e-fixed", meter="requests"),  # 12 ... the corrected resend is stored
        ["not", "an", "object"],  # 13
        ev("e-nocontract", customer="initech"),  # 14
        ev("e-nan", quantity="NaN"),  # 15
    ]
    report = await ingest_usage(conn, batch)

    got = [(r.index, r.id, r.status) for r in report.results]
    assert got == [
        (0, "e-ok", ACCEPTED),
        (1, "e-ok", CONFLICT),
        (2, "e-meter", REJECTED),
        (3, "e-cust", REJECTED),
        (4, "e-naive", REJECTED),
        (5, "e-qty", REJECTED),
        (6, "e-neg", REJECTED),
        (7, "e-gx", ACCEPTED),
        (8, "e-float", REJECTED),
        (9, "e-dims", REJECTED),
        (10, None, REJECTED),
        (11, "e-fixed", REJECTED),
        (12, "e-fixed", ACCEPTED),
        (13, None, REJECTED),
        (14, "e-nocontract", REJECTED),
        (15, "e-nan", REJECTED),
    ]
    reasons = {r.index: r.reason or "" for r in report.results}
    assert reasons[0] == "" and reasons[7] == "" and reasons[12] == ""
    assert reasons[1] == (
        "quantity: stored 1500.25 by event 0 of this batch, sent 9; "
        "dimensions.model: stored 'gpt-4' by event 0 of this batch, sent nothing")
    assert reasons[2].startswith("meter:") and "gpus" in reasons[2]
    assert reasons[3].startswith("customer:") and "nobody" in reasons[3]
    assert reasons[4].startswith("timestamp:")
    assert reasons[5].startswith("quantity:")
    assert reasons[6].startswith("quantity:") and "negative" in reasons[6]
    assert reasons[8].startswith("quantity:")
    assert reasons[9].startswith("dimensions.model:")
    assert reasons[10].startswith("id:")
    assert reasons[11].startswith("timestamp:")
    assert "JSON object" in reasons[13]
    assert reasons[14].startswith("meter:") and "no contract" in reasons[14]
    assert reasons[15].startswith("quantity:")
    assert (report.accepted, report.duplicate, report.conflict, report.rejected) == (3, 0, 1, 12)

    rows = await stored(conn)
    assert set(rows) == {"e-ok", "e-gx", "e-fixed"}
    ok = rows["e-ok"]
    assert (ok["customer_id"], ok["meter"]) == ("acme", "tokens")
    assert ok["quantity"] == Decimal("1500.25")
    assert ok["ts"] == datetime(2027, 1, 5, 10, tzinfo=UTC)
    assert json.loads(ok["dimensions"]) == {"model": "gpt-4"}
    assert rows["e-gx"]["ts"] == datetime(2027, 1, 5, 10, tzinfo=UTC)  # +02:00 -> UTC
    assert rows["e-fixed"]["meter"] == "requests"
    assert json.loads(rows["e-gx"]["dimensions"]) == {}
    assert rows["e-gx"]["quantity"] == Decimal(1)  # the default

    # Resent across batches: a resend is a duplicate (the same instant in
    # another offset is the same timestamp), other content a conflict; the
    # stored row is never updated.
    again = await ingest_usage(
        conn, [ev("e-new"), ev("e-ok", quantity="7"), ev("e-gx", customer="globex", meter="gpus")]
    )
    assert [(r.id, r.status, r.reason) for r in again.results] == [
        ("e-new", ACCEPTED, None),
        ("e-ok", CONFLICT, "quantity: stored 1500.25, sent 7; dimensions.model: stored "
         "'gpt-4', sent nothing"),
        ("e-gx", DUPLICATE, "already stored"),
    ]
    rows = await stored(conn)
    assert set(rows) == {"e-ok", "e-gx", "e-fixed", "e-new"}
    assert rows["e-ok"]["quantity"] == Decimal("1500.25")


async def test_batch_over_the_limit_is_refused_and_nothing_is_stored(
    conn: asyncpg.Connection,
) -> None:
    too_many = [ev(f"big-{i:05d}") for i in range(MAX_BATCH + 1)]
    with pytest.raises(BatchTooLarge, match="10001 events exceeds the limit of 10000"):
        await ingest_usage(conn, too_many)
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == 0

    report = await ingest_usage(conn, too_many[:MAX_BATCH])  # the limit itself is fine
    assert report.accepted == MAX_BATCH
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == MAX_BATCH


async def test_ingest_joins_the_callers_transaction(conn: asyncpg.Connection) -> None:
    tx = conn.transaction()
    await tx.start()
    report = await ingest_usage(conn, [ev("in-tx")])
    assert report.accepted == 1
    await tx.rollback()
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == 0


async def test_concurrent_batches_with_the_same_ids_store_each_once(
    conn: asyncpg.Connection, database_url: str
) -> None:
    batch = [ev(f"c-{i:04d}", quantity=str(i)) for i in range(3000)]
    # a second batch sharing half the events, listed in the opposite order
    other = [ev(f"c-{i:04d}", quantity=str(i)) for i in range(4499, 1499, -1)]
    other_conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        first, second = await asyncio.gather(
            ingest_usage(conn, batch), ingest_usage(other_conn, other)
        )
    finally:
        await other_conn.close()
    assert first.accepted + second.accepted == 4500
    assert first.duplicate + second.duplicate == 1500
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == 4500
    ids = {r.id for r in [*first.results, *second.results] if r.status is ACCEPTED}
    assert len(ids) == 4500


async def test_a_batch_that_loses_a_race_for_an_id_is_redone_and_stores_the_rest(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """The other batch's row is not committed when this batch looks for stored
    ids; its plain INSERT then waits on it and fails when it commits."""
    from prometheus_client import REGISTRY

    def races() -> float:
        return REGISTRY.get_sample_value("billow_usage_ingest_races_total") or 0.0

    before = races()
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tx = other.transaction()
        await tx.start()
        report = await ingest_usage(other, [ev("race-1", quantity="7")])
        assert report.accepted == 1
        losing = asyncio.create_task(
            ingest_usage(conn, [ev(f"race-{i}", quantity="7") for i in range(3)])
        )
        await asyncio.sleep(0.3)
        assert not losing.done()  # waiting on the other transaction's row
        await tx.commit()
        result = await losing
    finally:
        await other.close()
    assert [(r.id, r.status) for r in result.results] == [
        ("race-0", ACCEPTED), ("race-1", DUPLICATE), ("race-2", ACCEPTED)
    ]
    assert result.results[1].reason == "already stored"
    rows = await stored(conn)
    assert sorted(rows) == ["race-0", "race-1", "race-2"]
    assert rows["race-1"]["quantity"] == Decimal(7)  # the winner's payload, once
    assert races() == before + 1


# --- aggregation ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ev:
    id: str
    customer: str
    meter: str
    ts: datetime
    quantity: Decimal
    dims: dict[str, str]


def _reference(
    events: Iterable[_Ev],
    customer: str,
    meters: Sequence[MeterSpec],
    start: datetime,
    end: datetime,
    splits: Sequence[datetime] = (),
) -> list[AggregateRow]:
    """The aggregation in plain Python, straight from SPEC 3 and the module docstring."""
    out: list[AggregateRow] = []
    for m in meters:
        bounds = sorted({start, end, *(t for t in (*splits, *m.splits) if start < t < end)})
        groups: dict[tuple[int, tuple[tuple[str, str], ...]], list[_Ev]] = {}
        for e in events:
            if e.customer != customer or e.meter != m.key or not start <= e.ts < end:
                continue
            part = max(i for i, b in enumerate(bounds[:-1]) if b <= e.ts)
            key = tuple((g, e.dims[g]) for g in m.group_by if g in e.dims)
            groups.setdefault((part, key), []).append(e)
        for (part, key), evs in groups.items():
            if m.aggregation == "sum":
                q = sum((e.quantity for e in evs), Decimal(0))
            elif m.aggregation == "count":
                q = Decimal(len(evs))
            elif m.aggregation == "max":
                q = max(e.quantity for e in evs)
            elif m.aggregation == "unique_count":
                assert m.unique_by is not None
                q = Decimal(len({e.dims[m.unique_by] for e in evs if m.unique_by in e.dims}))
            else:
                q = max(evs, key=lambda e: (e.ts, e.id)).quantity
            out.append(
                AggregateRow(
                    part,
                    bounds[part],
                    bounds[part + 1],
                    m.key,
                    dict(key),
                    q,
                    min(e.ts for e in evs),
                )
            )
    return out


def _as_set(rows: Iterable[AggregateRow]) -> set[tuple[Any, ...]]:
    return {
        (
            r.part_index,
            r.part_start,
            r.part_end,
            r.meter,
            tuple(sorted(r.dimensions.items())),
            r.quantity,
            r.first_seen,
        )
        for r in rows
    }


def _random_events(rng: random.Random, n: int, instants: Sequence[datetime]) -> list[_Ev]:
    """Events over January, many of them exactly on the interesting instants."""
    out = []
    for i in range(n):
        meter = rng.choice(METERS_V1)
        if rng.random() < 0.3:
            ts = rng.choice(instants)  # boundaries, splits, ties for `latest`
        else:
            ts = JAN - timedelta(days=2) + timedelta(seconds=rng.randrange(35 * 86400))
        dims = {
            k: rng.choice(["a", "b", "c"])
            for k in ("model", "region", "tier", "cluster")
            if rng.random() < 0.8  # some events lack a group_by dimension
        }
        if rng.random() < 0.85:
            dims["user"] = f"u{rng.randrange(12)}"
        qty = Decimal(rng.randrange(0, 10**6)).scaleb(-rng.randrange(0, 4))
        customer = "acme" if rng.random() < 0.9 else "globex"
        out.append(_Ev(f"r-{i:05d}", customer, meter.key, ts, qty, dims))
    return out


def _raw(e: _Ev) -> dict[str, Any]:
    return {
        "id": e.id,
        "customer": e.customer,
        "meter": e.meter,
        "timestamp": e.ts.isoformat(),
        "quantity": str(e.quantity),
        "dimensions": e.dims,
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_aggregation_matches_a_python_reference(conn: asyncpg.Connection, seed: int) -> None:
    rng = random.Random(seed)
    split = datetime(2027, 1, 15, 12, tzinfo=UTC)
    tokens_split = datetime(2027, 1, 20, tzinfo=UTC)
    instants = [JAN, FEB, split, tokens_split, JAN + timedelta(days=3), FEB - timedelta(days=1)]
    events = _random_events(rng, 3000, instants)
    # globex has no tokens meter: keep its events ingestible
    events = [e for e in events if e.customer == "acme"]
    report = await ingest_usage(conn, [_raw(e) for e in events])
    assert report.accepted == len(events)

    meters = [
        MeterSpec(
            m.key,
            m.aggregation,
            m.group_by,
            m.unique_by,
            splits=(tokens_split,) if m.key == "tokens" else (),
        )
        for m in METERS_V1
    ]
    async with conn.transaction():
        watermark = await read_watermark(conn)
        rows = await aggregate_usage(
            conn,
            customer_id="acme",
            meters=meters,
            start=JAN,
            end=FEB,
            watermark=watermark,
            splits=[split],
        )
    expected = _reference(events, "acme", meters, JAN, FEB, [split])
    assert _as_set(rows) == _as_set(expected)
    assert len(rows) == len(expected)
    # each meter on its own (the statement is shaped by the aggregations present)
    for m in meters:
        alone = await aggregate_usage(
            conn,
            customer_id="acme",
            meters=[m],
            start=JAN,
            end=FEB,
            watermark=watermark,
            splits=[split],
        )
        assert _as_set(alone) == _as_set(r for r in expected if r.meter == m.key)
    # a window no split falls into: one part per meter
    start, end = JAN + timedelta(days=3), split
    whole = await aggregate_usage(
        conn, customer_id="acme", meters=meters, start=start, end=end, watermark=watermark
    )
    assert {r.part_index for r in whole} == {0}
    assert _as_set(whole) == _as_set(_reference(events, "acme", meters, start, end))
    # boundary rule: an event exactly at a split belongs to the part starting there
    at_split = [e for e in events if e.ts == split and e.meter == "storage_gb"]
    if at_split:
        assert any(r.part_start == split and r.meter == "storage_gb" for r in rows)
    # rows come in meter order, then part, then first_seen
    order = [m.key for m in meters]
    keys = [(order.index(r.meter), r.part_index, r.first_seen) for r in rows]
    assert keys == sorted(keys)


async def test_aggregation_respects_the_watermark_and_the_period_bounds(
    conn: asyncpg.Connection, database_url: str
) -> None:
    counted = [
        ev("at-start", ts=JAN.isoformat(), quantity="1", dimensions={"model": "x"}),
        ev("before-end", ts="2027-01-31T23:59:59.999999Z", quantity="2", dimensions={"model": "x"}),
    ]
    ignored = [
        ev("at-end", ts=FEB.isoformat(), quantity="100", dimensions={"model": "x"}),
        ev("before-start", ts="2026-12-31T23:59:59Z", quantity="100", dimensions={"model": "x"}),
        ev("other-customer", customer="globex", meter="gpus", quantity="100"),
    ]
    await ingest_usage(conn, counted + ignored)
    # A transaction that started before the watermark and commits after it:
    # its events must wait for the next watermark, whatever their timestamp.
    slow = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tx = slow.transaction()
        await tx.start()
        await ingest_usage(slow, [ev("in-flight", quantity="1000", dimensions={"model": "x"})])
        async with conn.transaction():
            w1 = await read_watermark(conn)
            rows = await aggregate_usage(
                conn, customer_id="acme", meters=METERS_V1[:1], start=JAN, end=FEB, watermark=w1
            )
        await tx.commit()
    finally:
        await slow.close()
    got = [(r.dimensions, r.quantity, r.first_seen) for r in rows]
    assert got == [({"model": "x"}, Decimal(3), JAN)]

    async with conn.transaction():
        w2 = await read_watermark(conn)
        rows = await aggregate_usage(
            conn, customer_id="acme", meters=METERS_V1[:1], start=JAN, end=FEB, watermark=w2
        )
    assert [r.quantity for r in rows] == [Decimal(1003)]
    late = await aggregate_late_usage(
        conn,
        customer_id="acme",
        meters=METERS_V1[:1],
        periods=[JAN, FEB],
        previous_watermark=w1,
        watermark=w2,
    )
    assert [(r.period_index, r.quantity) for r in late] == [(0, Decimal(1000))]


async def test_late_events_show_up_once_and_not_in_the_next_period(
    conn: asyncpg.Connection,
) -> None:
    tokens = [METERS_V1[0]]

    async def usage(start: datetime, end: datetime, watermark: int) -> list[tuple[Any, ...]]:
        rows = await aggregate_usage(
            conn, customer_id="acme", meters=tokens, start=start, end=end, watermark=watermark
        )
        return [(r.dimensions["model"], r.quantity) for r in rows]

    split = datetime(2027, 1, 20, tzinfo=UTC)

    async def late(prev: int, watermark: int) -> list[tuple[Any, ...]]:
        rows = await aggregate_late_usage(
            conn,
            customer_id="acme",
            meters=tokens,
            periods=[JAN, FEB, MAR],
            previous_watermark=prev,
            watermark=watermark,
            splits=[split],
        )
        return [
            (
                r.period_index,
                r.period_start,
                r.part_index,
                r.part_start,
                r.dimensions["model"],
                r.quantity,
            )
            for r in rows
        ]

    await ingest_usage(
        conn,
        [
            ev("jan-1", ts="2027-01-10T00:00:00Z", quantity="10", dimensions={"model": "a"}),
            ev("feb-1", ts="2027-02-10T00:00:00Z", quantity="20", dimensions={"model": "a"}),
        ],
    )
    w1 = await read_watermark(conn)  # January and February invoiced with w1
    assert await usage(JAN, FEB, w1) == [("a", 10)]
    assert await usage(FEB, MAR, w1) == [("a", 20)]

    # Arriving after both invoices: two for January (one after the split),
    # one exactly at the February boundary, one for the open March period.
    await ingest_usage(
        conn,
        [
            ev("jan-late", ts="2027-01-11T00:00:00Z", quantity="1", dimensions={"model": "a"}),
            ev("jan-late-2", ts="2027-01-25T00:00:00Z", quantity="2", dimensions={"model": "a"}),
            ev("feb-boundary", ts=FEB.isoformat(), quantity="4", dimensions={"model": "a"}),
            ev("mar-1", ts="2027-03-02T00:00:00Z", quantity="8", dimensions={"model": "a"}),
        ],
    )
    w2 = await read_watermark(conn)
    assert await late(w1, w2) == [
        (0, JAN, 0, JAN, "a", 1),
        (0, JAN, 1, split, "a", 2),
        (1, FEB, 0, FEB, "a", 4),
    ]
    # March's own usage is only March's event; the late ones are not in it
    assert await usage(MAR, datetime(2027, 4, 1, tzinfo=UTC), w2) == [("a", 8)]
    # ... and the next late window does not report them again
    await ingest_usage(conn, [ev("unrelated", customer="globex", meter="gpus")])
    w3 = await read_watermark(conn)
    assert await late(w2, w3) == []


async def test_meter_spec_and_bounds_are_checked(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="unique_by"):
        MeterSpec("seats", "unique_count")
    with pytest.raises(ValueError, match="aggregation"):
        MeterSpec("x", "median")
    with pytest.raises(ValueError, match="end"):
        await aggregate_usage(
            conn, customer_id="acme", meters=METERS_V1, start=FEB, end=JAN, watermark=1
        )
    with pytest.raises(ValueError, match="UTC offset"):
        await aggregate_usage(
            conn,
            customer_id="acme",
            meters=METERS_V1,
            start=datetime(2027, 1, 1),
            end=FEB,
            watermark=1,
        )
    assert (
        await aggregate_usage(conn, customer_id="acme", meters=[], start=JAN, end=FEB, watermark=1)
        == []
    )
