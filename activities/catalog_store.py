"""Catalog versions: applying a catalog document and reading one back.

Applying a document creates a new version unless an identical one exists
(same canonical digest), so re-applying is a no-op. Versions are append-only
(a trigger refuses UPDATE/DELETE): a contract pinned to a version is billed by
exactly the catalog it was created under.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.catalog import Catalog, load_catalog


def catalog_digest(catalog: Catalog) -> str:
    data = catalog.model_dump(mode="json")
    for plan in data.get("plans", []):
        # Added later (SPEC 12): counted only when set, so a catalog applied
        # again after an upgrade is still the same version.
        if not plan.get("meter_limits"):
            plan.pop("meter_limits", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def apply_catalog(conn: AsyncConnection, catalog: Catalog) -> tuple[int, bool]:
    """Store ``catalog``; returns (version, created)."""
    digest = catalog_digest(catalog)
    # Serialise concurrent applies of the same document on its digest.
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:d))"), {"d": digest})
    existing = await conn.scalar(
        text("SELECT version FROM catalog_versions WHERE digest = :d"), {"d": digest}
    )
    if existing is not None:
        return int(existing), False
    version = await conn.scalar(
        text(
            "INSERT INTO catalog_versions (digest, document) VALUES (:d, CAST(:doc AS jsonb)) "
            "RETURNING version"
        ),
        {"d": digest, "doc": catalog.model_dump_json()},
    )
    assert version is not None
    await conn.execute(
        text(
            "INSERT INTO catalog_meters (version, key, aggregation, group_by, unique_by) "
            "VALUES (:v, :key, :agg, CAST(:gb AS jsonb), :ub)"
        ),
        [
            {
                "v": version,
                "key": m.key,
                "agg": str(m.aggregation),
                "gb": json.dumps(list(m.group_by)),
                "ub": m.unique_by,
            }
            for m in catalog.meters
        ],
    )
    await conn.execute(
        text(
            "INSERT INTO catalog_plans (version, key, currency, meters) "
            "VALUES (:v, :key, :cur, CAST(:meters AS jsonb))"
        ),
        [
            {"v": version, "key": p.key, "cur": p.currency, "meters": json.dumps(list(p.meters))}
            for p in catalog.plans
        ],
    )
    return int(version), True


async def load_catalog_version(
    conn: AsyncConnection, version: int | None = None
) -> tuple[int, Catalog]:
    """A stored catalog version (the latest when ``version`` is None)."""
    if version is None:
        row = (
            await conn.execute(
                text("SELECT version, document FROM catalog_versions ORDER BY version DESC LIMIT 1")
            )
        ).one_or_none()
    else:
        row = (
            await conn.execute(
                text("SELECT version, document FROM catalog_versions WHERE version = :v"),
                {"v": version},
            )
        ).one_or_none()
    if row is None:
        raise LookupError(
            "no catalog has been applied"
            if version is None
            else f"catalog version {version} does not exist"
        )
    return int(row.version), load_catalog(row.document)
