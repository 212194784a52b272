"""Deterministic benchmark data: a small catalog, one contract per customer,
and usage events spread over one quarter in arrival (time) order.

Everything is drawn from ``random.Random(seed)``: the same arguments give the
same rows, so two runs (and the two sides of each ratio) measure the same data.
Customers are interleaved event by event, as a central metering pipeline
would send them; that is the worst case for per-customer reads (a customer's
events are spread over the whole table, not clustered).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped

QUARTER_START = datetime(2027, 1, 1, tzinfo=UTC)
QUARTER_END = datetime(2027, 4, 1, tzinfo=UTC)
MID_QUARTER = datetime(2027, 2, 15, tzinfo=UTC)  # where some contracts' tokens prices change


@dataclass(frozen=True)
class BenchMeter:
    key: str
    aggregation: str
    group_by: tuple[str, ...]
    unique_by: str | None
    weight: int  # share of events


METERS = (
    BenchMeter("tokens", "sum", ("model",), None, 50),
    BenchMeter("requests", "sum", ("region",), None, 35),
    BenchMeter("storage_gb", "max", (), None, 5),
    BenchMeter("seats", "unique_count", (), "user", 5),
    BenchMeter("nodes", "latest", ("cluster",), None, 5),
)
_MODELS = ("gpt-4", "gpt-3.5", "claude")
_REGIONS = ("eu", "us", "ap", "sa")
_CLUSTERS = ("blue", "green")


def customer_ids(n: int) -> list[str]:
    return [f"cust-{i:05d}" for i in range(n)]


async def seed_catalog(conn: asyncpg.Connection, customers: int) -> None:
    """Customers, one catalog version with `METERS`, one contract per customer."""
    ids = customer_ids(customers)
    await conn.execute(
        "INSERT INTO catalog_versions (version, digest, document) VALUES (1, 'bench', '{}')"
    )
    await conn.executemany(
        "INSERT INTO catalog_meters (version, key, aggregation, group_by, unique_by) "
        "VALUES (1, $1, $2, $3::jsonb, $4)",
        [(m.key, m.aggregation, json.dumps(list(m.group_by)), m.unique_by) for m in METERS],
    )
    await conn.copy_records_to_table(
        "customers", records=[(c, c.upper()) for c in ids], columns=["id", "name"]
    )
    await conn.copy_records_to_table(
        "contracts",
        records=[
            (
                f"k-{c}",
                c,
                "bench",
                1,
                "USD",
                QUARTER_START.date(),
                QUARTER_END.date(),
                "active",
                "bench",
                "{}",
                "{}",
            )
            for c in ids
        ],
        columns=[
            "id",
            "customer_id",
            "plan_key",
            "catalog_version",
            "currency",
            "starts_on",
            "term_end",
            "status",
            "terms_digest",
            "document",
            "terms",
        ],
    )


def _event(rng: random.Random, i: int, ts: datetime, customers: list[str]) -> dict[str, Any]:
    meter = rng.choices(METERS, weights=[m.weight for m in METERS])[0]
    dims: dict[str, str]
    if meter.key == "tokens":
        qty, dims = str(rng.randint(1, 5000)), {"model": rng.choice(_MODELS)}
    elif meter.key == "requests":
        qty, dims = str(rng.randint(1, 100)), {"region": rng.choice(_REGIONS)}
    elif meter.key == "storage_gb":
        qty, dims = f"{rng.randint(0, 100000) / 100:.2f}", {}
    elif meter.key == "seats":
        qty, dims = "1", {"user": f"u{rng.randint(0, 199)}"}
    else:
        qty, dims = str(rng.randint(1, 50)), {"cluster": rng.choice(_CLUSTERS)}
    return {
        "id": f"ev-{i:010d}",
        "customer": rng.choice(customers),
        "meter": meter.key,
        "timestamp": ts.isoformat().replace("+00:00", "Z"),
        "quantity": qty,
        "dimensions": dims,
    }


def raw_events(n: int, customers: int, seed: int) -> Iterator[dict[str, Any]]:
    """``n`` events as JSON decoding gives them (strings for decimals and instants)."""
    rng = random.Random(seed)
    ids = customer_ids(customers)
    span = (QUARTER_END - QUARTER_START) / max(n, 1)
    for i in range(n):
        yield _event(rng, i, QUARTER_START + span * i, ids)


Record = tuple[str, str, str, datetime, Decimal, str]
COLUMNS = ["event_id", "customer_id", "meter", "ts", "quantity", "dimensions"]


def to_record(e: dict[str, Any]) -> Record:
    """The row a raw COPY writes for an event (what ingestion stores)."""
    return (
        e["id"],
        e["customer"],
        e["meter"],
        datetime.fromisoformat(e["timestamp"]),
        Decimal(e["quantity"]),
        json.dumps(e["dimensions"], separators=(",", ":")),
    )


def quarter_span() -> timedelta:
    return QUARTER_END - QUARTER_START
