"""The usage compactor and rating from rollups, against real PostgreSQL.

Rating from rollups must give exactly what rating from raw events gives (and
what the Python reference gives), whatever was folded when, with late events,
partial days at both ends, splits inside and on day boundaries, and
compactions newer than the invoice's watermark.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest

from activities.db import asyncpg_dsn
from activities.usage_ingest import ingest_usage
from activities.usage_query import MeterSpec, aggregate_usage, read_watermark
from activities.usage_rollup import compact_usage, utc_midnight
from tests.ledger.test_usage_ingest import (
    FEB,
    JAN,
    _as_set,
    _Ev,
    _random_events,
    _raw,
    _reference,
)
from tests.ledger.usage_fixtures import METERS_V1

# New York: the contract's periods start at 05:00Z, in the middle of a UTC day.
START = JAN + timedelta(hours=5)
END = FEB + timedelta(hours=5)
SPLIT = datetime(2027, 1, 15, 12, 30, tzinfo=UTC)  # inside a day
TOKENS_SPLIT = datetime(2027, 1, 20, tzinfo=UTC)  # exactly on a UTC midnight
METERS = [
    MeterSpec(
        m.key,
        m.aggregation,
        m.group_by,
        m.unique_by,
        splits=(TOKENS_SPLIT,) if m.key == "tokens" else (),
    )
    for m in METERS_V1
]


async def _ingest(conn: asyncpg.Connection, events: Sequence[_Ev]) -> None:
    report = await ingest_usage(conn, [_raw(e) for e in events])
    assert report.accepted == len(events)


async def _rate(
    conn: asyncpg.Connection, *, rollups: bool, watermark: int | None = None
) -> set[tuple[object, ...]]:
    async with conn.transaction():
        wm = watermark if watermark is not None else await read_watermark(conn)
        rows = await aggregate_usage(
            conn,
            customer_id="acme",
            meters=METERS,
            start=START,
            end=END,
            watermark=wm,
            splits=[SPLIT],
            rollups=rollups,
        )
    return _as_set(rows)


def _events(seed: int) -> list[_Ev]:
    rng = random.Random(seed)
    instants = [JAN, FEB, START, END, SPLIT, TOKENS_SPLIT, JAN + timedelta(days=9)]
    return [e for e in _random_events(rng, 2500, instants) if e.customer == "acme"]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rating_from_rollups_equals_rating_from_raw_events(
    conn: asyncpg.Connection, seed: int
) -> None:
    events = sorted(_events(seed), key=lambda e: e.ts)
    # Arrival in three waves, with a compaction after each of the first two;
    # a tenth of each later wave is late (its day was already folded).
    rng = random.Random(seed)
    rng.shuffle(late := events[: len(events) // 10])
    on_time = events[len(events) // 10 :]
    waves = [on_time[: len(on_time) // 3], on_time[len(on_time) // 3 : 2 * len(on_time) // 3]]
    waves.append(on_time[2 * len(on_time) // 3 :])
    await _ingest(conn, waves[0])
    first = await compact_usage(conn, before=datetime(2027, 1, 12, tzinfo=UTC))
    await _ingest(conn, [*waves[1], *late[: len(late) // 2]])
    second = await compact_usage(conn, before=datetime(2027, 1, 25, tzinfo=UTC))
    await _ingest(conn, [*waves[2], *late[len(late) // 2 :]])
    assert first.id is not None and second.id is not None
    assert first.events > 0 and second.events > 0

    expected = _as_set(_reference(events, "acme", METERS, START, END, [SPLIT]))
    assert await _rate(conn, rollups=False) == expected
    assert await _rate(conn, rollups=True) == expected
    # outside a transaction too (it opens its own)
    alone = await aggregate_usage(
        conn, customer_id="acme", meters=METERS, start=START, end=END,
        watermark=await read_watermark(conn), splits=[SPLIT],
    )
    assert _as_set(alone) == expected and not conn.is_in_transaction()

    # And the rollups are what was read: change one and the rating moves.
    await conn.execute(
        "UPDATE usage_rollups SET quantity_sum = quantity_sum + 1 WHERE ctid = ("
        " SELECT ctid FROM usage_rollups WHERE meter = 'tokens' AND customer_id = 'acme'"
        " AND day >= '2027-01-02Z' AND day < '2027-01-12Z' LIMIT 1)"
    )
    assert await _rate(conn, rollups=True) != expected
    assert await _rate(conn, rollups=False) == expected


async def test_every_event_is_folded_once_and_only_below_the_watermark(
    conn: asyncpg.Connection,
) -> None:
    events = _events(7)
    await _ingest(conn, events[:1000])
    one = await compact_usage(conn, before=datetime(2027, 1, 20, tzinfo=UTC))
    await _ingest(conn, events[1000:])
    two = await compact_usage(conn, before=datetime(2027, 2, 10, tzinfo=UTC))
    again = await compact_usage(conn, before=datetime(2027, 2, 10, tzinfo=UTC))
    assert again.id is None and again.events == 0  # nothing new: no run
    # never backwards: an earlier `before` is raised to the last run's
    back = await compact_usage(conn, before=datetime(2027, 1, 1, tzinfo=UTC))
    assert back.folded_before == datetime(2027, 2, 10, tzinfo=UTC)

    folded = await conn.fetchval("SELECT sum(event_count) FROM usage_rollups")
    below = await conn.fetchval(
        "SELECT count(*) FROM usage_events WHERE txid < $1 AND ts < $2",
        two.upto_txid,
        two.folded_before,
    )
    assert folded == below == one.events + two.events
    # per group, the rollups add up to the raw events
    mismatches = await conn.fetch(
        """
        SELECT e.customer_id, e.meter, e.day, e.dimensions
        FROM (SELECT customer_id, meter, date_trunc('day', ts, 'UTC') AS day, dimensions,
                     sum(quantity) AS q, count(*) AS n, max(quantity) AS mx, min(ts) AS f
              FROM usage_events WHERE ts < $1 GROUP BY 1, 2, 3, 4) e
        FULL JOIN (SELECT customer_id, meter, day, dimensions, sum(quantity_sum) AS q,
                          sum(event_count) AS n, max(quantity_max) AS mx, min(first_ts) AS f
                   FROM usage_rollups GROUP BY 1, 2, 3, 4) r
          USING (customer_id, meter, day, dimensions)
        WHERE e.q IS DISTINCT FROM r.q OR e.n IS DISTINCT FROM r.n
           OR e.mx IS DISTINCT FROM r.mx OR e.f IS DISTINCT FROM r.f
        """,
        two.folded_before,
    )
    assert mismatches == []


async def test_a_compaction_newer_than_the_watermark_is_not_used(
    conn: asyncpg.Connection, database_url: str
) -> None:
    events = sorted(_events(11), key=lambda e: e.ts)
    await _ingest(conn, events[:1500])
    await compact_usage(conn, before=datetime(2027, 1, 25, tzinfo=UTC))
    watermark = await read_watermark(conn)
    expected = await _rate(conn, rollups=False, watermark=watermark)
    # Events for already folded days arrive, and a compaction folds them,
    # after the invoice's watermark was read.
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await _ingest(other, events[1500:])
        newer = await compact_usage(other, before=datetime(2027, 1, 31, tzinfo=UTC))
    finally:
        await other.close()
    assert newer.upto_txid > watermark
    assert await _rate(conn, rollups=True, watermark=watermark) == expected
    assert await _rate(conn, rollups=True) == await _rate(conn, rollups=False)
    assert await _rate(conn, rollups=True) != expected


async def test_compaction_folds_closed_utc_days_only_by_default(
    conn: asyncpg.Connection,
) -> None:
    now = await conn.fetchval("SELECT now()")
    today = utc_midnight(now)
    await conn.execute(
        "INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions) "
        "VALUES ('y', 'acme', 'tokens', $1, 2, '{}'), ('t', 'acme', 'tokens', $2, 3, '{}')",
        today - timedelta(hours=1),
        today + timedelta(minutes=1),
    )
    run = await compact_usage(conn)
    assert run.folded_before == today
    assert run.events == 1
    assert await conn.fetchval("SELECT last_event_id FROM usage_rollups") == "y"


async def test_before_must_be_a_utc_midnight(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="before"):
        await compact_usage(conn, before=datetime(2027, 1, 2, 5, tzinfo=UTC))
    with pytest.raises(ValueError, match="before"):
        await compact_usage(conn, before=datetime(2027, 1, 2))
    assert await conn.fetchval("SELECT count(*) FROM usage_compactions") == 0


async def test_events_with_large_dimensions_fold_and_rate_the_same(
    conn: asyncpg.Connection,
) -> None:
    # 20 keys of 256 characters: more than a b-tree entry may hold
    big = {f"{k:02d}".ljust(256, "k"): "v" * 256 for k in range(20)}
    events = [
        {"id": f"big-{i}", "customer": "acme", "meter": "tokens",
         "timestamp": f"2027-01-0{2 + i}T10:00:00Z", "quantity": "5",
         "dimensions": {"model": f"m{i}", **big}}
        for i in range(3)
    ]
    assert (await ingest_usage(conn, events)).accepted == 3
    run = await compact_usage(conn, before=datetime(2027, 1, 20, tzinfo=UTC))
    assert run.events == 3
    assert await _rate(conn, rollups=True) == await _rate(conn, rollups=False)


async def test_compaction_refuses_an_older_snapshot(conn: asyncpg.Connection) -> None:
    async with conn.transaction(isolation="repeatable_read"):
        with pytest.raises(ValueError, match="READ COMMITTED"):
            await compact_usage(conn, before=datetime(2027, 1, 2, tzinfo=UTC))


_ID_CHARS = ["a", "b", "B", "é", "z", "Z", "ä", "€", "0", "~"]  # byte order != collation order


def _fuzz_events(rng: random.Random, n: int, wave: int) -> list[dict[str, object]]:
    on = [JAN + timedelta(days=d) for d in range(20)] + [JAN + timedelta(days=5, hours=7)]
    out: list[dict[str, object]] = []
    for i in range(n):
        meter = rng.choice(METERS_V1)
        ts = rng.choice(on) if rng.random() < 0.4 else (
            JAN + timedelta(seconds=rng.randrange(20 * 86400)))
        dims = {k: rng.choice("ab") for k in ("model", "region", "tier", "cluster")
                if rng.random() < 0.7}
        if rng.random() < 0.8:
            dims["user"] = f"u{rng.randrange(5)}"
        offset = timezone(timedelta(hours=rng.choice([-5, 0, 3])))
        out.append({
            "id": "".join(rng.choice(_ID_CHARS) for _ in range(3)) + f"-{wave}-{i}",
            "customer": "acme", "meter": meter.key, "timestamp": ts.astimezone(offset).isoformat(),
            "quantity": str(rng.randrange(0, 1000) / (10 ** rng.randrange(0, 3))),
            "dimensions": dims,
        })
    return out


@pytest.mark.parametrize("seed", range(3))
async def test_random_windows_rate_the_same_from_rollups_and_raw_events(
    conn: asyncpg.Connection, database_url: str, seed: int
) -> None:
    """Waves of events, compactions at random days, a transaction holding the
    watermark back now and then; then random windows (any offset, splits
    inside days and on midnights) at random past watermarks."""
    rng = random.Random(seed)
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    holder = None
    watermarks = []
    try:
        for wave in range(6):
            if holder is None and rng.random() < 0.5:
                holder = other.transaction()
                await holder.start()
                await other.execute("SELECT pg_current_xact_id()")
            assert (await ingest_usage(conn, _fuzz_events(rng, 300, wave))).rejected == 0
            watermarks.append(await read_watermark(conn))
            if rng.random() < 0.7:
                await compact_usage(conn, before=JAN + timedelta(days=rng.randrange(1, 22)))
            if holder is not None and rng.random() < 0.5:
                await holder.commit()
                holder = None
            watermarks.append(await read_watermark(conn))
        if holder is not None:
            await holder.commit()
        watermarks.append(await read_watermark(conn))
        for _ in range(25):
            tz = timezone(timedelta(hours=rng.choice([-8, 0, 5, 13])))
            start = (JAN + timedelta(hours=rng.randrange(0, 24 * 8))).astimezone(tz)
            end = start + timedelta(hours=rng.randrange(1, 24 * 14))
            splits = [start + timedelta(hours=rng.randrange(0, 24 * 14))
                      for _ in range(rng.randrange(0, 3))]
            if rng.random() < 0.5:
                splits.append(JAN + timedelta(days=rng.randrange(0, 20)))
            meters = [
                MeterSpec(m.key, m.aggregation, m.group_by, m.unique_by, splits=tuple(
                    JAN + timedelta(days=rng.randrange(0, 20), hours=rng.choice([0, 0, 11]))
                    for _ in range(rng.randrange(0, 2))))
                for m in METERS_V1
            ]
            watermark = rng.choice(watermarks)
            results = []
            for rollups in (True, False):
                async with conn.transaction():
                    rows = await aggregate_usage(
                        conn, customer_id="acme", meters=meters, start=start, end=end,
                        watermark=watermark, splits=splits, rollups=rollups)
                results.append(_as_set(rows))
            assert results[0] == results[1], (start, end, splits, watermark)
        assert await conn.fetchval("SELECT count(*) FROM usage_compactions") > 0
    finally:
        await other.close()
