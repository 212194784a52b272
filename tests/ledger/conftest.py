"""Fixtures of the ledger tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.db import asyncpg_dsn
from tests.ledger.usage_fixtures import seed_usage_catalog


@pytest.fixture
async def conn(db: AsyncEngine, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to the emptied test database, with the catalog seeded."""
    c = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await seed_usage_catalog(c)
        yield c
    finally:
        await c.close()
