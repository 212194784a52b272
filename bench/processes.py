"""The storm's processes: the API (`billow api`) and workers, each its own process.

A worker process is one Python event loop. So is the API. Run in the bench's
own process, either would share that loop with the bench's clients and with
each other, and a storm would measure their contention instead of billow. In
production they are separate processes (deploy/README.md), so here too.

Each worker process (`bench.sleeping_worker`) serves the SDK's Prometheus
metrics on its own port. `slots_used` reads them: a workflow-task slot still
taken once the storm is over and nothing runs is the leaked slot of
bench/RESULTS.md section 7.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from bench.sleeping import _worker_process
from worker.tuning import WorkerTuning

# What the SDK calls each kind of slot, in its metrics' worker_type label.
WORKFLOW_SLOTS = "WorkflowWorker"
LOCAL_ACTIVITY_SLOTS = "LocalActivityWorker"
_SLOTS_USED = re.compile(
    r'^temporal_worker_task_slots_used\{[^}]*worker_type="(\w+)"[^}]*\} (\d+(?:\.\d+)?)$', re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tuning_env(tuning: WorkerTuning) -> dict[str, str]:
    """The ``BILLOW_WORKER_*`` settings (worker/settings.py) that give ``tuning``."""
    names = {
        "max_cached_workflows": "BILLOW_WORKER_MAX_CACHED_WORKFLOWS",
        "max_concurrent_workflow_tasks": "BILLOW_WORKER_MAX_CONCURRENT_WORKFLOW_TASKS",
        "max_concurrent_local_activities": "BILLOW_WORKER_MAX_CONCURRENT_LOCAL_ACTIVITIES",
        "max_concurrent_activities": "BILLOW_WORKER_MAX_CONCURRENT_ACTIVITIES",
        "sticky_schedule_to_start_s": "BILLOW_WORKER_STICKY_SCHEDULE_TO_START_SECONDS",
    }
    return {env: str(getattr(tuning, attr)) for attr, env in names.items()
            if getattr(tuning, attr) is not None}


@dataclass
class WorkerProcess:
    metrics_port: int


@contextlib.asynccontextmanager
async def worker_processes(n: int, side: str, address: str, task_queue: str, url: str,
                           tuning: WorkerTuning) -> AsyncIterator[list[WorkerProcess]]:
    """``n`` worker processes on ``task_queue``, all with ``tuning``."""
    async with contextlib.AsyncExitStack() as stack:
        procs = []
        for _ in range(n):
            port = free_port()
            env = {**os.environ, **tuning_env(tuning), "BENCH_WORKER_METRICS_PORT": str(port)}
            await stack.enter_async_context(
                _worker_process(side, address, task_queue, url, None, env=env))
            procs.append(WorkerProcess(port))
        yield procs


async def slots_used(procs: list[WorkerProcess]) -> dict[str, int]:
    """Slots taken right now, summed over the processes, by kind (SDK metrics)."""
    used: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for p in procs:
            try:
                text = (await http.get(f"http://127.0.0.1:{p.metrics_port}/metrics")).text
            except httpx.HTTPError:
                continue
            for kind, value in _SLOTS_USED.findall(text):
                used[kind] = used.get(kind, 0) + int(float(value))
    return used


@contextlib.asynccontextmanager
async def api_process(address: str, namespace: str, task_queue: str,
                      url: str) -> AsyncIterator[str]:
    """`billow api` on a free port, as deployed; yields its base URL once healthy."""
    port = free_port()
    env = {**os.environ, "BILLOW_DATABASE_URL": url, "BILLOW_TEMPORAL_ADDRESS": address,
           "BILLOW_TEMPORAL_NAMESPACE": namespace, "BILLOW_TASK_QUEUE": task_queue,
           "BILLOW_API_HOST": "127.0.0.1", "BILLOW_API_PORT": str(port),
           "BILLOW_LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "worker.cli", "api",
                                                env=env, stdout=asyncio.subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            for _ in range(600):
                if proc.returncode is not None:
                    raise RuntimeError(f"billow api exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("billow api not healthy after 60 s")
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
