"""A connection PostgreSQL dropped costs one attempt, never a wrong answer.

The engine has no `pool_pre_ping` (activities/db.py says why). So a pooled
connection the server closed (a restart, an idle timeout) fails the first
statement that uses it: the failure must be one the activities retry (not a
business error that would hold the contract) and one the API answers 503, and
the very next attempt must get a fresh connection.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from activities.db import asyncpg_dsn, make_engine
from activities.errors import classify
from api.problems import db_unavailable


async def test_a_dropped_pooled_connection_fails_one_retryable_attempt(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=2)
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        # The server drops the pooled connection while nobody uses it.
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

        with pytest.raises(sqlalchemy.exc.DBAPIError) as failed:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 1"))
        assert failed.value.connection_invalidated
        assert classify(failed.value) is None  # infrastructure: Temporal retries it
        assert db_unavailable(failed.value)  # the API: 503 with Retry-After

        async with engine.begin() as conn:  # the next attempt: a fresh connection
            assert await conn.scalar(text("SELECT pg_backend_pid()")) != pid
    finally:
        await admin.close()
        await engine.dispose()
