"""A worker process for `bench.sleeping`: its memory is what the bench measures.

``python -m bench.sleeping_worker SIDE ADDRESS TASK_QUEUE DATABASE_URL [MAX_CACHED]``
with SIDE ``billow`` (the real worker, `worker.main.build_worker`) or
``skeleton`` (`bench.skeleton`). Prints ``ready`` once polling; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.db import make_engine
from bench.skeleton import SkeletonActivities, SkeletonWorkflow
from worker.main import build_worker
from worker.tuning import WorkerTuning


async def _serve(side: str, address: str, task_queue: str, url: str,
                 max_cached: int | None) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    engine = make_engine(url, pool_size=10)
    tuning = WorkerTuning(max_cached_workflows=max_cached)
    if side == "billow":
        worker = build_worker(client, engine, task_queue, tuning=tuning)
    else:
        worker = Worker(client, task_queue=task_queue, workflows=[SkeletonWorkflow],
                        activities=[SkeletonActivities(engine).step],
                        **tuning.worker_kwargs())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print("ready", flush=True)
        await stop.wait()
    await engine.dispose()


def main(argv: list[str]) -> None:
    side, address, task_queue, url = argv[:4]
    max_cached = int(argv[4]) if len(argv) > 4 else None
    asyncio.run(_serve(side, address, task_queue, url, max_cached))
    sys.stdout.flush()
    # The SDK's Rust threads can call into a finalizing interpreter (worker/main.py).
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
