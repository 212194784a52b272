"""A worker process for `bench.sleeping`: its memory is what the bench measures.

``python -m bench.sleeping_worker SIDE ADDRESS TASK_QUEUE DATABASE_URL [MAX_CACHED]``
with SIDE ``billow`` (the real worker, `worker.main.build_worker`) or
``skeleton`` (`bench.skeleton`). Prints ``ready`` once polling; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.db import make_engine
from bench.skeleton import SkeletonActivities, SkeletonWorkflow
from worker.main import build_worker
from worker.settings import Settings
from worker.telemetry import core_logging_config


async def _serve(side: str, address: str, task_queue: str, url: str,
                 max_cached: int | None) -> None:
    # As `billow worker` (worker/telemetry.py): the core's warnings through Python
    # logging to stderr, and the SDK's Prometheus metrics when asked for.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    metrics_port = os.environ.get("BENCH_WORKER_METRICS_PORT")
    runtime = Runtime(telemetry=TelemetryConfig(
        logging=core_logging_config(),
        metrics=(PrometheusConfig(bind_address=f"127.0.0.1:{metrics_port}")
                 if metrics_port else None)))
    client = await Client.connect(address, data_converter=pydantic_data_converter,
                                  runtime=runtime)
    engine = make_engine(url, pool_size=10)
    # BILLOW_WORKER_* capacity settings apply, as in `billow worker`.
    tuning = replace(Settings().worker_tuning(),
                     **({"max_cached_workflows": max_cached} if max_cached else {}))
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
