"""Late usage of max, unique_count and latest meters: the period is re-rated
and only its rise over what was billed lands on the next invoice, once."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.correction_store import credit_notes_of
from activities.ledger_reports import invoice_documents
from models.operations import PaymentRequest
from tests.ledger.test_ledger_activities import Ledger, run
from tests.support.scenario import PRO_CATALOG, event
from worker.simulate import ingest_all

CATALOG = copy.deepcopy(PRO_CATALOG)
CATALOG["meters"] += [
    {"key": "seats", "name": "Seats", "aggregation": "unique_count", "unique_by": "user",
     "rate_card": [{"match": {}, "unit_price": "10"}]},
    {"key": "storage_gb", "name": "Storage", "aggregation": "max",
     "rate_card": [{"match": {}, "unit_price": "2"}]},
    {"key": "nodes", "name": "Nodes", "aggregation": "latest", "group_by": ["cluster"],
     "rate_card": [{"match": {}, "unit_price": "1"}]},
]
CATALOG["plans"][0]["meters"] += ["seats", "storage_gb", "nodes"]


def seat(eid: str, ts: str, user: str) -> dict[str, Any]:
    return event(eid, ts, "1", meter="seats", user=user)


def storage(eid: str, ts: str, gb: str) -> dict[str, Any]:
    e = event(eid, ts, gb, meter="storage_gb", x="y")
    e["dimensions"] = {}
    return e


def nodes(eid: str, ts: str, n: str) -> dict[str, Any]:
    return event(eid, ts, n, meter="nodes", cluster="a")


@pytest.fixture
async def ledger(db: AsyncEngine) -> AsyncIterator[Ledger]:
    ledger = Ledger(db, catalog=CATALOG)
    await ledger.register()
    yield ledger


async def _late_lines(ledger: Ledger, key: str) -> list[tuple[str, str, str, str]]:
    async with ledger.engine.connect() as conn:
        docs = {d["key"]: d for d in await invoice_documents(conn, ledger.terms.contract_id)}
    return [
        (ln["meter"], ln["quantity"], ln["amount"], ln["period_start"])
        for ln in docs[key]["lines"]
        if ln["kind"] == "late_usage"
    ]


async def test_only_the_rise_of_the_periods_figure_is_billed_late(ledger: Ledger) -> None:
    await ingest_all(ledger.engine, [
        seat("s1", "2027-01-05T00:00:00Z", "u1"), seat("s2", "2027-01-06T00:00:00Z", "u2"),
        storage("g1", "2027-01-05T00:00:00Z", "50"),
        nodes("n1", "2027-01-20T00:00:00Z", "3"),
    ])
    jan = await run(ledger.acts.close_period, ledger.close_request(0))
    # 2 seats x 10 + 50 GB x 2 + 3 nodes x 1 + 500 platform fee
    assert jan.invoice.total == Decimal("623.00")

    # Arriving after January was finalized:
    await ingest_all(ledger.engine, [
        seat("s3", "2027-01-10T00:00:00Z", "u2"),  # counted already: nothing
        seat("s4", "2027-01-11T00:00:00Z", "u3"),  # one more seat: +1
        storage("g2", "2027-01-07T00:00:00Z", "40"),  # below the max: nothing
        storage("g3", "2027-01-08T00:00:00Z", "70"),  # a new max: +20
        nodes("n2", "2027-01-10T00:00:00Z", "9"),  # older than the latest: nothing
        nodes("n3", "2027-01-25T00:00:00Z", "1"),  # the latest goes down by 2: credited
    ])
    feb = await run(ledger.acts.close_period, ledger.close_request(1))
    again = await run(ledger.acts.close_period, ledger.close_request(1))  # a retry
    assert again.invoice.total == feb.invoice.total == Decimal("550.00")  # 10 + 40 + 500
    assert await _late_lines(ledger, "usage:2027-02-01") == [
        ("seats", "1", "10.00", "2027-01-01"),
        ("storage_gb", "20", "40.00", "2027-01-01"),
    ]
    # The fall is credited by a note dated February's invoice (issued on Mar 1),
    # against January's line.
    async with ledger.engine.connect() as conn:
        notes = await credit_notes_of(conn, ledger.terms.contract_id)
    assert [(n.number, n.invoice, n.issued_on.isoformat(), n.reason, n.automatic,
             [(ln.line, ln.amount) for ln in n.lines], n.allocation.outstanding_reduced)
            for n in notes] == [
        ("CN-000001", "usage:2027-01-01", "2027-03-01", "billing_error", True,
         [(3, Decimal("2.00"))], Decimal("2.00"))]
    assert [(i.key, i.credited) for i in feb.credited] == [("usage:2027-01-01", Decimal("2.00"))]

    # A later late event raises January's max again: billed from 70, not 50.
    await ingest_all(ledger.engine, [storage("g4", "2027-01-09T00:00:00Z", "80")])
    mar = await run(ledger.acts.close_period, ledger.close_request(2))
    assert await _late_lines(ledger, "usage:2027-03-01") == [
        ("storage_gb", "10", "20.00", "2027-01-01"),
    ]
    assert mar.invoice.total == Decimal("520.00")
    apr = await run(ledger.acts.close_period, ledger.close_request(3))
    assert apr.invoice.total == Decimal("500.00")  # nothing billed twice


async def test_a_split_period_is_compared_part_by_part(db: AsyncEngine) -> None:
    # storage costs 3 from Jan 15: January's max is billed per part
    ledger = Ledger(db, catalog=CATALOG, rate_overrides=[
        {"meter": "storage_gb", "unit_price": "3", "effective": "2027-01-15T00:00:00Z"}])
    await ledger.register()
    await ingest_all(ledger.engine, [
        storage("g1", "2027-01-05T00:00:00Z", "50"),  # part 1: 50 x 2
        storage("g2", "2027-01-20T00:00:00Z", "10"),  # part 2: 10 x 3
    ])
    jan = await run(ledger.acts.close_period, ledger.close_request(0))
    assert jan.invoice.total == Decimal("630.00")
    await ingest_all(ledger.engine, [
        storage("g3", "2027-01-10T00:00:00Z", "45"),  # below part 1's max: nothing
        storage("g4", "2027-01-21T00:00:00Z", "30"),  # part 2's max rises by 20, at 3
    ])
    await run(ledger.acts.close_period, ledger.close_request(1))
    assert await _late_lines(ledger, "usage:2027-02-01") == [
        ("storage_gb", "20", "60.00", "2027-01-01"),
    ]


VOLUME_CATALOG = copy.deepcopy(PRO_CATALOG)
VOLUME_CATALOG["meters"].append(
    {"key": "gpu", "name": "GPU hours", "aggregation": "sum", "group_by": ["kind"],
     "rate_card": [
         {"match": {"kind": "a"}, "tiers": {"mode": "volume", "steps": [
             {"up_to": "100", "unit_price": "1"}, {"unit_price": "0.9", "flat_fee": "30"}]}},
         {"match": {"kind": "b"}, "tiers": {"mode": "volume", "steps": [
             {"up_to": "100", "unit_price": "2"}, {"unit_price": "1.5", "flat_fee": "40"}]}},
     ]})
VOLUME_CATALOG["plans"][0]["meters"].append("gpu")


def gpu(eid: str, ts: str, hours: str, kind: str) -> dict[str, Any]:
    return event(eid, ts, hours, meter="gpu", kind=kind)


async def test_late_usage_moves_a_volume_counter_to_the_tier_of_its_new_total(
    db: AsyncEngine,
) -> None:
    """Billed: the price of the period's new total minus what was billed, so
    the units billed before move to the new tier and its flat fees are billed."""
    ledger = Ledger(db, catalog=VOLUME_CATALOG)
    await ledger.register()
    await ingest_all(ledger.engine, [gpu("g1", "2027-01-05T00:00:00Z", "60", "a"),
                                     gpu("g2", "2027-01-06T00:00:00Z", "30", "b")])
    jan = await run(ledger.acts.close_period, ledger.close_request(0))
    assert jan.invoice.total == Decimal("620.00")  # 90 in tier 1: 60 x 1 + 30 x 2, + 500 fee
    await ingest_all(ledger.engine, [gpu("g3", "2027-01-20T00:00:00Z", "20", "a")])
    feb = await run(ledger.acts.close_period, ledger.close_request(1))
    # 110 in tier 2: 80 x 0.9 + 30 x 1.5 + flat fees 30 + 40 = 187.00, 120.00 billed
    assert feb.invoice.total == Decimal("567.00")
    assert await _late_lines(ledger, "usage:2027-02-01") == [
        ("gpu", "20", "67.00", "2027-01-01")]
    await ingest_all(ledger.engine, [gpu("g4", "2027-01-21T00:00:00Z", "10", "b")])
    mar = await run(ledger.acts.close_period, ledger.close_request(2))
    # 120: 80 x 0.9 + 40 x 1.5 + 70 = 202.00, 187.00 billed
    assert await _late_lines(ledger, "usage:2027-03-01") == [
        ("gpu", "10", "15.00", "2027-01-01")]
    assert mar.invoice.total == Decimal("515.00")


async def test_a_retried_close_answers_the_credit_notes_and_refunds_it_made(
    ledger: Ledger,
) -> None:
    """The close committed an automatic credit note and its answer was lost: the
    retry must tell the workflow again what it credited and what it owes back,
    or the credited invoice stays owed in the contract's state and the refund
    is never paid (found in review, session 6)."""
    await ingest_all(ledger.engine, [nodes("n1", "2027-01-20T00:00:00Z", "3")])
    jan = await run(ledger.acts.close_period, ledger.close_request(0))
    await run(ledger.acts.record_payment, PaymentRequest(
        contract_id=ledger.terms.contract_id, invoice_key=jan.invoice.key,
        payment_key="wire-jan", amount=jan.invoice.total, received_on=date(2027, 2, 3)))
    await ingest_all(ledger.engine, [nodes("n2", "2027-01-25T00:00:00Z", "1")])  # 3 -> 1
    feb = await run(ledger.acts.close_period, ledger.close_request(1))
    again = await run(ledger.acts.close_period, ledger.close_request(1))
    assert [(i.key, i.credited) for i in feb.credited] == [("usage:2027-01-01", Decimal("2.00"))]
    assert [(r.refund_key, r.amount) for r in feb.refunds] == [
        ("refund:auto:usage:2027-02-01:usage:2027-01-01", Decimal("2.00"))]
    assert again.credited == feb.credited
    assert again.refunds == feb.refunds
