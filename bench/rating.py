"""Rating: billow's per-contract aggregation (`aggregate_usage`, one statement
per contract period, all meters, group_by dimensions, override splits, txid
watermark) against one bare ``SELECT customer_id, meter, sum(quantity) ...
GROUP BY`` over the same quarter of the same rows.

After loading, the usage compactor folds the quarter's days into rollups, as
the worker's compactor does each night (timed and reported on its own: it
is background work, paid once per event, not per invoice). billow's side then
rates from rollups. ``--raw`` skips the compactor: every contract is rated
from raw events (the path before any compaction has run).

The bare query is the floor: one scan, one hash aggregate, no dimensions, no
watermark, no per-contract round trips. billow's side runs one transaction per
contract (read the watermark, aggregate) as the rating activity does.

Both sides run ``repeat`` times, alternating, on a warm cache; the best time
of each side is compared. The rows are loaded by raw COPY first (not timed),
then VACUUM ANALYZE'd as autovacuum would after a bulk load.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped

from activities.usage_query import MeterSpec, aggregate_usage, read_watermark
from activities.usage_rollup import compact_usage
from bench.data import (
    COLUMNS,
    METERS,
    MID_QUARTER,
    QUARTER_END,
    QUARTER_START,
    customer_ids,
    raw_events,
    seed_catalog,
    to_record,
)

BARE_SQL = """
SELECT customer_id, meter, sum(quantity)
FROM usage_events
WHERE ts >= $1 AND ts < $2
GROUP BY customer_id, meter
"""
# The second floor: the same bare sum, but per contract like billow's side
# (same access path, none of billow's work: no dimensions, splits, watermark
# or non-additive aggregations). It separates what the per-contract access
# costs from what billow's aggregation costs.
BARE_PER_CONTRACT_SQL = """
SELECT meter, sum(quantity)
FROM usage_events
WHERE customer_id = $1 AND ts >= $2 AND ts < $3
GROUP BY meter
"""


@dataclass(frozen=True)
class RatingFigures:
    events: int
    contracts: int
    concurrency: int
    covering: bool
    load_s: float
    compaction_s: float | None  # None: --raw, no compaction
    rollup_rows: int
    billow_s: list[float]
    bare_s: list[float]
    bare_per_contract_s: list[float]
    aggregate_rows: int

    @property
    def ratio(self) -> float:
        """billow time / bare GROUP BY time, best of each (goal <= 1.5)."""
        return min(self.billow_s) / min(self.bare_s)

    @property
    def ratio_per_contract(self) -> float:
        """billow time / bare per-contract sums time, best of each."""
        return min(self.billow_s) / min(self.bare_per_contract_s)


def _specs(contract_index: int) -> list[MeterSpec]:
    # Every fourth contract has a tokens price change mid-quarter (a rate
    # override's `effective`), so its tokens usage is split into two parts.
    split = (MID_QUARTER,) if contract_index % 4 == 0 else ()
    return [
        MeterSpec(
            m.key,
            m.aggregation,
            m.group_by,
            m.unique_by,
            splits=split if m.key == "tokens" else (),
        )
        for m in METERS
    ]


def _chunks(it: Iterator[tuple[object, ...]], size: int) -> Iterator[list[tuple[object, ...]]]:
    while chunk := list(islice(it, size)):
        yield chunk


# Not in billow's schema (migration 0001 has the index without txid,
# dimensions and event_id): created only with --covering-index, to measure
# what index-only scans would buy rating (bench/RESULTS.md).
COVERING_INDEX_SQL = (
    "CREATE INDEX bench_usage_events_covering ON usage_events (customer_id, ts) "
    "INCLUDE (meter, quantity, txid, dimensions, event_id)"
)


async def load_events(
    conn: asyncpg.Connection, events: int, contracts: int, seed: int, *, covering: bool = False
) -> None:
    records = (to_record(e) for e in raw_events(events, contracts, seed))
    for chunk in _chunks(records, 200_000):
        await conn.copy_records_to_table("usage_events", records=chunk, columns=COLUMNS)
    if covering:
        await conn.execute(COVERING_INDEX_SQL)
    await conn.execute("VACUUM ANALYZE usage_events")


async def _rate_contracts(
    conns: list[asyncpg.Connection], customers: list[str]
) -> tuple[int, dict[tuple[str, str], Decimal]]:
    """Every contract's quarter, ``len(conns)`` contracts at a time."""
    queue = list(enumerate(customers))
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    rows_seen = 0

    async def worker(conn: asyncpg.Connection) -> None:
        nonlocal rows_seen
        while queue:
            k, customer = queue.pop()
            specs = _specs(k)
            async with conn.transaction():
                watermark = await read_watermark(conn)
                rows = await aggregate_usage(
                    conn,
                    customer_id=customer,
                    meters=specs,
                    start=QUARTER_START,
                    end=QUARTER_END,
                    watermark=watermark,
                )
            rows_seen += len(rows)
            for r in rows:
                if r.meter in ("tokens", "requests"):  # the sum meters, comparable to bare
                    totals[(customer, r.meter)] += r.quantity

    await asyncio.gather(*(worker(c) for c in conns))
    return rows_seen, totals


async def _bare_per_contract(conns: list[asyncpg.Connection], customers: list[str]) -> None:
    queue = list(customers)

    async def worker(conn: asyncpg.Connection) -> None:
        while queue:
            await conn.fetch(BARE_PER_CONTRACT_SQL, queue.pop(), QUARTER_START, QUARTER_END)

    await asyncio.gather(*(worker(c) for c in conns))


async def _bare(conn: asyncpg.Connection) -> dict[tuple[str, str], Decimal]:
    return {(r[0], r[1]): r[2] for r in await conn.fetch(BARE_SQL, QUARTER_START, QUARTER_END)}


async def run_rating(
    conn: asyncpg.Connection,
    dsn: str,
    *,
    events: int,
    contracts: int,
    seed: int,
    repeat: int = 3,
    concurrency: int = 1,
    covering: bool = False,
    raw: bool = False,
    log: bool = True,
) -> RatingFigures:
    await seed_catalog(conn, contracts)
    t0 = time.perf_counter()
    await load_events(conn, events, contracts, seed, covering=covering)
    load_s = time.perf_counter() - t0
    if log:
        print(f"  loaded {events:,} events (COPY, VACUUM ANALYZE) in {load_s:.1f}s", flush=True)
    compaction_s: float | None = None
    rollup_rows = 0
    if not raw:
        t0 = time.perf_counter()
        run = await compact_usage(conn, before=QUARTER_END)
        compaction_s = time.perf_counter() - t0
        rollup_rows = run.rollup_rows
        await conn.execute("VACUUM ANALYZE usage_rollups")
        if log:
            print(
                f"  compacted {run.events:,} events into {run.rollup_rows:,} rollups"
                f" in {compaction_s:.1f}s",
                flush=True,
            )

    customers = customer_ids(contracts)
    extra = [await asyncpg.connect(dsn) for _ in range(concurrency - 1)]
    conns = [conn, *extra]
    billow_s: list[float] = []
    bare_s: list[float] = []
    per_contract_s: list[float] = []
    rows_seen = 0
    try:
        await _bare(conn)  # warm the cache once before timing either side
        for i in range(repeat):
            t0 = time.perf_counter()
            rows_seen, totals = await _rate_contracts(conns, customers)
            billow_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bare = await _bare(conn)
            bare_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await _bare_per_contract(conns, customers)
            per_contract_s.append(time.perf_counter() - t0)
            if log:
                print(
                    f"  run {i + 1}: billow {billow_s[-1]:.2f}s, bare GROUP BY {bare_s[-1]:.2f}s,"
                    f" bare per contract {per_contract_s[-1]:.2f}s",
                    flush=True,
                )
            # Same data, same answer: the sum meters must agree with the floor.
            wrong = {k for k, v in totals.items() if bare.get(k) != v}
            if wrong:
                raise RuntimeError(f"billow and the bare GROUP BY disagree on {sorted(wrong)[:3]}")
    finally:
        for c in extra:
            await c.close()
    return RatingFigures(
        events,
        contracts,
        concurrency,
        covering,
        load_s,
        compaction_s,
        rollup_rows,
        billow_s,
        bare_s,
        per_contract_s,
        rows_seen,
    )
