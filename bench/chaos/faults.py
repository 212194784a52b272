"""When to kill what: the seeded fault schedule of the fault run.

``total`` faults are spread over ``window_s`` (about how long the control
took from its first period closing to quiescence, so they land while the
contracts catch up):
PostgreSQL and the Temporal server once each (somewhere in the middle of the
sequence), the API about a quarter of the time (each time while requests are
in flight: "during batches"), a worker the rest of the time (at random
moments, either of the two). Every killed process is restarted before the
next fault; a fault never starts before the previous one has recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter

from bench.chaos.driver import Driver
from bench.chaos.processes import Fault, Stack

MIN_GAP_S = 0.5  # after a restart, at least this long before the next kill
API_WAIT_S = 5.0  # how long an API kill waits for requests to be in flight


def fault_sequence(total: int, rng: random.Random) -> list[str]:
    """The kinds of ``total`` faults in order."""
    if total <= 0:
        return []
    singles = [k for k in ("postgres", "temporal")][: max(0, min(2, total - 1))]
    apis = max(1, round((total - len(singles)) / 4)) if total > len(singles) else 0
    rest = ["api"] * apis + ["worker"] * (total - len(singles) - apis)
    rng.shuffle(rest)
    # The two singles go in the middle half, where the catch-up is busiest.
    for kind in singles:
        lo, hi = len(rest) // 4, max(len(rest) // 4, (3 * len(rest)) // 4)
        rest.insert(rng.randint(lo, hi), kind)
    return rest


def counts(faults: list[Fault]) -> dict[str, int]:
    return dict(Counter(f.kind for f in faults))


async def inject(stack: Stack, driver: Driver, total: int, window_s: float, seed: int) -> None:
    """Kill and restart processes of ``stack`` while ``driver`` runs its workload.

    The first API kill comes while contracts are created and their usage sent;
    the rest are spread over ``window_s`` from the moment the first contract's
    grace window ends and its past periods start closing.
    """
    rng = random.Random(seed * 7919 + 17)
    kinds = fault_sequence(total, rng)
    await driver.workload_started.wait()
    if "api" in kinds:
        kinds.remove("api")
        await _kill_api(stack, driver)
    await driver.contract_created.wait()
    at = driver.catchup_at
    assert at is not None
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    mean_gap = max(window_s / max(len(kinds), 1), MIN_GAP_S)
    for kind in kinds:
        await asyncio.sleep(max(MIN_GAP_S, rng.uniform(0.3, 1.7) * mean_gap))
        if kind == "worker":
            await stack.kill(rng.choice(stack.worker_names), driver.phase)
        elif kind == "api":
            await _kill_api(stack, driver)
        else:
            await stack.kill(kind, driver.phase)


async def _kill_api(stack: Stack, driver: Driver) -> None:
    """"During batches": wait for requests on the wire, then kill."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(driver.client.busy.wait(), API_WAIT_S)
    await stack.kill("api", driver.phase, inflight=driver.client.inflight)
