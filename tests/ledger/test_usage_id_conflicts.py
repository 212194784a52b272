"""Usage ids are not blind to content (SPEC 3): a resend is stored once, and
an event with a stored id but other content is a ``conflict`` naming the
differing fields, not stored, and counted (billow_usage_events_total
{status="conflict"})."""

from __future__ import annotations

import asyncio
import json

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest
from prometheus_client import REGISTRY

from activities.db import asyncpg_dsn
from activities.usage_ingest import IngestStatus, ingest_usage
from models.usage import UsageEvent
from tests.ledger.test_usage_ingest import ev, stored

ACCEPTED, DUPLICATE, CONFLICT = IngestStatus.ACCEPTED, IngestStatus.DUPLICATE, IngestStatus.CONFLICT
FIRST = ev("e-1", quantity="10", ts="2027-01-05T10:00:00Z",
           dimensions={"model": "gpt-4", "region": "eu"})


def conflicts() -> float:
    return REGISTRY.get_sample_value("billow_usage_events_total", {"status": "conflict"}) or 0.0


async def test_a_resend_written_differently_is_a_duplicate(conn: asyncpg.Connection) -> None:
    assert (await ingest_usage(conn, [FIRST])).accepted == 1
    same = ev("e-1", quantity="10.000", ts="2027-01-05T12:00:00+02:00",
              dimensions={"region": "eu", "model": "gpt-4"})
    report = await ingest_usage(conn, [same, UsageEvent.model_validate(same)])
    assert [(r.status, r.reason) for r in report.results] == [
        (DUPLICATE, "already stored"), (DUPLICATE, "same id as event 0 of this batch")]


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"quantity": "11"}, ["quantity"]),
        ({"customer": "globex", "meter": "gpus"}, ["customer", "meter"]),
        ({"timestamp": "2027-01-05T10:00:00.000001Z"}, ["timestamp"]),
        ({"dimensions": {"model": "gpt-4"}}, ["dimensions.region"]),
        ({"dimensions": {"model": "gpt-4", "region": "eu", "tier": "x"}}, ["dimensions.tier"]),
        ({"quantity": "1", "dimensions": {"model": "o1", "region": "eu"}},
         ["quantity", "dimensions.model"]),
    ],
)
async def test_other_content_under_a_stored_id_is_a_conflict(
    conn: asyncpg.Connection, change: dict[str, object], fields: list[str]
) -> None:
    assert (await ingest_usage(conn, [FIRST])).accepted == 1
    before = conflicts()
    for as_model in (False, True):  # the fast path and the model path
        resent = FIRST | change
        event = UsageEvent.model_validate(resent) if as_model else resent
        report = await ingest_usage(conn, [ev(f"new-{as_model}"), event])
        assert report.conflict == 1 and report.duplicate == 0
        result = report.results[1]
        assert result.status is CONFLICT
        assert result.reason is not None
        assert [part.split(":")[0] for part in result.reason.split("; ")] == fields
        assert "stored" in result.reason
    assert conflicts() == before + 2
    row = (await stored(conn))["e-1"]  # never updated
    assert (row["customer_id"], row["quantity"]) == ("acme", 10)
    assert json.loads(row["dimensions"]) == {"model": "gpt-4", "region": "eu"}


async def test_a_repeat_inside_one_batch_is_compared_with_its_first_occurrence(
    conn: asyncpg.Connection,
) -> None:
    report = await ingest_usage(conn, [FIRST, FIRST | {"quantity": "12"}, FIRST])
    assert [(r.status, r.reason) for r in report.results] == [
        (ACCEPTED, None),
        (CONFLICT, "quantity: stored 10 by event 0 of this batch, sent 12"),
        (DUPLICATE, "same id as event 0 of this batch"),
    ]
    # the resend of a conflicting first occurrence conflicts too
    again = await ingest_usage(conn, [FIRST | {"quantity": "13"}, FIRST | {"quantity": "13"}])
    assert [r.status for r in again.results] == [CONFLICT, CONFLICT]
    assert again.results[1].reason == again.results[0].reason == "quantity: stored 10, sent 13"


async def test_a_batch_that_loses_a_race_reports_other_content_as_a_conflict(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """The ON CONFLICT path compares too: the other batch's row was not
    committed when this batch looked for stored ids."""
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tx = other.transaction()
        await tx.start()
        await ingest_usage(other, [ev("race-1", quantity="7"), ev("race-2", quantity="5")])
        losing = asyncio.create_task(ingest_usage(conn, [
            ev("race-0"), ev("race-1", quantity="1"), ev("race-2", quantity="5.0")]))
        await asyncio.sleep(0.3)
        assert not losing.done()
        await tx.commit()
        result = await losing
    finally:
        await other.close()
    assert [(r.id, r.status, r.reason) for r in result.results] == [
        ("race-0", ACCEPTED, None),
        ("race-1", CONFLICT, "quantity: stored 7, sent 1"),
        ("race-2", DUPLICATE, "already stored"),
    ]
    assert (result.accepted, result.duplicate, result.conflict) == (1, 1, 1)
