"""A retry after an API process died mid-request (issue 12's promise that retries are
always safe, found by the chaos run with corrections, issue 14).

An API process that is killed (kill -9) while it runs a request leaves that
request's claim on its ``Idempotency-Key``. Every retry through another API
process waits for the claim to lapse, answering 503 "still being processed"
after the workflow deadline. The claim lapsed only deadline + 15 s (45 s by
default) after it was taken, so under repeated API crashes (the chaos run kills
the API every few seconds at times) a retried payment or correction went
unanswered for over 90 s although billow had applied it long before. A live
process now renews a short claim while it works, so a dead one's claim lapses
within one short lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text

from tests.api.helpers import ApiServer
from tests.api.test_idempotency import _paid, invoice  # noqa: F401  (fixture)
from tests.support.paths import REPO
from worker.main import build_worker
from worker.ports import free_port

LEASE_S = 2.0


@contextlib.contextmanager
def api_process(api: ApiServer, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``billow api`` as its own process on the test's database and Temporal."""
    config = api.client.service_client.config
    env = {
        **os.environ,
        "BILLOW_DATABASE_URL": api.deps.engine.url.render_as_string(hide_password=False),
        "BILLOW_TEMPORAL_ADDRESS": config.target_host,
        "BILLOW_TEMPORAL_NAMESPACE": api.client.namespace,
        "BILLOW_TASK_QUEUE": api.task_queue,
        "BILLOW_API_PORT": str(port),
        "BILLOW_API_IDEMPOTENCY_LEASE_SECONDS": str(LEASE_S),
        "BILLOW_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "api"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def _up(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as http:
        for _ in range(300):
            assert proc.poll() is None, "the API process exited"
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/healthz")).status_code in (200, 503):
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


async def _claimed(api: ApiServer, key: str) -> None:
    for _ in range(200):
        async with api.deps.engine.connect() as conn:
            held = await conn.scalar(text(
                "SELECT count(*) FROM idempotency_keys WHERE key = :k "
                "AND claim_token IS NOT NULL"), {"k": key})
        if held:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the request never claimed its key")


async def test_a_retry_takes_over_soon_after_the_api_process_died_mid_request(
    api: ApiServer, invoice: dict[str, Any],  # noqa: F811
) -> None:
    number = invoice["number"]
    key = f"k-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {api.keys['ops']}", "Idempotency-Key": key}
    payment = {"amount": "100.00"}
    a_port, b_port = free_port(), free_port()
    with api_process(api, a_port) as a, api_process(api, b_port) as b:
        await asyncio.gather(_up(f"http://127.0.0.1:{a_port}", a),
                             _up(f"http://127.0.0.1:{b_port}", b))
        async with httpx.AsyncClient(trust_env=False, timeout=60.0) as http:
            # No worker: process A waits for the workflow, holding the key's claim.
            first = asyncio.create_task(http.post(
                f"http://127.0.0.1:{a_port}/v1/invoices/{number}/payments", json=payment,
                headers=headers))
            await _claimed(api, key)
            a.send_signal(signal.SIGKILL)
            with contextlib.suppress(httpx.HTTPError):
                await first
            async with build_worker(api.client, api.deps.engine, api.task_queue):
                began = time.monotonic()
                retry = await http.post(
                    f"http://127.0.0.1:{b_port}/v1/invoices/{number}/payments", json=payment,
                    headers=headers)
                took = time.monotonic() - began
    assert retry.status_code == 200, (retry.status_code, retry.text, f"{took:.1f} s")
    assert took < LEASE_S + 5, f"the retry waited {took:.1f} s for a dead process's claim"
    assert retry.json()["applied"] is True
    assert retry.json()["amount_paid"] == "100.00"
    assert await _paid(api, number) == (Decimal("100.00"), 1)


async def test_a_request_that_is_still_running_keeps_its_claim_past_the_lease(
    api: ApiServer, invoice: dict[str, Any],  # noqa: F811
) -> None:
    """The other half: a short lease must not let a retry run beside a live request."""
    number = invoice["number"]
    key = f"k-{uuid.uuid4().hex}"
    saved = (api.deps.idempotency_lease_seconds, api.deps.workflow_timeout_seconds)
    api.deps.idempotency_lease_seconds, api.deps.workflow_timeout_seconds = 0.6, 3.0
    try:
        async with api.http("ops") as http:
            # No worker: the request waits for the workflow until its deadline (504).
            first = asyncio.create_task(http.post(
                f"/v1/invoices/{number}/payments", json={"amount": "100.00"},
                headers={"Idempotency-Key": key}))
            await _claimed(api, key)
            await asyncio.sleep(1.5)  # more than two leases
            async with api.deps.engine.connect() as conn:
                alive = await conn.scalar(text(
                    "SELECT claimed_until > now() FROM idempotency_keys WHERE key = :k"),
                    {"k": key})
            assert alive, "the running request's claim lapsed"
            assert (await first).status_code == 504
    finally:
        api.deps.idempotency_lease_seconds, api.deps.workflow_timeout_seconds = saved
    assert await _paid(api, number) == (Decimal(0), 0)
