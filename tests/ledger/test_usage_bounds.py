"""Bounded usage fields (SPEC 6): one bad event is rejected alone, never the batch.

Ids, customers, meters, dimension keys and values hold at most 256
characters; quantities are below 10^18 with at most 12 decimals. Past those,
an id or key could exceed what a b-tree entry holds (2,704 bytes) and fail
the whole batch's INSERT.
"""

from __future__ import annotations

import random
import string
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest

from activities.usage_ingest import MAX_BATCH, IngestStatus, _validate_many, ingest_usage
from models.usage import UsageEvent
from tests.ledger.test_usage_ingest import ev

# Random, so that PostgreSQL cannot compress it into a b-tree entry.
LONG = "".join(random.Random(6).choices(string.ascii_letters + string.digits, k=6000))

# position in the batch -> (bad event, the field its reason names)
BAD: dict[int, tuple[dict[str, Any], str]] = {
    7: (ev(LONG), "id"),
    1500: (ev("e" * 257), "id"),
    2001: (ev("b-cust", customer="c" * 257), "customer"),
    3333: (ev("b-meter", meter="m" * 257), "meter"),
    5000: (ev("b-dkey", dimensions={"k" * 257: "v"}), "dimensions"),
    6001: (ev("b-dval", dimensions={"model": "v" * 257}), "dimensions.model"),
    7000: (ev("b-q18", quantity="1000000000000000000"), "quantity"),
    7001: (ev("b-q18-int", quantity=10**18), "quantity"),
    8000: (ev("b-q13", quantity="0.0000000000001"), "quantity"),
    9998: (ev("b-qhuge", quantity="9" * 5000), "quantity"),
    # PostgreSQL text holds neither NUL nor lone surrogates (not UTF-8)
    4000: (ev("b-nul\x00"), "id"),
    4001: (ev("b-nul-cust", customer="acme\x00"), "customer"),
    4002: (ev("b-nul-dim", dimensions={"model": "a\x00"}), "dimensions.model"),
    4003: (ev("b-sur\ud800"), "id"),
    4004: (ev("b-sur-cust", customer="acme\udfff"), "customer"),
    4005: (ev("b-sur-dim", dimensions={"mo\ud800del": "a"}), "dimensions"),
}


async def test_a_10000_event_batch_stores_all_but_its_few_bad_events(
    conn: asyncpg.Connection,
) -> None:
    batch: list[dict[str, Any]] = [ev(f"ok-{i:05d}") for i in range(MAX_BATCH)]
    for i, (bad, _) in BAD.items():
        batch[i] = bad
    # At the limits: accepted.
    batch[42] = ev("€" * 256, customer="acme", dimensions={"k" * 256: "é" * 256})
    batch[43] = ev("max-q", quantity="999999999999999999.999999999999")
    batch[44] = ev("max-q-int", quantity=10**18 - 1)
    batch[45] = ev("trailing-zeros", quantity="1.50000000000000000")  # 1.5

    report = await ingest_usage(conn, batch)

    assert (report.accepted, report.rejected) == (MAX_BATCH - len(BAD), len(BAD))
    report.model_dump_json()  # the API sends it: every id in it must be encodable
    for i, (_, field) in BAD.items():
        result = report.results[i]
        assert result.status is IngestStatus.REJECTED, (i, result)
        assert result.reason is not None and result.reason.startswith(f"{field}"), result.reason
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == MAX_BATCH - len(BAD)
    kept = {r[0]: r[1] for r in await conn.fetch(
        "SELECT event_id, quantity FROM usage_events WHERE event_id = ANY($1::text[])",
        ["€" * 256, "max-q", "max-q-int", "trailing-zeros"])}
    assert kept["max-q"] == Decimal("999999999999999999.999999999999")
    assert kept["max-q-int"] == 10**18 - 1 and len(kept) == 4


@pytest.mark.parametrize(("bad", "field"), list(BAD.values()))
def test_the_model_and_the_fast_path_refuse_the_same(bad: dict[str, Any], field: str) -> None:
    verdicts = [_validate_many([bad])[0], _validate_many([bad, {**bad, "quantity": " 1"}])[0]]
    for verdict in verdicts:
        assert isinstance(verdict, str) and verdict.startswith(field), verdict
    with pytest.raises(ValueError, match=field.split(".")[0]):
        UsageEvent.model_validate(bad)
