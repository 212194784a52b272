"""``billow up`` end to end, plus the embedded PostgreSQL edge cases it relies on.

The stack is run exactly as a developer runs it (``python -m worker.cli up``)
with its own data directory and free ports, so it cannot collide with a
developer's stack or with other tests. The data-dir path is also what finds
leftover processes: every process the stack starts either mentions it on its
command line (temporal, postgres) or is a descendant we recorded.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from worker.embedded import ensure_embedded_postgres, running_url
from worker.ports import port_is_free

REPO = Path(__file__).resolve().parents[1]
TEMPORAL = str(Path(sys.executable).parent / "temporal")
UP_TIMEOUT_S = 60
EXIT_TIMEOUT_S = 20

# Configuration that would point the stack at external services instead.
_EXTERNAL = ("DATABASE_URL", "BILLOW_DATABASE_URL", "TEMPORAL_ADDRESS", "BILLOW_TEMPORAL_ADDRESS")


def _free_ports(count: int) -> list[int]:
    """Distinct free ports *below* the kernel's ephemeral range.

    Ports from bind(0) come from the ephemeral range, where the many
    "random free port" listeners and outgoing connections of concurrently
    running suites (Temporal dev servers pick several each) could grab one in
    the seconds before billow up binds it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    ports: list[int] = []
    for port in random.sample(range(10_000, max(low, 10_100)), 500):
        if port not in ports and port_is_free("127.0.0.1", port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports")


class Stack:
    """A ``billow up`` subprocess with its data dir, ports and output file."""

    def __init__(self, data_dir: Path, ports: list[int]) -> None:
        self.data_dir = data_dir
        self.temporal_port, self.ui_port, self.api_port = ports
        self.out_path = data_dir.parent / f"{data_dir.name}-up.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _EXTERNAL}
        env.update(
            BILLOW_DATA_DIR=str(self.data_dir),
            BILLOW_TEMPORAL_PORT=str(self.temporal_port),
            BILLOW_TEMPORAL_UI_PORT=str(self.ui_port),
            BILLOW_API_PORT=str(self.api_port),
            # Off: fixed default ports would clash with a developer's stack or
            # a concurrent test run (the worker would only log it, but still).
            BILLOW_WORKER_METRICS_PORT="0",
            BILLOW_WORKER_APP_METRICS_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, background_job: bool = False) -> subprocess.Popen[bytes]:
        """``background_job``: as ``billow up &`` in a script, through a real shell,
        which starts a background job with SIGINT ignored (``self.proc`` is the shell,
        which waits for the job and exits with its status)."""
        argv = [sys.executable, "-m", "worker.cli", "up"]
        if background_job:
            argv = ["sh", "-c", f'"{sys.executable}" -m worker.cli up & wait $!']
        with self.out_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Away from pytest's process group: a Ctrl-C on the test run
                # must not reach the stack behind the test's back.
                start_new_session=True,
            )
        return self.proc

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def wait_until_up(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + UP_TIMEOUT_S
        with httpx.Client(timeout=2, trust_env=False) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"billow up exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    health = http.get(f"http://127.0.0.1:{self.api_port}/healthz")
                    ui = http.get(f"http://127.0.0.1:{self.ui_port}/")
                    healthy = health.status_code == 200 and ui.status_code == 200
                    # The banner comes right after billow up's own health check.
                    if healthy and "billow is up" in self.output():
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        pytest.fail(f"billow up not healthy within {UP_TIMEOUT_S} s:\n{self.output()}")

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"billow up still running {timeout} s after the stop:\n{self.output()}")

    def descendants(self) -> list[psutil.Process]:
        """Every process the stack runs now: its children and the daemonized postmaster."""
        assert self.proc is not None
        procs = psutil.Process(self.proc.pid).children(recursive=True)
        pid_file = self.data_dir / "postgres" / "postmaster.pid"
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        return [*procs, postmaster, *postmaster.children(recursive=True)]

    def kill_leftovers(self) -> None:
        """Teardown after a failed test: only processes of this data dir."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for proc in _mentioning(self.data_dir):
            proc.kill()


def _mentioning(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _assert_all_gone(data_dir: Path, procs: list[psutil.Process]) -> None:
    # Generous: Temporal drains for a few seconds after SIGTERM, longer on a
    # loaded machine, and the postmaster is reaped by init, not by us.
    deadline = time.monotonic() + 20
    while True:
        alive = [p for p in procs if _alive(p)] + _mentioning(data_dir)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not alive, f"left running: {[(p.pid, _cmdline(p)) for p in alive]}"


def _alive(proc: psutil.Process) -> bool:
    try:
        # is_running() also compares the creation time, so a recycled pid is not "alive".
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return "?"


def _psql(data_dir: Path, sql: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = data_dir / "postgres"
    socket_dir = (pgdata / "postmaster.pid").read_text().splitlines()[4]
    uri = f"postgresql://postgres@/billow?host={socket_dir}"
    return subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "psql"),
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            uri,
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _temporal(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TEMPORAL, "operator", "namespace", *args, "--address", f"127.0.0.1:{stack.temporal_port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _search_attributes(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TEMPORAL, "operator", "search-attribute", *args,
         "--address", f"127.0.0.1:{stack.temporal_port}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@contextmanager
def _stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path / "data", _free_ports(3))
    try:
        yield stack
    finally:
        stack.kill_leftovers()


def test_up_stops_cleanly_and_restarts_on_the_same_data(tmp_path: Path) -> None:
    with _stack(tmp_path) as stack:
        # First run: up, leave a mark in PostgreSQL and in Temporal, Ctrl-C.
        stack.start()
        stack.wait_until_up()
        out = stack.output()
        assert f"http://localhost:{stack.ui_port}" in out
        assert f"http://127.0.0.1:{stack.api_port}/docs" in out
        _psql(stack.data_dir, "CREATE TABLE devstack_marker (note text); "
                              "INSERT INTO devstack_marker VALUES ('first run')")  # fmt: skip
        created = _temporal(stack, "create", "--namespace", "devstack-marker")
        assert created.returncode == 0, created.stderr
        # As a data directory from a release before this attribute existed:
        # the next `billow up` must add it, or the worker refuses to start.
        removed = _search_attributes(stack, "remove", "--name", "CommitmentShortfall", "--yes")
        assert removed.returncode == 0, removed.stderr
        sqlite = stack.data_dir / "temporal.sqlite"
        inode = sqlite.stat().st_ino
        running = stack.descendants()
        assert {"temporal", "postgres"} <= {p.name() for p in running}

        assert stack.proc is not None
        stack.proc.send_signal(signal.SIGINT)
        assert stack.wait_exit() == 0, stack.output()
        _assert_all_gone(stack.data_dir, running)
        for name in ("temporal", "migrate", "worker", "api"):
            assert (stack.data_dir / "logs" / f"{name}.log").is_file()

        # Second run on the same directory: the marks are still there.
        stack.start()
        stack.wait_until_up()
        assert _psql(stack.data_dir, "SELECT note FROM devstack_marker") == "first run"
        described = _temporal(stack, "describe", "--namespace", "devstack-marker")
        assert described.returncode == 0, described.stderr
        listed = _search_attributes(stack, "list", "--output", "json")
        assert '"CommitmentShortfall": "INDEXED_VALUE_TYPE_DOUBLE"' in listed.stdout
        assert sqlite.stat().st_ino == inode

        # A child dying takes the stack down with a message naming it.
        running = stack.descendants()
        api = next(p for p in running if "api" in p.cmdline())
        api.kill()
        assert stack.wait_exit() == 1
        out = stack.output()
        assert "api exited unexpectedly" in out
        assert str(stack.data_dir / "logs" / "api.log") in out
        _assert_all_gone(stack.data_dir, running)


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a second shell of the same directory: only the data dir in common
    (no BILLOW_API_URL, no BILLOW_API_PORT)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (*_EXTERNAL, "BILLOW_API_URL", "BILLOW_API_PORT", "BILLOW_API_KEY")}
    env["BILLOW_DATA_DIR"] = str(stack.data_dir)
    key = subprocess.run([sys.executable, "-m", "worker.cli", "apikey", "create", "--scope",
                          "ops", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    import json

    env["BILLOW_API_KEY"] = json.loads(key)["key"]
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_kill_int_stops_a_stack_started_in_the_background(tmp_path: Path) -> None:
    """A background job starts with SIGINT ignored; `kill -INT` must still stop the
    stack, promptly (the children must not ignore it either), and a second shell's
    CLI finds the stack's API on its port meanwhile."""
    with _stack(tmp_path) as stack:
        shell = stack.start(background_job=True)
        stack.wait_until_up()
        [up] = [p for p in psutil.Process(shell.pid).children() if "up" in p.cmdline()]
        assert stack.api_port != 8000
        listed = _cli(stack, "contract", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip().startswith("{")
        assert (stack.data_dir / "api.url").read_text().strip().endswith(f":{stack.api_port}")
        running = stack.descendants()

        began = time.monotonic()
        os.kill(up.pid, signal.SIGINT)
        assert stack.wait_exit() == 0, stack.output()
        # Children stopped by their own SIGINT handling, not killed after the grace.
        assert time.monotonic() - began < 10, stack.output()
        assert "SIGINT received, stopping" in stack.output()
        _assert_all_gone(stack.data_dir, running)
        assert not (stack.data_dir / "api.url").exists()


def test_ctrl_c_during_startup_stops_what_was_started(tmp_path: Path) -> None:
    with _stack(tmp_path) as stack:
        proc = stack.start()
        deadline = time.monotonic() + 30
        while "starting PostgreSQL" not in stack.output():
            assert proc.poll() is None and time.monotonic() < deadline, stack.output()
            time.sleep(0.05)
        # As a terminal does: SIGINT to the whole foreground process group,
        # which includes whatever billow up runs in-process at that moment.
        os.killpg(proc.pid, signal.SIGINT)
        # The PostgreSQL step (initdb on this first run) finishes before the
        # orderly stop, so allow for a slow initdb.
        assert stack.wait_exit(timeout=60) == 0, stack.output()
        _assert_all_gone(stack.data_dir, [])


@pytest.mark.skipif(sys.platform != "linux", reason="children die with billow up via prctl")
def test_killed_up_leaves_nothing_that_blocks_the_next_run(tmp_path: Path) -> None:
    with _stack(tmp_path) as stack:
        proc = stack.start()
        stack.wait_until_up()
        children = psutil.Process(proc.pid).children(recursive=True)
        first = stack.descendants()
        proc.kill()
        proc.wait()
        # The children (temporal, worker, api) die with it; the daemonized
        # postmaster survives and is taken over by the next run.
        _assert_all_gone(Path("/nonexistent"), children)

        proc = stack.start()
        stack.wait_until_up()
        second = stack.descendants()
        proc.terminate()
        assert stack.wait_exit() == 0, stack.output()
        _assert_all_gone(stack.data_dir, first + second)


@pytest.mark.parametrize(
    ("which", "env_var"),
    [(0, "BILLOW_TEMPORAL_PORT"), (1, "BILLOW_TEMPORAL_UI_PORT"), (2, "BILLOW_API_PORT")],
)
def test_busy_port_exits_2_naming_port_and_setting(
    tmp_path: Path, which: int, env_var: str
) -> None:
    with _stack(tmp_path) as stack, socket.socket() as squatter:
        ports = [stack.temporal_port, stack.ui_port, stack.api_port]
        busy = ports[which]
        squatter.bind(("127.0.0.1", busy))
        squatter.listen()

        stack.start()
        assert stack.wait_exit(timeout=30) == 2
        out = stack.output()
        assert f"port {busy}" in out
        assert env_var in out
        assert "Traceback" not in out
        # Checked before anything started.
        assert not (stack.data_dir / "postgres").exists()
        assert not _mentioning(stack.data_dir)


def test_second_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    # The lock is taken before the port checks, so this needs no running stack:
    # hold the lock the way a running `billow up` does.
    import fcntl

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with (data_dir / "up.lock").open("a+") as lock, _stack(tmp_path) as stack:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stack.start()
        assert stack.wait_exit(timeout=30) == 2
        assert "already using" in stack.output()


def test_embedded_postgres_recovers_from_a_recycled_postmaster_pid(tmp_path: Path) -> None:
    """A killed run's postmaster.pid whose pid now belongs to another process.

    Unhandled, embedded-postgres takes that process for the server, hands out a
    dead socket, and on stop kills the innocent process.
    """
    pg = ensure_embedded_postgres(tmp_path)
    pg.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    pid_file = pg.pgdata / "postmaster.pid"
    stale = pid_file.read_text().splitlines()
    pg.stop()
    assert not pid_file.exists()

    with subprocess.Popen(["sleep", "60"]) as bystander:
        try:
            pid_file.write_text("\n".join([str(bystander.pid), *stale[1:]]) + "\n")
            pg = ensure_embedded_postgres(tmp_path)
            try:
                assert pg.psql("SELECT x FROM kept").strip() == "42"
            finally:
                pg.stop()
            assert not pg.is_running()
            assert bystander.poll() is None, "the bystander process was killed"
        finally:
            bystander.kill()


def test_embedded_postgres_restarts_after_its_owner_was_killed(tmp_path: Path) -> None:
    """SIGKILLed owner and postmaster: the next start recovers, and its stop really stops."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path;"
         "from worker.embedded import ensure_embedded_postgres as e;"
         "pg = e(Path(sys.argv[1])); pg.psql('CREATE TABLE kept (x int)');"
         "print(pg.pid, flush=True); time.sleep(120)",
         str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    postmaster = psutil.Process(int(holder.stdout.readline()))
    holder.kill()
    holder.wait()
    postmaster.kill()
    postmaster.wait(10)

    pg = ensure_embedded_postgres(tmp_path)
    try:
        assert pg.psql("SELECT count(*) FROM kept").strip() == "0"
    finally:
        pg.stop()
    assert not pg.is_running()
    assert not _mentioning(tmp_path)


def test_running_url_finds_a_running_stack_database_and_never_starts_one(
    tmp_path: Path,
) -> None:
    """What `billow apikey create` uses when no database URL is configured."""
    assert running_url(tmp_path) is None
    pg = ensure_embedded_postgres(tmp_path)
    try:
        assert running_url(tmp_path) == pg.url
    finally:
        pg.stop()
    assert running_url(tmp_path) is None
    assert not pg.is_running()
