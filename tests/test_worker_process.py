"""``billow worker`` as a process: waiting for Temporal, and a clean exit.

- Started while Temporal is unreachable, the worker retries with backoff and
  says so, instead of exiting; SIGTERM still stops it while it waits.
- A graceful shutdown exits 0 every time. It used to abort now and then with
  ``Fatal Python error: PyGILState_Release ... Python runtime state:
  finalizing``: the Temporal core's Rust threads (the log forwarder, SDK
  future completions) call into Python, and its runtime was only freed while
  the interpreter finalized (see `worker.main.run_worker`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from worker.binaries import temporal_cli
from worker.settings import Settings
from worker.temporal_client import connect_with_retry

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(database_url: str, temporal_address: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BILLOW_") and k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")}
    env.update({
        "BILLOW_DATABASE_URL": database_url,
        "BILLOW_TEMPORAL_ADDRESS": temporal_address,
        "BILLOW_TASK_QUEUE": f"process-{os.getpid()}",
        "BILLOW_WORKER_METRICS_PORT": str(free_port()),
        "BILLOW_WORKER_APP_METRICS_PORT": str(free_port()),
        "BILLOW_USAGE_COMPACTION_MINUTES": "0",
        "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str, count: int = 1,
                  limit_s: float = 30) -> str:
    deadline = time.monotonic() + limit_s
    while True:
        content = log.read_text(errors="replace")
        if content.count(text) >= count:
            return content
        if proc.poll() is not None:
            raise AssertionError(f"worker exited {proc.returncode} before {text!r}:\n{content}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} after {limit_s}s:\n{content}")
        time.sleep(0.05)


async def test_connect_retries_with_backoff_until_temporal_comes_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    settings = Settings(temporal_address=f"127.0.0.1:{port}")
    caplog.set_level(logging.WARNING, logger="billow.temporal")
    connecting = asyncio.create_task(
        connect_with_retry(settings, first_delay=0.25, max_delay=1.0)
    )
    await asyncio.sleep(1.2)  # attempts at 0, 0.25, 0.75 s; the next waits 1 s (capped)
    assert not connecting.done()
    waits = [r.getMessage() for r in caplog.records if r.name == "billow.temporal"]
    assert len(waits) == 3, waits
    for message, delay in zip(waits, ("0.25", "0.5", "1"), strict=True):
        assert message.startswith(
            f"Temporal at 127.0.0.1:{port} not reachable, retrying in {delay} s ("
        ), message
    env = await WorkflowEnvironment.start_local(
        port=port, dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
    )
    try:
        client = await asyncio.wait_for(connecting, timeout=10)
        assert client is not None
        assert client.service_client.config.target_host == f"127.0.0.1:{port}"
        await client.service_client.check_health()
    finally:
        await env.shutdown()


async def test_connect_with_retry_stops_waiting_when_asked() -> None:
    stop = asyncio.Event()
    settings = Settings(temporal_address=f"127.0.0.1:{free_port()}")
    connecting = asyncio.create_task(connect_with_retry(settings, stop=stop))
    await asyncio.sleep(0.3)
    stop.set()
    assert await asyncio.wait_for(connecting, timeout=2) is None


def test_bad_connection_settings_are_not_retried() -> None:
    settings = Settings(temporal_address="127.0.0.1:1", temporal_tls_cert="/nonexistent.pem")
    with pytest.raises(ValueError, match="BILLOW_TEMPORAL_TLS_CERT and BILLOW_TEMPORAL_TLS_KEY"):
        asyncio.run(connect_with_retry(settings))


def test_worker_waits_for_temporal_and_stops_on_sigterm(
    database_url: str, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "worker.log"
    proc = start_worker(worker_env(database_url, address), log)
    try:
        # 1 s, then 2 s: still waiting after the second retry message.
        wait_for_line(proc, log, "not reachable, retrying in", count=2, limit_s=15)
        content = log.read_text()
        assert f"Temporal at {address} not reachable, retrying in 1 s" in content
        assert f"Temporal at {address} not reachable, retrying in 2 s" in content
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
        assert "stopped before Temporal was reachable" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_graceful_shutdowns_exit_cleanly(
    database_url: str, dev_temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Start, poll, SIGTERM: exit 0 with the last log lines written, every time."""
    address = dev_temporal_env.client.service_client.config.target_host
    for i in range(5):
        log = tmp_path / f"worker-{i}.log"
        proc = start_worker(worker_env(database_url, address), log)
        try:
            wait_for_line(proc, log, "worker polling task queue")
            time.sleep(0.2 * i)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        content = log.read_text(errors="replace")
        assert code == 0, content
        assert "Fatal Python error" not in content
        assert content.rstrip().endswith("worker stopped"), content[-2000:]


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, logging, os, sys
    from temporalio.runtime import (LogForwardingConfig, LoggingConfig, Runtime,
                                    TelemetryConfig, TelemetryFilter)
    from worker.main import exit_now

    # Thousands of core lines: formatted and written, to nowhere.
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))
    billow = logging.getLogger("billow")
    billow.addHandler(logging.StreamHandler(sys.stderr))
    atexit.register(lambda: print("atexit ran", flush=True))
    runtime = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(
        filter=TelemetryFilter(core_level="INFO", other_level="INFO"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")))))
    # The core's log forwarder is still calling into Python when we leave,
    # and the runtime goes only when the interpreter finalizes.
    for _ in range(20_000):
        runtime._core_runtime.write_test_info_log("busy", "")
    billow.info("last line")
    exit_now(0)
    """
)


def test_exit_now_survives_a_busy_core_log_forwarder(tmp_path: Path) -> None:
    """The mechanism of the crash, made deterministic: the same script ending
    normally instead of calling `exit_now` is killed by SIGABRT every time
    (the log forwarder's tokio thread calls into Python during finalization:
    take_gil -> PyThread_exit_thread -> abort)."""
    script = tmp_path / "busy_exit.py"
    script.write_text(EXIT_SCRIPT)
    for _ in range(3):
        proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "last line" in proc.stderr
        assert "atexit ran" in proc.stdout
