"""Usage test data: two catalog versions, three customers, two contracts."""

from __future__ import annotations

import json

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped

from activities.usage_query import MeterSpec

# catalog version 1 (acme's contract) and version 2 (globex's contract)
METERS_V1 = [
    MeterSpec("tokens", "sum", ("model",)),
    MeterSpec("requests", "count", ("region", "tier")),
    MeterSpec("storage_gb", "max"),
    MeterSpec("seats", "unique_count", (), "user"),
    MeterSpec("nodes", "latest", ("cluster",)),
]
METERS_V2 = [MeterSpec("gpus", "sum", ("kind",))]


async def seed_usage_catalog(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO customers (id, name) VALUES "
        "('acme', 'Acme'), ('globex', 'Globex'), ('initech', 'Initech (no contract)')"
    )
    await conn.execute(
        "INSERT INTO catalog_versions (version, digest, document) "
        "VALUES (1, 'd1', '{}'), (2, 'd2', '{}')"
    )
    for version, meters in ((1, METERS_V1), (2, METERS_V2)):
        await conn.executemany(
            "INSERT INTO catalog_meters (version, key, aggregation, group_by, unique_by) "
            "VALUES ($1, $2, $3, $4::jsonb, $5)",
            [(version, m.key, m.aggregation, json.dumps(m.group_by), m.unique_by) for m in meters],
        )
    await conn.executemany(
        "INSERT INTO contracts (id, customer_id, plan_key, catalog_version, currency, starts_on,"
        " term_end, status, terms_digest, document, terms) VALUES"
        " ($1, $2, 'pro', $3, 'USD', '2027-01-01', '2028-01-01', 'active', 'x', '{}', '{}')",
        [("k-acme", "acme", 1), ("k-globex", "globex", 2)],
    )
