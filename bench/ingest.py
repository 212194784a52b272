"""Ingestion: billow's path (`ingest_usage`, batches of 10,000 raw events)
against a raw binary ``COPY`` of the same rows into the same table.

Two floors, both with records built before the clock starts and no
validation, lookups or dedup: one COPY statement for all rows (the fastest
way in), and one COPY per 10,000 rows, each in its own transaction (the same
batching and commits as billow). billow's clock covers everything
`ingest_usage` does from the raw dicts (pydantic validation, customer/meter
lookup, the look-up of ids already stored, in-batch dedup, the INSERT, the
per-event report).

Each side runs ``repeat`` times, alternating; the table is truncated and
checkpointed before every run and the best run of each side counts (this
machine is shared; the best run is the one least disturbed).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped

from activities.usage_ingest import MAX_BATCH, ingest_usage
from bench.data import COLUMNS, raw_events, seed_catalog, to_record
from bench.rating import COVERING_INDEX_SQL


@dataclass(frozen=True)
class IngestFigures:
    events: int
    customers: int
    billow_s: list[float]
    raw_copy_s: list[float]
    raw_batched_s: list[float]
    resend_s: list[float]  # the same batches again: every event a duplicate

    @property
    def billow_rate(self) -> float:
        return self.events / min(self.billow_s)

    @property
    def raw_rate(self) -> float:
        return self.events / min(self.raw_copy_s)

    @property
    def raw_batched_rate(self) -> float:
        return self.events / min(self.raw_batched_s)

    @property
    def ratio(self) -> float:
        """billow throughput / raw COPY (one statement) throughput; goal >= 0.5."""
        return self.billow_rate / self.raw_rate

    @property
    def ratio_batched(self) -> float:
        """billow throughput / raw COPY throughput, 10,000 rows per transaction."""
        return self.billow_rate / self.raw_batched_rate


async def _reset(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE usage_events")
    await conn.execute("CHECKPOINT")


async def _timed_copy(conn: asyncpg.Connection, records: list[Any]) -> float:
    await _reset(conn)
    t0 = time.perf_counter()
    await conn.copy_records_to_table("usage_events", records=records, columns=COLUMNS)
    return time.perf_counter() - t0


async def _timed_copy_batched(conn: asyncpg.Connection, records: list[Any]) -> float:
    await _reset(conn)
    t0 = time.perf_counter()
    for i in range(0, len(records), MAX_BATCH):
        async with conn.transaction():
            await conn.copy_records_to_table(
                "usage_events", records=records[i : i + MAX_BATCH], columns=COLUMNS
            )
    return time.perf_counter() - t0


async def _timed_billow(conn: asyncpg.Connection, batches: list[list[Any]], status: str) -> float:
    t0 = time.perf_counter()
    counted = 0
    for batch in batches:
        counted += getattr(await ingest_usage(conn, batch), status)
    elapsed = time.perf_counter() - t0
    expected = sum(len(b) for b in batches)
    if counted != expected:
        raise RuntimeError(f"billow reported {counted} of {expected} events {status}")
    return elapsed


async def run_ingest(
    conn: asyncpg.Connection,
    *,
    events: int,
    customers: int,
    seed: int,
    repeat: int = 3,
    covering: bool = False,
    log: bool = True,
) -> IngestFigures:
    await seed_catalog(conn, customers)
    if covering:  # what the index rating would want costs every writer (RESULTS.md)
        await conn.execute(COVERING_INDEX_SQL)
    raw = list(raw_events(events, customers, seed))
    batches = [raw[i : i + MAX_BATCH] for i in range(0, len(raw), MAX_BATCH)]
    records = [to_record(e) for e in raw]
    # The generated data set is the bench's, not the service's: keep the
    # cyclic GC from re-scanning millions of input dicts during the runs
    # (an API process holds one batch, not a whole data set).
    gc.collect()
    gc.freeze()

    billow_s: list[float] = []
    raw_s: list[float] = []
    batched_s: list[float] = []
    resend_s: list[float] = []
    for i in range(repeat):
        raw_s.append(await _timed_copy(conn, records))
        batched_s.append(await _timed_copy_batched(conn, records))
        await _reset(conn)
        billow_s.append(await _timed_billow(conn, batches, "accepted"))
        resend_s.append(await _timed_billow(conn, batches, "duplicate"))
        if log:
            print(
                f"  run {i + 1}: raw COPY {raw_s[-1]:.2f}s, COPY per batch {batched_s[-1]:.2f}s, "
                f"billow {billow_s[-1]:.2f}s, billow resend {resend_s[-1]:.2f}s",
                flush=True,
            )
    gc.unfreeze()
    return IngestFigures(events, customers, billow_s, raw_s, batched_s, resend_s)
