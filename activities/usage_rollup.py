"""Usage compaction: fold raw events of closed UTC days into daily rollups.

Rating one period from raw events costs one index entry and (with customers'
events interleaved) one heap page per event. A rollup row holds every event of
one customer, UTC day, meter and exact ``dimensions`` that one compaction
folded: sum, count and max of the quantities, the first instant and the latest
event. Rating reads rollups for the whole days of a period and raw events only
for partial days and for what arrived since (see `activities.usage_query`).
OpenMeter and Lago pre-aggregate the same way; unlike theirs, billow's rollups
are exact and keep the watermark rule.

The invariant (checked by the tests): after compaction ``k`` with watermark
``upto_txid = c_k`` and ``folded_before = T_k`` (a UTC midnight), every event
with ``txid < c_k`` and ``ts < T_k`` is folded into exactly one rollup row of
compactions ``<= k``, and no other event is. Compaction ``k`` therefore folds

    txid < c_k AND ts < T_k AND NOT (txid < c_{k-1} AND ts < T_{k-1})

with ``c`` and ``T`` never decreasing. ``c_k`` is a watermark read as for
invoices (`activities.usage_query.read_watermark`): every event below it is
committed and visible to the fold that follows, and no event can later
appear below it. Only open ingest transactions hold it back; the
compactor's own transaction (which writes rollups, so has an xid) is not
one, so a long run delays neither invoices nor the next run's watermark.
Only closed days are folded (``T`` defaults to today's UTC midnight), so
a day's events land in one rollup row per group instead of one per run; an
event that arrives after its day was folded waits for the next run.

Rollups are derived data: raw events stay (deduplication by id is forever
and they are the audit trail). To rebuild them, empty both tables together
(``TRUNCATE usage_rollups, usage_compactions``): rating then reads raw
events until the next run. Deleting rollups alone would drop usage from
invoices, since a compaction row promises its days are folded. Runs are serialized by an
advisory lock and each is one transaction: a crash folds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from activities import metrics
from activities.rollup_days import floor_day as utc_midnight
from activities.usage_query import read_watermark
from models.operations import ActivityName, CompactUsageRequest, CompactUsageResult

__all__ = ["Compaction", "UsageActivities", "compact_usage", "utc_midnight"]

_LOCK_KEY: Final = 0x62696C6C6F77  # "billow": one compactor at a time, cluster-wide

_LAST_SQL = """
SELECT id, upto_txid, folded_before FROM usage_compactions ORDER BY id DESC LIMIT 1
"""

# `latest` needs the last event of each group: ordered aggregates sort the
# run's events once; the run is background work (bench/RESULTS.md has its cost).
_FOLD_SQL = """
WITH folded AS (
INSERT INTO usage_rollups (compaction_id, customer_id, meter, day, dimensions, quantity_sum,
    event_count, quantity_max, first_ts, last_ts, last_event_id, last_quantity)
SELECT $1, customer_id, meter, date_trunc('day', ts, 'UTC'), dimensions, sum(quantity),
       count(*), max(quantity), min(ts), max(ts),
       (array_agg(event_id ORDER BY ts DESC, event_id COLLATE "C" DESC))[1],
       (array_agg(quantity ORDER BY ts DESC, event_id COLLATE "C" DESC))[1]
FROM usage_events
WHERE txid < $2 AND ts < $3 AND (txid >= $4 OR ts >= $5)
GROUP BY customer_id, meter, date_trunc('day', ts, 'UTC'), dimensions
ORDER BY customer_id, meter, date_trunc('day', ts, 'UTC')
RETURNING event_count
)
SELECT count(*), coalesce(sum(event_count), 0) FROM folded
"""


@dataclass(frozen=True)
class Compaction:
    """One run's outcome (``id`` None: there was nothing new to fold)."""

    id: int | None
    upto_txid: int
    folded_before: datetime
    events: int
    rollup_rows: int


async def compact_usage(
    conn: asyncpg.Connection, *, before: datetime | None = None
) -> Compaction:
    """Fold every event of a UTC day before ``before`` (default: today's
    UTC midnight, by the database clock) not yet folded, in one transaction.
    A run that would fold nothing is not recorded (``id`` None). A ``before``
    in the future folds days still open: correct, but later events of those
    days land in rows of later runs (less compact).

    ``before`` must be a UTC midnight; a value earlier than the last run's is
    raised to it (compaction never goes back).
    """
    if before is not None and (before.tzinfo is None or utc_midnight(before) != before):
        raise ValueError(f"before: {before!r} must be a UTC midnight with an offset")
    # The run reads the last compaction after taking the lock: an older
    # snapshot would miss a run that committed meanwhile and fold it again.
    if await conn.fetchval("SHOW transaction_isolation") != "read committed":
        raise ValueError("compact_usage needs a READ COMMITTED connection or transaction")
    try:
        return await _run(conn, before)
    except _NothingFolded as nothing:
        return nothing.outcome


class _NothingFolded(Exception):
    """Rolls a run back: a run that folds no event is not recorded."""

    def __init__(self, outcome: Compaction) -> None:
        self.outcome = outcome


async def _run(conn: asyncpg.Connection, before: datetime | None) -> Compaction:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        last = await conn.fetchrow(_LAST_SQL)
        prev_txid: int = last["upto_txid"] if last else 0
        prev_before: datetime | None = last["folded_before"] if last else None
        if before is None:
            before = utc_midnight(await conn.fetchval("SELECT now()"))
        if prev_before is not None and before < prev_before:
            before = prev_before
        upto = max(await read_watermark(conn), prev_txid)
        if upto == prev_txid and before == prev_before:
            return Compaction(None, prev_txid, before, 0, 0)
        run_id = await conn.fetchval(
            "INSERT INTO usage_compactions (from_txid, upto_txid, folded_from, folded_before, "
            "events, rollup_rows) VALUES ($1, $2, $3, $4, 0, 0) RETURNING id",
            prev_txid, upto, prev_before, before,
        )
        # Sorting and hashing a day's events wants more than the default 4MB.
        await conn.execute("SET LOCAL work_mem = '256MB'")
        rows, events = await conn.fetchrow(
            _FOLD_SQL, run_id, upto, before, prev_txid,
            prev_before or datetime.min.replace(tzinfo=UTC) + timedelta(days=1),
        )
        if not rows:
            raise _NothingFolded(Compaction(None, prev_txid, prev_before or before, 0, 0))
        await conn.execute(
            "UPDATE usage_compactions SET events = $2, rollup_rows = $3 WHERE id = $1",
            run_id, int(events), int(rows),
        )
    return Compaction(run_id, upto, before, int(events), int(rows))


class UsageActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @activity.defn(name=ActivityName.COMPACT_USAGE.value)
    async def compact_usage(self, req: CompactUsageRequest) -> CompactUsageResult:
        """One compaction run (idempotent: a retry folds only what is still unfolded)."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            run = await compact_usage(raw.driver_connection, before=req.before)
        metrics.usage_folded(run.events)
        return CompactUsageResult(
            compaction_id=run.id,
            folded_before=run.folded_before,
            events=run.events,
            rollup_rows=run.rollup_rows,
        )
