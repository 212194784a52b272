"""``python -m bench sleeping``: contracts between boundaries, and how they are created.

N contracts start this month, so each opens its term and then sleeps until
the month's end: the state every contract spends nearly all its life in. The
floor is `bench.skeleton.SkeletonWorkflow` sleeping on the same kind of timer
after one committed row, on the same dev server, measured first in the same
run.

Measured for each side:
- memory per sleeping contract: the worker process's RSS (a separate process,
  `bench.sleeping_worker`, with the same cache size on both sides), the
  Temporal dev server's RSS, and PostgreSQL's database size;
- creation rate: billow's contracts through the real API (``POST
  /v1/contracts`` on an in-process uvicorn, ``CREATORS`` clients at once), the
  skeleton's with bare ``start_workflow`` calls — the floor any create path has;
- workflow-task timeouts and failures, counted from the histories.

Memory is measured once every contract is asleep (its term opened / its first
row committed) and two seconds have passed. RSS counts what the process
touched, so a figure per contract is the growth over the idle worker divided
by N; with ``--max-cached`` below N it shows what a bounded cache costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import httpx
import psutil
import uvicorn
from sqlalchemy import text
from temporalio.client import Client

from activities.api_keys import create_api_key
from activities.catalog_store import apply_catalog
from activities.db import make_engine
from api.app import AppDeps, create_app
from bench.lifecycle import (
    CATALOG,
    CREATORS,
    SideFigures,
    _count_histories,
    reset_statements,
    statement_count,
)
from bench.processes import worker_process
from bench.skeleton import SKELETON_TABLE, SkeletonInput, SkeletonWorkflow
from models.catalog import load_catalog
from worker.temporal_envs import start_dev_server

MIB = 1024 * 1024


@dataclass
class SleepSide:
    name: str
    contracts: int
    create_s: float = 0.0
    asleep_s: float = 0.0
    worker_idle: int = 0  # bytes
    worker_asleep: int = 0
    temporal_before: int = 0
    temporal_after: int = 0
    db_before: int = 0
    db_after: int = 0
    postgres_before: int = 0
    postgres_after: int = 0
    wft: SideFigures = field(default_factory=lambda: SideFigures("-"))
    statements: int | None = None  # creation and first task (pg_stat_statements)

    @property
    def create_rate(self) -> float:
        return self.contracts / self.create_s if self.create_s else 0.0

    def per_contract(self, before: int, after: int) -> float:
        return (after - before) / self.contracts


@dataclass
class SleepingFigures:
    contracts: int
    max_cached: int | None
    skeleton: SleepSide
    billow: SleepSide
    load: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())


async def run_sleeping(url: str, dsn: str, *, contracts: int, max_cached: int | None = None,
                       timeout_s: float = 1800.0, log: bool = True) -> SleepingFigures:
    load_start = os.getloadavg()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    engine = make_engine(url, pool_size=10)
    watcher = await asyncpg.connect(dsn)
    env = await start_dev_server()
    temporal = _temporal_process()
    address = env.client.service_client.config.target_host
    try:
        async with engine.begin() as conn:
            await conn.execute(text(SKELETON_TABLE))
            await apply_catalog(conn, load_catalog(CATALOG))
            crm_key = (await create_api_key(conn, ["crm"], "bench sleeping")).key
        month_end = _next_month_start(datetime.now(UTC))

        skeleton = SleepSide("skeleton", contracts)
        statements_on = await reset_statements(watcher)

        async def start_skeleton(i: int, _http: httpx.AsyncClient) -> None:
            await env.client.start_workflow(
                SkeletonWorkflow.run,
                SkeletonInput(contract_id=f"bench-{i}", period_ends=[month_end],
                              grace_seconds=3600),
                id=f"skeleton:bench-{i}", task_queue="bench-skeleton",
            )

        await _side(skeleton, "skeleton", "bench-skeleton", address, url, max_cached, watcher,
                    temporal, start_skeleton, "SELECT count(*) FROM bench_skeleton_steps",
                    None, timeout_s, log)
        await _count_histories(env.client, "BenchSkeletonWorkflow", contracts, skeleton.wft)
        if statements_on:
            skeleton.statements = await statement_count(watcher)
            await watcher.execute("SELECT pg_stat_statements_reset()")

        billow = SleepSide("billow", contracts)
        starts_on = datetime.now(UTC).date().replace(day=1).isoformat()

        async def create_billow(i: int, http: httpx.AsyncClient) -> None:
            doc = {"id": f"bench-{i}", "plan": "pro", "starts_on": starts_on,
                   "term_months": 12,
                   "customer": {"id": f"bench-cust-{i}", "name": f"Bench Customer {i}"}}
            r = await http.post("/v1/contracts", json=doc,
                                headers={"Idempotency-Key": f"bench-{i}"})
            if r.status_code not in (200, 201):
                raise RuntimeError(f"create bench-{i}: {r.status_code} {r.text[:300]}")

        async with _api(env.client, url, "bench-billow") as base:
            await _side(billow, "billow", "bench-billow", address, url, max_cached, watcher,
                        temporal, create_billow,
                        "SELECT count(*) FROM contracts WHERE status = 'active'",
                        (base, crm_key), timeout_s, log)
        await _count_histories(env.client, "ContractWorkflow", contracts, billow.wft)
        if statements_on:
            billow.statements = await statement_count(watcher)
    finally:
        await watcher.close()
        await env.shutdown()
        await engine.dispose()
    return SleepingFigures(contracts, max_cached, skeleton, billow,
                           (load_start, os.getloadavg()))


async def _side(
    fig: SleepSide, side: str, task_queue: str, address: str, url: str,
    max_cached: int | None, watcher: asyncpg.Connection, temporal: psutil.Process | None,
    create_one: Callable[[int, httpx.AsyncClient], Awaitable[None]], asleep_sql: str,
    api: tuple[str, str] | None, timeout_s: float, log: bool,
) -> None:
    async with worker_process(side, address, task_queue, url, max_cached) as worker:
        await asyncio.sleep(1)
        fig.worker_idle = worker.memory_info().rss
        fig.temporal_before = _rss(temporal)
        fig.postgres_before = _postgres_uss(await _postgres(watcher))
        fig.db_before = await _db_size(watcher)
        gate = asyncio.Semaphore(CREATORS)
        base, key = api if api else ("http://unused", "")
        async with httpx.AsyncClient(base_url=base, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            async def create(i: int) -> None:
                async with gate:
                    await create_one(i, http)

            t0 = time.monotonic()
            await asyncio.gather(*(create(i) for i in range(fig.contracts)))
            fig.create_s = time.monotonic() - t0
        _say(log, f"  {side}: {fig.contracts} created in {fig.create_s:.1f}s")
        while int(await watcher.fetchval(asleep_sql)) < fig.contracts:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{side}: not every contract asleep after {timeout_s}s")
            await asyncio.sleep(0.5)
        fig.asleep_s = time.monotonic() - t0
        await asyncio.sleep(2)
        fig.worker_asleep = worker.memory_info().rss
        fig.temporal_after = _rss(temporal)
        fig.postgres_after = _postgres_uss(await _postgres(watcher))
        fig.db_after = await _db_size(watcher)
        _say(log, f"  {side}: all asleep after {fig.asleep_s:.1f}s, worker RSS "
                  f"{fig.worker_asleep / MIB:.0f} MiB")


@asynccontextmanager
async def _api(client: Client, url: str, task_queue: str) -> AsyncIterator[str]:
    """The real API on a free port, in this process (as tests/api/conftest.py runs it)."""

    async def connect() -> Client:
        return client

    deps = AppDeps(engine=make_engine(url), connect_temporal=connect,
                   temporal_ui_url="http://localhost:8233", namespace=client.namespace,
                   task_queue=task_queue, client=client)
    server = uvicorn.Server(uvicorn.Config(create_app(deps), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    # The bench's own Ctrl+C must stop the bench, not only this server (uvicorn
    # 0.54 captures SIGINT/SIGTERM in `capture_signals`).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("the API did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        await deps.engine.dispose()


def _temporal_process() -> psutil.Process | None:
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "temporal" in child.name():
                return child
    return None


def _rss(proc: psutil.Process | None) -> int:
    if proc is None:
        return 0
    with contextlib.suppress(psutil.Error):
        return int(proc.memory_info().rss)
    return 0


async def _postgres(conn: asyncpg.Connection) -> psutil.Process | None:
    """The postmaster serving ``conn`` when it runs on this machine (else None)."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(int(await conn.fetchval("SELECT pg_backend_pid()"))).parent()
    return None


def _postgres_uss(postmaster: psutil.Process | None) -> int:
    """Unique memory of the postmaster and its backends (shared buffers count once)."""
    if postmaster is None:
        return 0
    total = 0
    with contextlib.suppress(psutil.Error):
        for proc in [postmaster, *postmaster.children()]:
            with contextlib.suppress(psutil.Error):
                total += int(proc.memory_full_info().uss)
    return total


async def _db_size(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_database_size(current_database())"))


def _next_month_start(now: datetime) -> datetime:
    index = now.year * 12 + now.month  # the next month, 0-based
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _say(log: bool, message: str) -> None:
    if log:
        print(message, flush=True)


def report(f: SleepingFigures) -> list[str]:
    cache = f.max_cached if f.max_cached else "SDK default (1000)"
    s, b = f.skeleton, f.billow
    lines = [
        f"contracts: {f.contracts} asleep until {_next_month_start(datetime.now(UTC)):%Y-%m-%d}, "
        f"worker cache: {cache}, {CREATORS} creators",
        "load average (1/5/15 min) at start " + "/".join(f"{x:.1f}" for x in f.load[0])
        + ", at end " + "/".join(f"{x:.1f}" for x in f.load[1]),
    ]
    for side in (s, b):
        def each(before: int, after: int, side: SleepSide = side) -> str:
            return f"+{side.per_contract(before, after) / 1024:.1f} KiB each"

        lines.append(
            f"{side.name + ':':9} create {side.create_rate:6.1f}/s  asleep after "
            f"{side.asleep_s:6.1f}s  worker RSS {side.worker_asleep / MIB:.0f} MiB "
            f"({each(side.worker_idle, side.worker_asleep)})  "
            f"temporal {each(side.temporal_before, side.temporal_after)}  "
            f"db {each(side.db_before, side.db_after)}  "
            f"postgres {each(side.postgres_before, side.postgres_after)}  "
            f"wft timeouts {side.wft.wft_timeouts}  failures {side.wft.wft_failures}"
            + (f"  statements/contract {side.statements / side.contracts:.1f}"
               if side.statements is not None else "")
        )

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}x" if y > 0 else "n/a"

    lines.append(
        "ratios billow/skeleton: worker memory per contract "
        + ratio(b.per_contract(b.worker_idle, b.worker_asleep),
                s.per_contract(s.worker_idle, s.worker_asleep))
        + ", creation rate " + ratio(b.create_rate, s.create_rate)
        + f"  (goal: 10,000 contracts on one worker under 1 GiB RSS; worker RSS now "
        f"{b.worker_asleep / MIB:.0f} MiB)"
    )
    return lines

