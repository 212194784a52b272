"""Set-based usage aggregation for rating: one SQL statement per contract period.

`aggregate_usage` returns, for one customer and one period ``[start, end)``,
one `AggregateRow` per (part, meter, group) where a meter's period is split
into parts at override ``effective``/``until`` instants and groups are the
values of the meter's ``group_by`` dimensions. `aggregate_late_usage` does the
same for events that arrived between two watermarks, tagged with the billing
period they belong to. Both run a single statement for all meters.

Semantics (the same as the in-memory reference ``models.rating.aggregate``):

- an event belongs to the part (and period) with ``start <= ts < end``: an
  event exactly at a boundary belongs to the part that starts there
  (``width_bucket`` over the parts' lower bounds);
- ``sum`` of quantities, ``count`` of events, ``max`` quantity,
  ``unique_count`` of distinct values of dimension ``unique_by`` (events
  without it do not count), ``latest``: quantity of the event with the
  greatest timestamp, ties broken by the greatest ``event_id`` in byte order
  (the database has no input order; the reference breaks ties by input
  order);
- a ``group_by`` dimension missing from an event is left out of the group's
  dimensions (so ``{}`` is the group of events that carry none of them);
- ``first_seen`` is the group's earliest timestamp (it orders invoice lines).

Watermarks: an event is visible to rating when its inserting transaction id
(``usage_events.txid``, the top-level xid as xid8) is below the watermark
that `read_watermark` returns. An invoice's usage is exactly ``txid <
watermark`` and late usage is exactly ``previous_watermark <= txid <
watermark``, so each event is counted once, provided two things hold for
the watermark W and the aggregation that follows it:

1. every event with ``txid < W`` that will ever be committed is committed
   and visible to the aggregation's snapshot;
2. W never decreases (a later close never reads a lower one).

Only transactions that insert usage can break (1), so only they hold W
back: a transaction left open anywhere else on the server (another
database, the compactor, another contract's close, a stuck session) does
not delay on-time usage (SPEC 3). An *ingest transaction* takes the shared
advisory lock `INGEST_LOCK_KEY` before it has an xid and holds it to its
end: ``billow_begin_usage_ingest()`` refuses a transaction that has an xid
already, and a statement trigger calls it before every INSERT or COPY into
``usage_events`` (migration 0005_usage_ingest_lock), so no insert path can
skip it. The close then reads, in this order, in separate statements of a
READ COMMITTED transaction:

(a) ``X = pg_snapshot_xmax(pg_current_snapshot())``: every xid below X was
    assigned before (a) (xmax is the latest completed xid + 1, and xids are
    handed out in order);
(b) the xids of the transactions holding the ingest lock in this database
    now (``pg_locks``, never cached), each from its backend's
    ``pg_stat_activity.backend_xid`` (read from the proc array, where
    PostgreSQL publishes an xid the moment it assigns it; the backend
    status cache is cleared by (a)) and from its own ``transactionid`` lock
    (which PostgreSQL takes a moment *after* publishing the xid: not enough
    alone). W = min(X, those xids, widened to xid8 against X).
(c) the aggregation, whose statement snapshot is taken after (b).

Why (1): take an ingest transaction T with xid ``t < W`` that commits. As
``t < X``, t was assigned before (a), so T held the lock from before (a).
If T were still running when (c)'s snapshot is taken, it would have been
running throughout (b), holding the lock with its xid published, and W <= t.
So T had ended before (c)'s snapshot, and PostgreSQL releases a
transaction's locks only after its commit is visible to new snapshots
(``CommitTransaction``: ``ProcArrayEndTransaction`` comes before the lock
release). Aborted transactions leave no events. Nothing else inserts events.

Why (2), i.e. no event appears below W later: an event that commits after
(c) belongs to an ingest transaction still running at (c); by the argument
above its xid is >= W. A later close reads X' >= X, and an ingest xid it
finds in (b') either was assigned after (a) (so it is >= X >= W) or before
(a), and then its transaction held the lock through (b) and bounded W.

An ingest transaction that holds the lock but has not written yet does not
hold W back: its xid, when it gets one, is >= X. Ingest transactions are
short (one batch); one left open holds W back until it ends, which delays
its own batch's events into the next watermark and never loses or repeats
one.

Late aggregates cover the late events only. That is the billable delta for
``sum`` and ``count``; for ``max``, ``unique_count`` and ``latest`` the caller
must compare against the period as billed (re-aggregate the period with
``aggregate_usage(watermark=new)``) - this module does not decide billing.

Rollups: once the usage compactor has folded days into ``usage_rollups``
(activities/usage_rollup.py), `aggregate_usage` reads whole UTC days from
them and raw events only for partial days, days with a split inside, days
not folded yet and events that arrived after the compaction
(`_rollup_statement`, `activities.rollup_days`). The result is the same.

Plans: raw events are read through the ``(customer_id, ts)`` b-tree;
``txid``, ``dimensions`` and ``event_id`` come from the heap, one page visit
per event when customers' events are interleaved, which is what rollups
avoid (bench/RESULTS.md). The pass over the rows is a hash aggregation; only
``latest`` meters' per-event sub-groups are sorted (see `_statement`).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped

from activities.rollup_days import DayPlan, day_plan

__all__ = [
    "AGGREGATIONS",
    "INGEST_LOCK_KEY",
    "AggregateRow",
    "LateAggregateRow",
    "MeterSpec",
    "aggregate_late_usage",
    "aggregate_usage",
    "read_watermark",
    "widen_xid",
]

AGGREGATIONS: Final = frozenset({"sum", "count", "max", "unique_count", "latest"})

INGEST_LOCK_KEY: Final = 0x75736167655F696E  # "usage_in"; migration 0005_usage_ingest_lock

# (a): the snapshot's xmax, and a fresh backend status cache for (b).
_XMAX_SQL = """
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
       current_setting('transaction_isolation'),
       pg_stat_clear_snapshot() IS NULL
"""
# (b): xids of the ingest lock's holders in this database. One read of the
# lock table (MATERIALIZED: pg_locks is a function call per reference).
_INGESTING_SQL = """
WITH held AS MATERIALIZED (
    SELECT locktype, database, classid, objid, objsubid, virtualtransaction, pid, mode,
           transactionid
    FROM pg_locks WHERE granted AND locktype IN ('advisory', 'transactionid')
)
SELECT a.backend_xid::text::bigint AS backend_xid, x.transactionid::text::bigint AS lock_xid
FROM held l
LEFT JOIN held x ON x.virtualtransaction = l.virtualtransaction
    AND x.locktype = 'transactionid' AND x.mode = 'ExclusiveLock'
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 1
  AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass(frozen=True)
class MeterSpec:
    """What the statement needs to know about one meter.

    ``splits``: instants where this meter's prices change (override
    ``effective``/``until``); they add to the call's ``splits``. Instants
    outside ``(start, end)`` are ignored.
    """

    key: str
    aggregation: str
    group_by: tuple[str, ...] = ()
    unique_by: str | None = None
    splits: tuple[datetime, ...] = ()

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation: unknown aggregation {self.aggregation!r}")
        if (self.aggregation == "unique_count") != (self.unique_by is not None):
            raise ValueError("unique_by: required exactly when aggregation is unique_count")
        for t in self.splits:
            _require_aware("splits", t)

    @classmethod
    def of(cls, meter: Any, splits: Iterable[datetime] = ()) -> MeterSpec:
        """From a ``models.catalog.Meter`` (or anything with the same attributes)."""
        return cls(
            key=meter.key,
            aggregation=str(meter.aggregation),
            group_by=tuple(meter.group_by),
            unique_by=meter.unique_by,
            splits=tuple(splits),
        )


@dataclass(frozen=True)
class AggregateRow:
    """One group's aggregate over one part ``[part_start, part_end)`` of the period."""

    part_index: int  # 0-based, per meter: parts of different meters may differ
    part_start: datetime
    part_end: datetime
    meter: str
    dimensions: dict[str, str] = field(hash=False)
    quantity: Decimal
    first_seen: datetime


@dataclass(frozen=True)
class LateAggregateRow:
    """Late events' aggregate, tagged with the billing period they belong to."""

    period_index: int  # index into the periods' boundaries: [periods[i], periods[i+1])
    period_start: datetime
    period_end: datetime
    part_index: int  # 0-based within the period, per meter
    part_start: datetime
    part_end: datetime
    meter: str
    dimensions: dict[str, str] = field(hash=False)
    quantity: Decimal
    first_seen: datetime


async def read_watermark(conn: asyncpg.Connection) -> int:
    """The usage cut-off (xid8 as int): every event with ``txid`` below it is
    committed and visible to the statements that follow, or never will be.

    Steps (a) and (b) of the module docstring; the caller aggregates next, in
    the same READ COMMITTED transaction or session (any other isolation keeps
    an older snapshot for (c) and is refused).
    """
    row = await conn.fetchrow(_XMAX_SQL)
    xmax, isolation = int(row[0]), row[1]
    if isolation != "read committed":
        raise ValueError(
            f"read_watermark needs READ COMMITTED (this transaction is {isolation}): "
            "the aggregation's snapshot must be newer than the watermark"
        )
    watermark = xmax
    hi, lo = INGEST_LOCK_KEY >> 32, INGEST_LOCK_KEY & 0xFFFFFFFF
    for backend_xid, lock_xid in await conn.fetch(_INGESTING_SQL, hi, lo):
        for xid in (backend_xid, lock_xid):
            if xid is not None:
                watermark = min(watermark, widen_xid(xid, xmax))
    return watermark


def widen_xid(xid: int, reference: int) -> int:
    """The xid8 of a running transaction's 32-bit ``xid``, given an xid8
    ``reference`` less than 2^31 away from it (PostgreSQL keeps running xids
    within 2^31 of the next one)."""
    delta = (xid - reference) & 0xFFFFFFFF
    if delta >= 1 << 31:
        delta -= 1 << 32
    return reference + delta


def _require_aware(name: str, t: datetime) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name}: {t!r} must include a UTC offset")


def _bounds(start: datetime, end: datetime, *splits: Iterable[datetime]) -> list[datetime]:
    """Sorted lower bounds of the parts of ``[start, end)``."""
    inside = {t for group in splits for t in group if start < t < end}
    return [start, *sorted(inside)]


@dataclass(frozen=True)
class _Spec:
    meter: MeterSpec
    bounds: list[datetime]  # lower bounds of this meter's parts


def _spec_values(specs: Sequence[_Spec], first: int, k: int) -> tuple[str, list[Any]]:
    """The ``spec`` CTE's VALUES rows (placeholders from ``$first``) and their parameters."""
    params: list[Any] = []
    rows: list[str] = []
    width = 4 + k
    for n, s in enumerate(specs):
        base = first + n * width
        cols = [
            f"${base}::text",
            f"${base + 1}::text",
            f"${base + 2}::text",
            f"${base + 3}::timestamptz[]",
        ]
        cols += [f"${base + 4 + j}::text" for j in range(k)]
        rows.append("(" + ", ".join(cols) + ")")
        gb = list(s.meter.group_by)
        params += [s.meter.key, s.meter.aggregation, s.meter.unique_by, s.bounds]
        params += gb + [None] * (k - len(gb))
    return ", ".join(rows), params


def _outer_cases(aggs: set[str], *, latest_value: str, latest_ts: str) -> str:
    """The outer level's figure per aggregation, over the inner sub-groups."""
    cases = []
    if "sum" in aggs:
        cases.append("WHEN 'sum' THEN sum(q_sum)")
    if "count" in aggs:
        cases.append("WHEN 'count' THEN sum(n)")
    if "max" in aggs:
        cases.append("WHEN 'max' THEN max(q_max)")
    if "unique_count" in aggs:
        # one sub-group per distinct value; events without the dimension
        # (u NULL) make the group exist but are not counted
        cases.append("WHEN 'unique_count' THEN count(u)::numeric")
    if "latest" in aggs:
        # one sub-group per candidate (u = its event id); byte order breaks ties
        cases.append(
            f"WHEN 'latest' THEN (array_agg({latest_value} "
            f'ORDER BY {latest_ts} DESC, u COLLATE "C" DESC))[1]'
        )
    return " ".join(cases)


def _row_exprs(
    specs: Sequence[_Spec], k: int, aggs: set[str], *, ts: str, dims: str, event_id: str
) -> tuple[str, str, str]:
    """Per-row expressions of the inner level: the part index, the group's
    dimension columns ``d1..dk`` and the sub-key ``u``. Per-row work costs:
    only what some meter of the call needs is emitted."""
    part = f"width_bucket({ts}, s.bounds) - 1" if any(len(x.bounds) > 1 for x in specs) else "0"
    d_exprs = "".join(f", {dims} ->> s.g{j + 1} AS d{j + 1}" for j in range(k))
    if "latest" in aggs:
        sub_key = (
            f"CASE s.aggregation WHEN 'latest' THEN {event_id} ELSE {dims} ->> s.unique_by END"
        )
    elif "unique_count" in aggs:
        sub_key = f"{dims} ->> s.unique_by"
    else:
        sub_key = "NULL::text"
    return part, d_exprs, sub_key


def _statement(specs: Sequence[_Spec], *, with_from: bool) -> tuple[str, list[Any]]:
    """The SQL text and its parameters after the fixed ones ($1..$4|$5).

    Meters become a VALUES list (one row per meter, each with its own array
    of part bounds) joined to the customer's events. Group dimension values
    are text columns ``d1..dk`` (k = the longest ``group_by``): grouping on
    text is far cheaper than building a jsonb object per event.

    Two levels, so that the pass over the events is a hash aggregation: the
    inner GROUP BY adds a sub-key ``u`` (the ``unique_by`` value for
    ``unique_count`` meters, the event id for ``latest`` meters, NULL
    otherwise) and keeps sum/count/max/min per sub-group; the outer one folds
    the few sub-groups into each group's figure. A DISTINCT or ORDER BY
    aggregate in a single GROUP BY would sort every event instead.
    """
    k = max((len(s.meter.group_by) for s in specs), default=0)
    aggs = {s.meter.aggregation for s in specs}
    values, params = _spec_values(specs, 6 if with_from else 5, k)
    g_cols = "".join(f", g{j + 1}" for j in range(k))
    d_cols = "".join(f", d{j + 1}" for j in range(k))
    cases = _outer_cases(aggs, latest_value="q_sum", latest_ts="first_ts")
    # Only the per-event work some meter needs; FILTER skips it for the others.
    inner_aggs = []
    if aggs & {"sum", "latest"}:
        inner_aggs.append(
            "sum(e.quantity) FILTER (WHERE s.aggregation IN ('sum', 'latest')) AS q_sum, "
        )
    if "count" in aggs:
        inner_aggs.append("count(*)::numeric AS n, ")
    if "max" in aggs:
        inner_aggs.append("max(e.quantity) FILTER (WHERE s.aggregation = 'max') AS q_max, ")
    part, d_exprs, sub_key = _row_exprs(
        specs, k, aggs, ts="e.ts", dims="e.dimensions", event_id="e.event_id::text"
    )
    txid_from = " AND e.txid >= $5" if with_from else ""
    sql = f"""
WITH spec (meter, aggregation, unique_by, bounds{g_cols}) AS (
  VALUES {values}
)
SELECT meter, part{d_cols}, CASE min(aggregation) {cases} END AS quantity,
       min(first_ts) AS first_seen
FROM (
  SELECT s.meter, s.aggregation, {part} AS part{d_exprs},
         {sub_key} AS u,
         {"".join(inner_aggs)}min(e.ts) AS first_ts
  FROM usage_events e
  JOIN spec s ON s.meter = e.meter
  WHERE e.customer_id = $1 AND e.ts >= $2 AND e.ts < $3 AND e.txid < $4{txid_from}
  GROUP BY s.meter, s.aggregation, 3{"".join(f", {j + 4}" for j in range(k))}, u
) AS sub
GROUP BY meter, part{d_cols}
"""
    return sql, params


# The newest compaction whose watermark the invoice's watermark covers: its
# rollups (and those of earlier runs) hold only events below the watermark.
_COMPACTION_SQL = """
SELECT id, upto_txid, folded_before FROM usage_compactions
WHERE upto_txid <= $1 ORDER BY id DESC LIMIT 1
"""


@dataclass(frozen=True)
class _Compacted:
    id: int
    upto_txid: int
    folded_before: datetime


def _rollup_statement(specs: Sequence[_Spec]) -> tuple[str, list[Any]]:
    """Like `_statement`, over rollups of whole days plus raw events elsewhere.

    Fixed parameters: $1 customer, $2 start, $3 end, $4 watermark, $5 the
    compaction id, $6 its watermark, $7/$8 the rollup days' bounds, $9 the
    days skipped among them, $10/$11 raw range bounds (a `DayPlan`). Three
    sources, disjoint by construction:

    - rollups of compactions <= $5 on the rollup days: every event with
      ``txid < $6`` on those days (the compactor's invariant);
    - raw events on the raw ranges, ``txid < $4``;
    - raw events on the rollup days with ``$6 <= txid < $4`` (arrived after
      the compaction; found through the ``(customer_id, txid)`` index).

    Each source row carries sum, count and max of its quantities, its first
    instant and its latest event, so the aggregation above is the same for
    one event and for a day's rollup.
    """
    k = max((len(s.meter.group_by) for s in specs), default=0)
    aggs = {s.meter.aggregation for s in specs}
    values, params = _spec_values(specs, 12, k)
    g_cols = "".join(f", g{j + 1}" for j in range(k))
    d_cols = "".join(f", d{j + 1}" for j in range(k))
    # one sub-group per source row (u = its latest event's id)
    cases = _outer_cases(aggs, latest_value="q_last", latest_ts="last_ts")

    def branch(ts: str, dims: str, last_id: str, cols: str, source: str) -> str:
        # Joining the meter specs inside each branch, against a real table's
        # column, keeps the planner's row estimates (and so its plan) sane.
        p, d, u = _row_exprs(specs, k, aggs, ts=ts, dims=dims, event_id=last_id)
        return (
            f"SELECT s.meter, s.aggregation, {p} AS part{d}, {u} AS u, {cols}\n"
            f"  {source.replace('JOIN_SPEC', 'JOIN spec s ON s.meter = ')}"
        )

    rollups = branch(
        "r.day",
        "r.dimensions",
        "r.last_event_id",
        "r.quantity_sum AS q, r.event_count AS n, r.quantity_max AS q_max, r.first_ts,"
        " r.last_ts, r.last_quantity AS q_last",
        """FROM usage_rollups r JOIN_SPECr.meter
  WHERE r.customer_id = $1 AND r.day >= $7 AND r.day < $8 AND r.compaction_id <= $5
    AND r.day <> ALL ($9::timestamptz[])""",
    )
    raw_cols = (
        "e.quantity AS q, 1::bigint AS n, e.quantity AS q_max, e.ts AS first_ts,"
        " e.ts AS last_ts, e.quantity AS q_last"
    )
    raw_days = branch(
        "e.ts",
        "e.dimensions",
        "e.event_id",
        raw_cols,
        """FROM unnest($10::timestamptz[], $11::timestamptz[]) AS d (lo, hi)
  JOIN usage_events e ON e.customer_id = $1 AND e.ts >= d.lo AND e.ts < d.hi
  JOIN_SPECe.meter
  WHERE e.txid < $4 AND e.ts >= $2::timestamptz AND e.ts < $3::timestamptz""",
    )
    tail = branch(
        "e.ts",
        "e.dimensions",
        "e.event_id",
        raw_cols,
        """FROM usage_events e JOIN_SPECe.meter
  WHERE e.customer_id = $1 AND e.txid >= $6 AND e.txid < $4 AND e.ts >= $7 AND e.ts < $8
    AND date_trunc('day', e.ts, 'UTC') <> ALL ($9::timestamptz[])""",
    )
    sql = f"""
WITH spec (meter, aggregation, unique_by, bounds{g_cols}) AS (
  VALUES {values}
)
SELECT meter, part{d_cols}, CASE min(aggregation) {cases} END AS quantity,
       min(first_ts) AS first_seen
FROM (
  SELECT meter, aggregation, part{d_cols}, u,
         sum(q) FILTER (WHERE aggregation = 'sum') AS q_sum,
         sum(n) AS n,
         max(q_max) FILTER (WHERE aggregation = 'max') AS q_max,
         max(q_last) FILTER (WHERE aggregation = 'latest') AS q_last,
         min(first_ts) AS first_ts, max(last_ts) AS last_ts
  FROM (
  {rollups}
  UNION ALL
  {raw_days}
  UNION ALL
  {tail}
  ) AS src
  GROUP BY meter, aggregation, part{d_cols}, u
) AS sub
GROUP BY meter, part{d_cols}
"""
    return sql, params


async def _compacted(conn: asyncpg.Connection, watermark: int) -> _Compacted | None:
    row = await conn.fetchrow(_COMPACTION_SQL, watermark)
    return None if row is None else _Compacted(row[0], row[1], row[2])


async def _run(
    conn: asyncpg.Connection,
    customer_id: str,
    specs: Sequence[_Spec],
    start: datetime,
    end: datetime,
    watermark: int,
    txid_from: int | None,
    rollups: bool = False,
) -> list[tuple[_Spec, int, dict[str, str], Decimal, datetime]]:
    if not specs:
        return []
    if rollups and txid_from is None and not conn.is_in_transaction():
        # The compaction read first and the rollups read next must see one
        # state: inside a transaction, its lock on usage_compactions keeps a
        # rebuild (TRUNCATE) out until both are done.
        async with conn.transaction():
            return await _run(conn, customer_id, specs, start, end, watermark, None, rollups)
    fixed: list[Any] = [customer_id, start, end, watermark]
    compacted = await _compacted(conn, watermark) if rollups and txid_from is None else None
    plan: DayPlan | None = None
    if compacted is not None:
        cuts = [t for s in specs for t in s.bounds[1:]]
        plan = day_plan(start, end, cuts, compacted.folded_before)
    if compacted is not None and plan is not None:
        sql, extra = _rollup_statement(specs)
        # A generic plan (what a cached prepared statement turns into after
        # five runs) cannot see how few rollup days or raw ranges there are;
        # planning each call costs 0.5 ms and saves more (bench/RESULTS.md).
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        fixed += [
            compacted.id,
            compacted.upto_txid,
            plan.lo,
            plan.hi,
            plan.skipped,
            [lo for lo, _ in plan.raw],
            [hi for _, hi in plan.raw],
        ]
    else:
        sql, extra = _statement(specs, with_from=txid_from is not None)
        if txid_from is not None:
            fixed.append(txid_from)
    by_key = {s.meter.key: s for s in specs}
    out = []
    for r in await conn.fetch(sql, *fixed, *extra):
        spec = by_key[r["meter"]]
        values = [r[f"d{j + 1}"] for j in range(len(spec.meter.group_by))]
        dims = {g: v for g, v in zip(spec.meter.group_by, values, strict=True) if v is not None}
        out.append((spec, int(r["part"]), dims, Decimal(r["quantity"]), r["first_seen"]))
    return out


def _check(meters: Sequence[MeterSpec], start: datetime, end: datetime) -> None:
    _require_aware("start", start)
    _require_aware("end", end)
    if not start < end:
        raise ValueError(f"end: {end} must be after start {start}")
    keys = [m.key for m in meters]
    if len(set(keys)) != len(keys):
        raise ValueError("meters: each meter may appear once")


def _order(meters: Sequence[MeterSpec]) -> dict[str, int]:
    return {m.key: i for i, m in enumerate(meters)}


async def aggregate_usage(
    conn: asyncpg.Connection,
    *,
    customer_id: str,
    meters: Sequence[MeterSpec],
    start: datetime,
    end: datetime,
    watermark: int,
    splits: Iterable[datetime] = (),
    min_txid: int | None = None,
    rollups: bool = True,
) -> list[AggregateRow]:
    """Aggregates of ``customer_id``'s events in ``[start, end)`` with
    ``min_txid <= txid < watermark``, per meter, part and group.

    Parts of a meter are ``[start, end)`` split at ``splits`` and the meter's
    own ``MeterSpec.splits``. Rows come in meter order (as given), then part,
    then ``first_seen``, then dimensions. Groups without events are absent.

    With ``rollups`` (and no ``min_txid``), whole UTC days folded by the
    compactor are read from ``usage_rollups``; the result is the same
    either way (``rollups=False`` reads raw events only).
    """
    _check(meters, start, end)
    common = list(splits)
    specs = [_Spec(m, _bounds(start, end, common, m.splits)) for m in meters]
    rows = await _run(conn, customer_id, specs, start, end, watermark, min_txid, rollups)
    out = []
    for spec, part, dims, qty, first_seen in rows:
        b = spec.bounds
        part_end = b[part + 1] if part + 1 < len(b) else end
        out.append(AggregateRow(part, b[part], part_end, spec.meter.key, dims, qty, first_seen))
    order = _order(meters)
    out.sort(
        key=lambda a: (order[a.meter], a.part_index, a.first_seen, sorted(a.dimensions.items()))
    )
    return out


async def aggregate_late_usage(
    conn: asyncpg.Connection,
    *,
    customer_id: str,
    meters: Sequence[MeterSpec],
    periods: Sequence[datetime],
    previous_watermark: int,
    watermark: int,
    splits: Iterable[datetime] = (),
) -> list[LateAggregateRow]:
    """Aggregates of events with ``previous_watermark <= txid < watermark``
    and ``periods[0] <= ts < periods[-1]``, per billing period, meter, part
    and group.

    ``periods`` are the boundaries of the periods already invoiced, in order
    (``[term_start, b1, ..., before]``); period i is ``[periods[i],
    periods[i+1])``. Parts within a period come from ``splits`` and the
    meters' own splits, as in `aggregate_usage`.
    """
    bounds_ = list(periods)
    if len(bounds_) < 2:
        raise ValueError("periods: need at least a start and an end boundary")
    for t in bounds_:
        _require_aware("periods", t)
    if any(a >= b for a, b in itertools.pairwise(bounds_)):
        raise ValueError("periods: boundaries must be strictly increasing")
    start, end = bounds_[0], bounds_[-1]
    _check(meters, start, end)
    common = list(splits)
    # Period boundaries are part boundaries too: one statement splits both.
    specs = [_Spec(m, _bounds(start, end, bounds_, common, m.splits)) for m in meters]
    rows = await _run(conn, customer_id, specs, start, end, watermark, previous_watermark)
    out = []
    for spec, part, dims, qty, first_seen in rows:
        b = spec.bounds
        part_start = b[part]
        part_end = b[part + 1] if part + 1 < len(b) else end
        p = bisect.bisect_right(bounds_, part_start) - 1
        # part index within the period: parts of this meter since the period start
        first_part = bisect.bisect_left(b, bounds_[p])
        out.append(
            LateAggregateRow(
                period_index=p,
                period_start=bounds_[p],
                period_end=bounds_[p + 1],
                part_index=part - first_part,
                part_start=part_start,
                part_end=part_end,
                meter=spec.meter.key,
                dimensions=dims,
                quantity=qty,
                first_seen=first_seen,
            )
        )
    order = _order(meters)
    out.sort(
        key=lambda a: (
            a.period_index,
            order[a.meter],
            a.part_index,
            a.first_seen,
            sorted(a.dimensions.items()),
        )
    )
    return out
