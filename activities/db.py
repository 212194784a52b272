"""Database engine and session helpers.

The URL comes from the caller (``worker``/``api`` read settings); nothing here
reads the environment. ``postgresql://`` URLs are accepted and mapped to the
asyncpg driver, and ``?host=/socket/dir`` works for the embedded server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def async_url(url: str) -> str:
    """Normalise a PostgreSQL URL to the asyncpg dialect."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername != "postgresql+asyncpg":
        raise ValueError(f"database_url: unsupported driver {parsed.drivername!r}; use postgresql://")
    return parsed.render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """The same URL as a libpq-style DSN that ``asyncpg.connect`` accepts."""
    parsed = make_url(async_url(url)).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """The engine every billow process uses.

    No ``pool_pre_ping``: SQLAlchemy's asyncpg dialect pings each checkout
    inside a transaction (BEGIN, ``;``, ROLLBACK), three round trips through a
    worker's busy event loop on every ledger step; it made the lifecycle bench
    3.59x its floor against 2.65x without (bench/RESULTS.md section 4). A
    connection PostgreSQL dropped fails its first statement instead, and
    SQLAlchemy then invalidates the whole pool: a ledger step fails one
    attempt and Temporal retries it (activities/errors.py), a request answers
    503 (api/problems.py). Connections are recycled hourly, before idle
    timeouts of proxies and load balancers can cut them.
    """
    return create_async_engine(async_url(url), pool_size=pool_size, pool_recycle=3600)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One connection in one transaction: commit on success, roll back on error."""
    async with engine.begin() as conn:
        yield conn
