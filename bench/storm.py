"""``python -m bench storm``: every contract closes a period at the same instant.

The first of the month: every calendar-anchored contract closes at once. Here
N contracts start a month back with a prepaid commitment, so their first
period is already over; each gets the usage grace window that puts its close
at one instant ``T``, a lead time after the run starts (the close is one grace
window after creation, `ContractState.close_at`; grace has a one-second
resolution, so all closes fall within about a second of ``T``). The floor is
`bench.skeleton.SkeletonWorkflow` with one period ending at its own ``T``:
the same timers and one committed row per step, on the same dev server and
worker, measured first in the same run.

During billow's storm, amendments (a small grant) and payments (of the
commitment invoice) go through the real API at a steady rate, and their
latency and status codes are recorded: the goal is p99 under 2 s and never a
500 while the storm runs.

Printed for each side: the storm's length (from ``T`` until every period's
row is committed), lateness p50/p99, workflow-task timeouts and failures
from the histories; the ratio billow/skeleton; the API's latency figures.
With ``workers`` > 0, also the most workflow-task and local-activity slots
the worker processes had taken at once during the storm, and what they still
held a few seconds after it (anything but 0 is a stuck worker: RESULTS
sections 7 and 10).

Both sides run with the same `WorkerTuning` (slots, sticky timeout: the
``--wft-slots``, ``--la-slots``, ``--sticky-timeout`` flags). The API is its
own process (`bench.processes.api_process`), as deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import httpx
from sqlalchemy import text
from temporalio.client import Client
from temporalio.worker import Worker

from activities.api_keys import create_api_key
from activities.catalog_store import apply_catalog
from activities.db import make_engine
from bench.lifecycle import (
    CATALOG,
    CREATORS,
    POLL,
    SideFigures,
    _count_histories,
    _xacts,
    first_of_month,
)
from bench.processes import WorkerProcess, api_process, slots_used, worker_processes
from bench.skeleton import SKELETON_TABLE, SkeletonActivities, SkeletonInput, SkeletonWorkflow
from models.catalog import load_catalog
from worker.main import build_worker
from worker.temporal_envs import start_dev_server
from worker.tuning import WorkerTuning

COMMITMENT = "1200.00"
SEND_RATE = 20.0  # amendments + payments per second during the storm
SAMPLE = 200  # contracts that get an amendment and a payment during the storm


@dataclass
class Call:
    kind: str  # amend | pay
    status: int
    latency_s: float


@dataclass
class StormFigures:
    contracts: int
    lead_s: float
    skeleton: SideFigures
    billow: SideFigures
    calls: list[Call] = field(default_factory=list)
    created_late: int = 0  # billow contracts created after T (their close is later)
    skeleton_late: int = 0  # skeleton runs started after their T
    create_s: float = 0.0  # billow: creating every contract through the API
    workers: int = 0  # worker processes per side (0: one in the bench's process)
    load: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    tuning: WorkerTuning = field(default_factory=WorkerTuning)
    # side -> slot kind -> the most taken at once during the storm / still taken after it
    slots_peak: dict[str, dict[str, int]] = field(default_factory=dict)
    slots_after: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.billow.elapsed_s / self.skeleton.elapsed_s if self.skeleton.elapsed_s else 0

    def latency(self, q: float, kind: str | None = None) -> float:
        xs = sorted(c.latency_s for c in self.calls if kind in (None, c.kind))
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def lead_for(contracts: int) -> float:
    """Time to create every contract before ``T``: at a pessimistic 25/s, plus margin."""
    return contracts / 25 + 20


@contextlib.asynccontextmanager
async def _side_workers(n: int, side: str, client: Client, url: str, task_queue: str,
                        in_process: Callable[[], Worker],
                        tuning: WorkerTuning) -> AsyncIterator[list[WorkerProcess]]:
    """The side's workers: one in this process (``n`` = 0), or ``n`` worker
    processes on the task queue (`bench.sleeping_worker`, given ``tuning``
    through the ``BILLOW_WORKER_*`` settings). A worker is one event loop:
    more processes use more of the machine's cores."""
    if n == 0:
        async with in_process():
            yield []
        return
    address = client.service_client.config.target_host
    async with worker_processes(n, side, address, task_queue, url, tuning) as procs:
        yield procs


async def run_storm(url: str, dsn: str, *, contracts: int, lead_s: float | None = None,
                    timeout_s: float = 3600.0, log: bool = True, workers: int = 0,
                    tuning: WorkerTuning | None = None) -> StormFigures:
    tuning = tuning or WorkerTuning()
    lead = lead_s if lead_s is not None else lead_for(contracts)
    load_start = os.getloadavg()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    engine = make_engine(url, pool_size=10)
    watcher = await asyncpg.connect(dsn)
    env = await start_dev_server()
    client = env.client
    figures = StormFigures(contracts, lead, SideFigures("skeleton"), SideFigures("billow"),
                           workers=workers, tuning=tuning)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(SKELETON_TABLE))
            await apply_catalog(conn, load_catalog(CATALOG))
            key = (await create_api_key(conn, ["ops"], "bench storm")).key

        # --- the floor ------------------------------------------------------------
        # The floor's runs get the same lead: a shorter one (contracts/100 + 15 s) left
        # 696 and 3,153 of 5,000 started after T on a loaded machine (RESULTS 10).
        storm_at = datetime.now(UTC) + timedelta(seconds=lead)
        gate = asyncio.Semaphore(CREATORS)

        async def start_skeleton(i: int) -> None:
            async with gate:
                if datetime.now(UTC) >= storm_at:
                    figures.skeleton_late += 1
                await client.start_workflow(
                    SkeletonWorkflow.run,
                    SkeletonInput(contract_id=f"storm-{i}", period_ends=[storm_at],
                                  grace_seconds=0),
                    id=f"skeleton:storm-{i}", task_queue="bench-skeleton")

        def skeleton_worker() -> Worker:
            return Worker(client, task_queue="bench-skeleton", workflows=[SkeletonWorkflow],
                          activities=[SkeletonActivities(engine).step],
                          **tuning.worker_kwargs())

        async with _side_workers(workers, "skeleton", client, url, "bench-skeleton",
                                 skeleton_worker, tuning) as procs:
            await asyncio.gather(*(start_skeleton(i) for i in range(contracts)))
            figures.slots_peak["skeleton"] = await _storm(
                figures.skeleton, watcher, storm_at, contracts, timeout_s, log,
                "SELECT contract_id, step::text AS key FROM bench_skeleton_steps WHERE step = 1",
                procs)
            figures.slots_after["skeleton"] = await _settled_slots(procs)
        await _count_histories(client, "BenchSkeletonWorkflow", contracts, figures.skeleton)
        _say(log, f"skeleton: storm over in {figures.skeleton.elapsed_s:.1f}s")

        # --- billow ---------------------------------------------------------------
        storm_at = datetime.now(UTC) + timedelta(seconds=lead)
        starts_on = first_of_month(datetime.now(UTC).date(), 1).isoformat()
        address = client.service_client.config.target_host
        async with api_process(address, client.namespace, "bench-storm", url) as base, \
                httpx.AsyncClient(base_url=base, timeout=60,
                                  headers={"Authorization": f"Bearer {key}"}) as http, \
                _side_workers(workers, "billow", client, url, "bench-storm",
                              lambda: build_worker(client, engine, "bench-storm", tuning=tuning),
                              tuning) as procs:

            async def create(i: int) -> None:
                async with gate:
                    if datetime.now(UTC) >= storm_at:
                        figures.created_late += 1
                    grace = max(1, math.ceil((storm_at - datetime.now(UTC)).total_seconds()))
                    hours = (Decimal(grace) / 3600).quantize(Decimal("1e-9"), ROUND_CEILING)
                    r = await http.post("/v1/contracts", headers={"Idempotency-Key": f"c{i}"},
                                        json={
                        "id": f"storm-{i}", "plan": "pro", "starts_on": starts_on,
                        "term_months": 12, "usage_grace_hours": str(hours),
                        "commitment": {"amount": COMMITMENT, "bonus_percent": "0"},
                        "customer": {"id": f"storm-cust-{i}", "name": f"Storm Customer {i}"},
                    })
                    if r.status_code not in (200, 201):
                        raise RuntimeError(f"create storm-{i}: {r.status_code} {r.text[:300]}")

            commits0, rollbacks0 = await _xacts(watcher)
            t0 = time.monotonic()
            await asyncio.gather(*(create(i) for i in range(contracts)))
            figures.create_s = time.monotonic() - t0
            _say(log, f"billow: {contracts} created in {figures.create_s:.1f}s, "
                      f"{figures.created_late} after T")
            numbers = await _commitment_invoices(watcher, contracts)
            sender = asyncio.create_task(_send_during_storm(http, storm_at, numbers, figures))
            figures.slots_peak["billow"] = await _storm(
                figures.billow, watcher, storm_at, contracts, timeout_s, log,
                "SELECT contract_id, key FROM invoices WHERE kind = 'usage' "
                "AND number IS NOT NULL", procs)
            await sender
            figures.slots_after["billow"] = await _settled_slots(procs)
            commits1, rollbacks1 = await _xacts(watcher)
            figures.billow.commits = commits1 - commits0
            figures.billow.rollbacks = rollbacks1 - rollbacks0
        await _count_histories(client, "ContractWorkflow", contracts, figures.billow)
        _say(log, f"billow: storm over in {figures.billow.elapsed_s:.1f}s")
    finally:
        await watcher.close()
        await env.shutdown()
        await engine.dispose()
    figures.load = (load_start, os.getloadavg())
    return figures


async def _storm(fig: SideFigures, watcher: asyncpg.Connection, storm_at: datetime,
                 expected: int, timeout_s: float, log: bool, seen_sql: str,
                 procs: list[WorkerProcess]) -> dict[str, int]:
    """Wait for ``expected`` rows; the storm lasts from ``storm_at`` to the last one.
    Returns the most slots of each kind the worker processes held at once."""
    seen: dict[tuple[str, str], datetime] = {}
    peak: dict[str, int] = {}
    started = time.monotonic()
    next_note = started + 15
    next_sample = started
    while len(seen) < expected:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{fig.name}: {len(seen)} of {expected} rows after {timeout_s}s")
        await asyncio.sleep(POLL)
        now = datetime.now(UTC)
        for r in await watcher.fetch(seen_sql):
            seen.setdefault((r["contract_id"], r["key"]), now)
        if procs and now >= storm_at and time.monotonic() >= next_sample:
            next_sample = time.monotonic() + 2
            for kind, n in (await slots_used(procs)).items():
                peak[kind] = max(n, peak.get(kind, 0))
        if log and time.monotonic() >= next_note:
            next_note += 15
            _say(log, f"  {fig.name}: {len(seen)}/{expected} closed, slots peak {peak}")
    fig.rows = len(seen)
    fig.lateness_s = [max(0.0, (at - storm_at).total_seconds()) for at in seen.values()]
    fig.elapsed_s = max(fig.lateness_s)
    return peak


async def _settled_slots(procs: list[WorkerProcess]) -> dict[str, int]:
    """Slots still taken once the storm's work is done (0 unless one leaked).

    A closed contract's last workflow task completes just after its row
    commits, so this waits for the count to reach 0, for up to 10 s."""
    used: dict[str, int] = {}
    for _ in range(20):
        used = await slots_used(procs)
        if not any(used.values()):
            break
        await asyncio.sleep(0.5)
    return used


async def _commitment_invoices(watcher: asyncpg.Connection, contracts: int) -> dict[str, str]:
    """contract -> its commitment invoice's number (issued when its term opened)."""
    for _ in range(600):
        rows = await watcher.fetch(
            "SELECT contract_id, number FROM invoices WHERE kind = 'commitment' "
            "AND number IS NOT NULL")
        if len(rows) >= min(SAMPLE, contracts):
            break
        await asyncio.sleep(0.2)
    return {r["contract_id"]: r["number"] for r in rows}


async def _send_during_storm(http: httpx.AsyncClient, storm_at: datetime,
                             numbers: dict[str, str], figures: StormFigures) -> None:
    """From ``T`` on, SEND_RATE calls a second: a grant and a payment per sampled contract."""
    await asyncio.sleep(max(0.0, (storm_at - datetime.now(UTC)).total_seconds()))
    sample = sorted(numbers)[:SAMPLE]
    plan: list[tuple[str, str, dict[str, str], str]] = []
    for cid in sample:
        plan.append(("amend", f"/v1/contracts/{cid}/amendments",
                     {"id": f"storm-grant-{cid}", "kind": "grant_credits", "credits": "10.00"},
                     f"amend-{cid}"))
        plan.append(("pay", f"/v1/invoices/{numbers[cid]}/payments",
                     {"amount": COMMITMENT, "payment_id": f"storm-pay-{cid}"}, f"pay-{cid}"))

    async def call(kind: str, path: str, body: dict[str, str], key: str) -> None:
        t0 = time.monotonic()
        try:
            r = await http.post(path, json=body, headers={"Idempotency-Key": key})
            status = r.status_code
        except httpx.HTTPError:
            status = 0  # no answer at all
        figures.calls.append(Call(kind, status, time.monotonic() - t0))

    tasks = []
    for n, (kind, path, body, key) in enumerate(plan):
        delay = n / SEND_RATE - (datetime.now(UTC) - storm_at).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call(kind, path, body, key)))
    await asyncio.gather(*tasks)


def _say(log: bool, message: str) -> None:
    if log:
        print(message, flush=True)


def report(f: StormFigures) -> list[str]:
    kw = f.tuning.worker_kwargs()
    lines = [
        f"contracts: {f.contracts}, one period each closing at the same instant "
        f"{f.lead_s:.0f}s after setup; billow's created in {f.create_s:.0f}s "
        f"({f.contracts / f.create_s if f.create_s else 0:.1f}/s), {f.created_late} after it "
        f"(skeleton: {f.skeleton_late}); "
        + (f"{f.workers} worker processes per side" if f.workers else "one worker in-process")
        + f"; slots per worker: {kw['max_concurrent_workflow_tasks']} workflow tasks, "
        f"{kw['max_concurrent_local_activities']} local activities; sticky schedule-to-start "
        f"{kw['sticky_queue_schedule_to_start_timeout'].total_seconds():g}s",
        "load average (1/5/15 min) at start " + "/".join(f"{x:.1f}" for x in f.load[0])
        + ", at end " + "/".join(f"{x:.1f}" for x in f.load[1]),
    ]
    for s in (f.skeleton, f.billow):
        lines.append(
            f"{s.name + ':':9} storm {s.elapsed_s:7.1f}s  lateness p50 {s.lateness(0.5):6.1f}s "
            f"p99 {s.lateness(0.99):6.1f}s  runs {s.runs}  wft timeouts {s.wft_timeouts} "
            f"{s.wft_timeout_kinds or ''}  wft failures {s.wft_failures}"
            + (f"  commits {s.commits}  rollbacks {s.rollbacks}" if s.commits else ""))
        if s.name in f.slots_peak:
            lines.append(f"{'':9} slots taken (all workers): peak {f.slots_peak[s.name]}, "
                         f"after the storm {f.slots_after.get(s.name, {})}")
    statuses: dict[int, int] = {}
    for c in f.calls:
        statuses[c.status] = statuses.get(c.status, 0) + 1
    lines.append(
        f"during the storm: {len(f.calls)} amendments and payments through the API, latency "
        f"p50 {f.latency(0.5):.2f}s p99 {f.latency(0.99):.2f}s max {f.latency(1.0):.2f}s, "
        "statuses " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        + "; " + ", ".join(f"{kind} p50 {f.latency(0.5, kind):.2f}s "
                           f"p99 {f.latency(0.99, kind):.2f}s" for kind in ("amend", "pay")))
    lines.append(f"ratio billow/skeleton: {f.ratio:.2f}x  (goal <= 2x at 5,000 contracts, "
                 "0 wft timeouts, p99 < 2 s, never a 500)")
    return lines
