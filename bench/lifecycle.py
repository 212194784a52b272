"""``python -m bench lifecycle``: backdated contracts catching up, against a skeleton.

N contracts start ``--periods`` months in the past, so every period is already
over: each workflow closes them one after the other, one usage grace window
after its creation (``ContractState.close_at``). That is a month-start catch-up
storm on the real dev server with a real worker. The floor is
`bench.skeleton.SkeletonWorkflow` (the same timers, one local activity per step
committing one trivial row) on the same dev server with the same worker
settings, measured in the same run, first.

Measured for each side: wall time from the first start until every period's
row exists (invoice numbered / skeleton row committed), workflow-task timeouts
and failures counted from every run's history, and lateness: how long after
its close instant each period's row was first seen committed (polled from a
separate connection every ``POLL`` seconds, so the figure does not depend on
what billow writes in ``finalized_at``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client
from temporalio.worker import Worker

from activities.catalog_store import apply_catalog
from activities.db import async_url, make_engine
from bench.skeleton import SKELETON_TABLE, SkeletonActivities, SkeletonInput, SkeletonWorkflow
from models.catalog import load_catalog
from models.contract import load_contract
from worker.contract_service import start_contract
from worker.main import build_worker
from worker.temporal_envs import start_dev_server

POLL = 0.5  # seconds between looks for newly committed rows
CREATORS = 8  # contracts created at once (like a few API clients)

CATALOG = yaml.safe_load(
    """
meters:
  - key: tokens
    name: LLM tokens
    aggregation: sum
    group_by: [model]
    rate_card:
      - match: {model: gpt-4}
        unit_price: "0.03"
plans:
  - key: pro
    name: Pro Plan
    currency: USD
    meters: [tokens]
    billing_cycle: monthly
    payment_terms_days: 30
    auto_pay: false
    recurring_fees:
      - key: platform
        name: Platform fee
        monthly_amount: "500.00"
"""
)


@dataclass
class SideFigures:
    name: str
    rows: int = 0
    elapsed_s: float = 0.0
    lateness_s: list[float] = field(default_factory=list)
    runs: int = 0
    wft_timeouts: int = 0
    wft_failures: int = 0
    wft_timeout_kinds: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    rollbacks: int = 0
    statements: int | None = None  # every statement the side ran (pg_stat_statements)

    def lateness(self, q: float) -> float:
        xs = sorted(self.lateness_s)
        if not xs:
            return 0.0
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s else 0.0


@dataclass
class LifecycleFigures:
    contracts: int
    periods: int
    grace_seconds: int
    skeleton: SideFigures
    billow: SideFigures
    statements: list[tuple[str, int, float, float]] | None  # query, calls, mean ms, total s
    load: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # 1/5/15-min, start and end

    @property
    def ratio(self) -> float:
        return self.billow.elapsed_s / self.skeleton.elapsed_s


def first_of_month(day: date, months_back: int) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def contract_document(
    i: int, starts_on: date, periods: int, grace_hours: Decimal
) -> dict[str, Any]:
    return {
        "id": f"bench-{i}",
        "customer": {"id": f"bench-cust-{i}", "name": f"Bench Customer {i}"},
        "plan": "pro",
        "starts_on": starts_on.isoformat(),
        "term_months": periods,
        "usage_grace_hours": str(grace_hours),
    }


async def run_lifecycle(
    url: str,
    dsn: str,
    *,
    contracts: int,
    periods: int,
    grace_hours: Decimal = Decimal("0.001"),
    timeout_s: float = 3600.0,
    pre_ping: bool = False,
    log: bool = True,
) -> LifecycleFigures:
    grace_seconds = int(grace_hours * 3600)
    load_start = os.getloadavg()
    today = datetime.now(UTC).date()
    # The term ends at the start of this month: every period is over.
    starts_on = first_of_month(today, periods)
    period_ends = [
        datetime.combine(first_of_month(today, periods - i - 1), datetime.min.time(), UTC)
        for i in range(periods)
    ]
    # pre_ping=True measures billow as it was with `pool_pre_ping` (a BEGIN;
    # ";"; ROLLBACK per checkout; activities/db.py says why it is gone).
    engine = (create_async_engine(async_url(url), pool_size=10, pool_pre_ping=True) if pre_ping
              else make_engine(url, pool_size=10))
    watcher = await asyncpg.connect(dsn)
    env = await start_dev_server()
    try:
        client = env.client
        async with engine.begin() as conn:
            await conn.execute(text(SKELETON_TABLE))
            version, _ = await apply_catalog(conn, load_catalog(CATALOG))
        statements_on = await reset_statements(watcher)

        skeleton = SideFigures("skeleton")
        worker = Worker(
            client,
            task_queue="bench-skeleton",
            workflows=[SkeletonWorkflow],
            activities=[SkeletonActivities(engine).step],
        )

        async def start_skeleton(i: int) -> None:
            await client.start_workflow(
                SkeletonWorkflow.run,
                SkeletonInput(contract_id=f"bench-{i}", period_ends=period_ends,
                              grace_seconds=grace_seconds),
                id=f"skeleton:bench-{i}",
                task_queue="bench-skeleton",
            )

        async with worker:
            await _side(
                skeleton, watcher, contracts, start_skeleton,
                "SELECT contract_id, step::text AS key, close_at FROM bench_skeleton_steps "
                "WHERE step > 0",
                contracts * periods, timeout_s, log,
            )
        await _count_histories(client, "BenchSkeletonWorkflow", contracts, skeleton)
        _say(log, f"skeleton done: {skeleton.elapsed_s:.1f}s")

        if statements_on:
            skeleton.statements = await statement_count(watcher)
            await watcher.execute("SELECT pg_stat_statements_reset()")
        billow = SideFigures("billow")

        async def start_billow(i: int) -> None:
            doc = contract_document(i, starts_on, periods, grace_hours)
            await start_contract(client, engine, load_contract(doc), "bench-billow",
                                 catalog_version=version)

        async with build_worker(client, engine, "bench-billow"):
            seen = await _side(
                billow, watcher, contracts, start_billow,
                "SELECT contract_id, key, NULL::timestamptz AS close_at FROM invoices "
                "WHERE kind = 'usage' AND number IS NOT NULL",
                contracts * periods, timeout_s, log,
            )
            starts = await _count_histories(client, "ContractWorkflow", contracts, billow)
        # Every period was over at creation: it closed at start + grace.
        grace = timedelta(seconds=grace_seconds)
        billow.lateness_s = [
            (at - starts[f"contract:{cid}"] - grace).total_seconds()
            for (cid, _key), (at, _close) in seen.items()
        ]
        statements = await _top_statements(watcher) if statements_on else None
        if statements_on:
            billow.statements = await statement_count(watcher)
        _say(log, f"billow done: {billow.elapsed_s:.1f}s")
    finally:
        await watcher.close()
        await env.shutdown()
        await engine.dispose()
    return LifecycleFigures(contracts, periods, grace_seconds, skeleton, billow, statements,
                            (load_start, os.getloadavg()))


Seen = dict[tuple[str, str], tuple[datetime, datetime | None]]


async def _side(
    fig: SideFigures,
    watcher: asyncpg.Connection,
    contracts: int,
    start_one: Callable[[int], Awaitable[None]],
    seen_sql: str,
    expected: int,
    timeout_s: float,
    log: bool,
) -> Seen:
    """Create the contracts, wait for every row; (contract, key) -> (first seen, close)."""
    commits0, rollbacks0 = await _xacts(watcher)
    seen: Seen = {}
    gate = asyncio.Semaphore(CREATORS)

    async def start(i: int) -> None:
        async with gate:
            await start_one(i)

    t0 = time.monotonic()
    creating = asyncio.gather(*(start(i) for i in range(contracts)))
    last = next_note = t0
    try:
        while len(seen) < expected:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{fig.name}: {len(seen)} of {expected} rows after {timeout_s}s")
            if creating.done() and creating.exception() is not None:
                raise creating.exception()  # type: ignore[misc]
            await asyncio.sleep(POLL)
            now = datetime.now(UTC)
            for r in await watcher.fetch(seen_sql):
                k = (r["contract_id"], r["key"])
                if k not in seen:
                    seen[k] = (now, r["close_at"])
                    last = time.monotonic()
            if log and time.monotonic() >= next_note:
                next_note += 15
                _say(log, f"  {fig.name}: {len(seen)}/{expected} rows")
        await creating
    finally:
        if not creating.done():
            creating.cancel()
    fig.elapsed_s = last - t0
    fig.rows = len(seen)
    fig.lateness_s = [(s - c).total_seconds() for s, c in seen.values() if c is not None]
    await asyncio.sleep(1.5)  # statistics reach pg_stat_database within a second
    commits1, rollbacks1 = await _xacts(watcher)
    fig.commits, fig.rollbacks = commits1 - commits0, rollbacks1 - rollbacks0
    return seen


async def _count_histories(
    client: Client, workflow_type: str, contracts: int, fig: SideFigures
) -> dict[str, datetime]:
    """Workflow-task timeouts and failures of every run; the first start per id."""
    query = f"WorkflowType = '{workflow_type}'"
    for _ in range(60):  # visibility is eventually consistent
        executions = [e async for e in client.list_workflows(query)]
        if len({e.id for e in executions}) >= contracts:
            break
        await asyncio.sleep(1)
    starts: dict[str, datetime] = {}
    for e in executions:
        starts[e.id] = min(e.start_time, starts.get(e.id, e.start_time))
    gate = asyncio.Semaphore(16)
    timed_out = EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED

    async def count(wid: str, run_id: str) -> tuple[int, int]:
        async with gate:
            history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        kinds = [ev.event_type for ev in history.events]
        for ev in history.events:
            if ev.event_type == timed_out:
                kind = TimeoutType.Name(ev.workflow_task_timed_out_event_attributes.timeout_type)
                kind = kind.removeprefix("TIMEOUT_TYPE_").lower()
                fig.wft_timeout_kinds[kind] = fig.wft_timeout_kinds.get(kind, 0) + 1
        return kinds.count(timed_out), kinds.count(failed)

    counts = await asyncio.gather(*(count(e.id, e.run_id) for e in executions))
    fig.runs = len(executions)
    fig.wft_timeouts = sum(c[0] for c in counts)
    fig.wft_failures = sum(c[1] for c in counts)
    return starts


async def _xacts(conn: asyncpg.Connection) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(row["xact_commit"]), int(row["xact_rollback"])


async def reset_statements(conn: asyncpg.Connection) -> bool:
    """pg_stat_statements, when the server preloads it (see bench/RESULTS.md)."""
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    except asyncpg.PostgresError:
        return False
    return True


async def statement_count(conn: asyncpg.Connection) -> int:
    """Statements the side sent, BEGIN and COMMIT included: each is a round trip
    through the worker's event loop, which is where a close's cost goes (RESULTS 9)."""
    return int(await conn.fetchval(
        """
        SELECT coalesce(sum(calls), 0) FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query NOT ILIKE '%pg_stat%'
        """))


async def _top_statements(conn: asyncpg.Connection) -> list[tuple[str, int, float, float]]:
    rows = await conn.fetch(
        """
        SELECT regexp_replace(query, '\\s+', ' ', 'g') AS q, calls, mean_exec_time,
               total_exec_time
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query NOT ILIKE '%pg_stat%' AND query NOT ILIKE '%bench_skeleton%'
        ORDER BY total_exec_time DESC LIMIT 10
        """
    )
    control = await conn.fetch(
        """
        SELECT upper(trim(query)) AS q, sum(calls)::bigint AS calls, 0.0 AS mean_exec_time,
               0.0 AS total_exec_time
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query ~* '^\\s*(begin|commit|rollback|start transaction|;|)\\s*;?\\s*$'
        GROUP BY 1 ORDER BY 2 DESC
        """
    )
    return [(r["q"][:90], r["calls"], r["mean_exec_time"], r["total_exec_time"] / 1000)
            for r in [*rows, *control]]


def _say(log: bool, message: str) -> None:
    if log:
        print(message, flush=True)


def report(f: LifecycleFigures) -> list[str]:
    lines = [
        f"contracts: {f.contracts} x {f.periods} monthly periods, all over at creation "
        f"(usage grace {f.grace_seconds}s), {CREATORS} creators",
        "load average (1/5/15 min) at start " + "/".join(f"{x:.1f}" for x in f.load[0])
        + ", at end " + "/".join(f"{x:.1f}" for x in f.load[1]),
    ]
    for s in (f.skeleton, f.billow):
        lines.append(
            f"{s.name + ':':9} {s.elapsed_s:7.1f}s  {s.rate:6.1f} periods/s  "
            f"lateness p50 {s.lateness(0.5):6.1f}s p99 {s.lateness(0.99):6.1f}s  "
            f"runs {s.runs}  wft timeouts {s.wft_timeouts} {s.wft_timeout_kinds or ''}  "
            f"wft failures {s.wft_failures}  "
            f"commits {s.commits}  rollbacks {s.rollbacks}"
            + (f"  statements/period {s.statements / s.rows:.1f}"
               if s.statements is not None and s.rows else "")
        )
    lines.append(f"ratio billow/skeleton: {f.ratio:.2f}x  (goal <= 1.5x, 0 wft timeouts)")
    if f.statements is not None:
        lines.append("billow side, pg_stat_statements by total time:")
        lines += [f"  {calls:>7} calls  mean {mean:8.2f} ms  total {total:8.1f}s  {q}"
                  for q, calls, mean, total in f.statements]
    else:
        lines.append("pg_stat_statements: not preloaded on this server")
    return lines
