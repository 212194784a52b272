"""The worker and the API run exactly as the image runs them (``billow worker``,
``billow api``), against the test PostgreSQL and the dev Temporal server;
their metrics endpoints are scraped, and SIGTERM stops them gracefully.

Also: the namespace/search-attribute setup script of deploy/ against a real
Temporal server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.api_keys import create_api_key
from activities.catalog_store import apply_catalog
from models.catalog import load_catalog_file
from models.contract import load_contract_file
from models.periods import BillingCycle
from tests.deploy.deploy_checks import COMPOSE_DIR, REPO
from tests.support.paths import ACME
from worker.contract_service import start_contract
from workflows import search_attributes

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    """``{(sample name, sorted labels): value}`` of a Prometheus endpoint."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == val for k, val in labels.items()))


class Proc:
    """A billow process started like the image's entry command."""

    def __init__(self, command: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = command
        self.stdout_path = log_dir / f"{command}.stdout"
        self.stderr_path = log_dir / f"{command}.stderr"
        self._out: IO[bytes] = self.stdout_path.open("wb")
        self._err: IO[bytes] = self.stderr_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", command],
            cwd=REPO, env=env, stdout=self._out, stderr=self._err, start_new_session=True,
        )

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_http(self, port: int, path: str) -> httpx.Response:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.popen.returncode}:\n{self.logs()}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name}: nothing on :{port} after {START_TIMEOUT_S}s\n{self.logs()}"
                    ) from None
                time.sleep(0.2)

    def terminate(self) -> int:
        """SIGTERM (what Kubernetes and `docker stop` send); the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=STOP_TIMEOUT_S)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        self._out.close()
        self._err.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


def _base_env(database_url: str, env: WorkflowEnvironment, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("BILLOW_") and k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")}
    base.update({
        "BILLOW_DATABASE_URL": database_url,
        "BILLOW_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "BILLOW_TEMPORAL_NAMESPACE": env.client.namespace,
        "BILLOW_METRICS_HOST": "127.0.0.1",
        "BILLOW_API_HOST": "127.0.0.1",
        "BILLOW_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return base


async def _wait_for(
    what: str, check: Callable[[], Awaitable[bool]], proc: Proc, limit_s: float = 60
) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.logs()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{proc.logs()[-4000:]}")
        await asyncio.sleep(0.5)


def _json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


async def test_worker_and_api_serve_metrics_and_stop_gracefully(
    database_url: str, db: AsyncEngine, dev_temporal_env: WorkflowEnvironment,
    procs: list[Proc], tmp_path: Path,
) -> None:
    sdk_port, app_port, api_port = free_ports(3)
    task_queue = f"deploy-{uuid.uuid4().hex[:8]}"
    env = _base_env(
        database_url, dev_temporal_env,
        BILLOW_TASK_QUEUE=task_queue,
        BILLOW_WORKER_METRICS_PORT=str(sdk_port),
        BILLOW_WORKER_APP_METRICS_PORT=str(app_port),
        BILLOW_API_PORT=str(api_port),
        BILLOW_WORKER_GRACEFUL_SHUTDOWN_SECONDS="5",
        # Tracing through the TracingInterceptor, spans printed to stdout.
        BILLOW_OTEL_ENABLED="true",
        BILLOW_OTEL_EXPORTER="console",
    )
    worker = Proc("worker", env, tmp_path)
    procs.append(worker)
    api = Proc("api", {**env, "BILLOW_OTEL_ENABLED": "false"}, tmp_path)
    procs.append(api)

    # --- the worker: both endpoints up, SDK metrics flowing ---
    assert worker.wait_http(app_port, "/metrics").status_code == 200
    async def sdk_metrics_flow() -> bool:
        return total(await scrape(sdk_port), "temporal_worker_task_slots_available") > 0

    await _wait_for("Temporal SDK worker metrics", sdk_metrics_flow, worker)
    sdk = await scrape(sdk_port)
    assert total(sdk, "temporal_worker_task_slots_available", task_queue=task_queue) > 0

    before = await scrape(app_port)
    assert total(before, "billow_invoices_finalized_total") == 0

    # --- a contract that started three months ago: it catches up at once ---
    async with db.begin() as conn:
        await apply_catalog(conn, load_catalog_file(ACME / "catalog.yaml"))
    today = datetime.now(UTC).date()
    month = today.month - 3
    starts_on = date(today.year + (month - 1) // 12, (month - 1) % 12 + 1, 1)
    contract = load_contract_file(ACME / "contract.yaml").model_copy(update={
        "id": f"deploy-{uuid.uuid4().hex[:8]}", "starts_on": starts_on,
        "billing_cycle": BillingCycle.MONTHLY, "usage_grace_hours": Decimal(0),
    })
    await start_contract(dev_temporal_env.client, db, contract, task_queue)

    # Commitment invoice at the start + one usage invoice per closed month.
    async def invoices_counted() -> bool:
        samples = await scrape(app_port)
        return total(samples, "billow_invoices_finalized_total", kind="usage") >= 3

    await _wait_for("billow's invoice counters", invoices_counted, worker)
    after = await scrape(app_port)
    assert total(after, "billow_invoices_finalized_total", kind="commitment",
                 currency="USD") == 1
    assert total(after, "billow_billed_amount_total", kind="commitment") == 100000
    assert total(after, "billow_credit_grants_total", currency="USD") >= 1
    sdk = await scrape(sdk_port)
    assert sum(total(sdk, f"temporal_{kind}activity_execution_latency_count",
                     activity_type="close_period") for kind in ("", "local_")) >= 3

    # --- the API: healthy, its own request metrics on /metrics ---
    health = api.wait_http(api_port, "/healthz")
    assert health.status_code == 200, health.text
    # Usage goes through the API, so the API process counts it.
    async with db.begin() as conn:
        key = (await create_api_key(conn, ["usage"], name="deploy-test")).key
    now = datetime.now(UTC).isoformat()
    event = {"id": f"evt-{uuid.uuid4().hex}", "customer": contract.customer.id,
             "meter": "requests", "timestamp": now, "quantity": "3",
             "dimensions": {"region": "eu"}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as http:
        sent = await http.post("/v1/usage", json={"events": [event, event]},
                               headers={"Authorization": f"Bearer {key}"})
    assert sent.status_code == 200, sent.text
    api_metrics = await scrape(api_port)
    assert total(api_metrics, "billow_http_requests_total", route="/healthz", status="200") >= 1
    assert total(api_metrics, "billow_http_requests_total", route="/v1/usage", method="POST",
                 status="200") == 1
    assert total(api_metrics, "billow_usage_events_total", status="accepted") == 1
    assert total(api_metrics, "billow_usage_events_total", status="duplicate") == 1

    # --- graceful shutdown on SIGTERM ---
    assert worker.terminate() == 0, worker.logs()
    # uvicorn drains, shuts the app down, then re-raises the signal it caught.
    assert api.terminate() in (0, -signal.SIGTERM), api.logs()
    api_messages = [str(line.get("message")) for line in _json_lines(api.logs())]
    assert "Application shutdown complete." in api_messages, api.logs()
    worker_log = _json_lines(worker.logs())
    messages = [str(line.get("message")) for line in worker_log]
    assert any("worker polling task queue" in m for m in messages), worker.logs()
    assert any("finishing in-flight activities" in m for m in messages), worker.logs()
    assert any(m == "worker stopped" for m in messages), worker.logs()
    assert all(line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
               for line in worker_log)
    # The spans of the TracingInterceptor, exported by the console exporter.
    spans = worker.stdout_path.read_text()
    assert '"name": "RunActivity:close_period"' in spans, spans[-2000:]


def test_setup_script_creates_the_namespace_and_search_attributes(
    dev_temporal_env: WorkflowEnvironment,
) -> None:
    temporal = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    namespace = f"billow-setup-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "PATH": f"{Path(temporal).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEMPORAL_ADDRESS": dev_temporal_env.client.service_client.config.target_host,
        "BILLOW_TEMPORAL_NAMESPACE": namespace,
        "SETUP_SLEEP": "1",
        "SETUP_ATTEMPTS": "30",
    }
    script = COMPOSE_DIR / "scripts" / "setup-temporal-namespace.sh"
    for _ in range(2):  # idempotent: the second run changes nothing and succeeds
        proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = subprocess.run(
        [temporal, "operator", "search-attribute", "list", "--address",
         env["TEMPORAL_ADDRESS"], "--namespace", namespace, "--output", "json"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    custom = json.loads(listed.stdout)["customAttributes"]
    expected = {key.name: key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")
                for key in search_attributes.ALL}
    assert {name: custom[name].removeprefix("INDEXED_VALUE_TYPE_") for name in expected} \
        == expected
