"""The storm's processes: the API (`billow api`) and workers, each its own process.

A worker process is one Python event loop. So is the API. Run in the bench's
own process, either would share that loop with the bench's clients and with
each other, and a storm would measure their contention instead of billow. In
production they are separate processes (deploy/README.md), so here too.

Each worker process (`bench.sleeping_worker`) serves the SDK's Prometheus
metrics on its own port. `slots_used` reads them: a workflow-task slot still
taken once the storm is over and nothing runs is a stuck worker, as in
bench/RESULTS.md section 7 (whose cause, section 10 found, was a stdout pipe
nobody read: `ready_process` reads it).
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
import psutil

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


@contextlib.asynccontextmanager
async def ready_process(args: list[str], *, env: dict[str, str] | None = None,
                        start_timeout_s: float = 60) -> AsyncIterator[psutil.Process]:
    """``python ARGS`` once it prints ``ready``; SIGTERM (then SIGKILL) on exit.

    The child's stdout is a pipe (that is how ``ready`` arrives). Everything it
    writes afterwards is copied to this process's stderr until it exits: a pipe
    nobody reads fills at 64 KiB, and the child's next write blocks for good.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, env=env)
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), start_timeout_s)
        if line.strip() != b"ready":
            raise RuntimeError(f"{args} did not start (exit {proc.returncode})")
        drain = asyncio.create_task(_copy_to_stderr(proc.stdout))
        yield psutil.Process(proc.pid)
    finally:
        await _stop(proc)
        if drain is not None:
            await drain  # ends at the pipe's end-of-file, once the child is gone


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def _copy_to_stderr(stream: asyncio.StreamReader) -> None:
    while chunk := await stream.read(65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()


@contextlib.asynccontextmanager
async def worker_process(side: str, address: str, task_queue: str, url: str,
                         max_cached: int | None, *, env: dict[str, str] | None = None,
                         ) -> AsyncIterator[psutil.Process]:
    """One `bench.sleeping_worker` process (``side``: billow or skeleton)."""
    args = [side, address, task_queue, url] + ([str(max_cached)] if max_cached else [])
    async with ready_process(["-m", "bench.sleeping_worker", *args], env=env) as proc:
        yield proc


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
                worker_process(side, address, task_queue, url, None, env=env))
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
        await _stop(proc)
