"""The events outbox: written with the ledger change, sequenced in commit order.

The acme example runs through the real workflow; its events must be exactly
the changes the ledger made, in order, each with the object as the API shows
it (an invoice event's data is the invoice JSON, number included).
"""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.events import emit_event, list_events, sequence_events
from activities.ledger_reports import invoice_detail_json
from models.catalog import load_catalog_file
from models.contract import load_contract_file
from models.credits import crossed_low_balance, low_balance_limit
from models.events import EventEnvelope, EventType
from models.timeline import load_timeline_file
from models.usage import parse_usage_jsonl
from tests.support.paths import ACME
from tests.support.scenario import ContractRun, contract_doc, event
from worker.simulate import SimulationInput, simulate_on


async def _events(db: AsyncEngine, **kw: Any) -> list[EventEnvelope]:
    async with db.begin() as conn:
        await sequence_events(conn)
    async with db.connect() as conn:
        return list(await list_events(conn, limit=1000, **kw))


async def test_acme_writes_exactly_its_changes_as_events(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    events, _ = parse_usage_jsonl((ACME / "usage.jsonl").read_text())
    await simulate_on(ts_env, db, SimulationInput(
        catalog=load_catalog_file(ACME / "catalog.yaml"),
        contract=load_contract_file(ACME / "contract.yaml"),
        usage=events, timeline=load_timeline_file(ACME / "timeline.yaml"),
        until=date(2028, 6, 30)))
    found = await _events(db)
    kinds = [(e.type.value, e.data.get("key") or e.data.get("invoice_key"))
             for e in found]
    assert kinds == [
        ("contract.created", None),
        ("invoice.finalized", "commitment:2027-01-01"),
        ("contract.activated", None),
        ("payment.recorded", "commitment:2027-01-01"),
        ("invoice.paid", "commitment:2027-01-01"),
        # due May 16, paid May 20 (the timeline): overdue first
        ("invoice.finalized", "usage:2027-01-01"),
        ("invoice.overdue", "usage:2027-01-01"),
        ("payment.recorded", "usage:2027-01-01"),
        ("invoice.paid", "usage:2027-01-01"),
        ("invoice.finalized", "usage:2027-04-01"),
        ("invoice.overdue", "usage:2027-04-01"),
        ("invoice.finalized", "usage:2027-07-01"),
        ("invoice.overdue", "usage:2027-07-01"),
        ("invoice.finalized", "usage:2027-10-01"),
        ("credits.expired", None),
        ("contract.ended", None),
        ("invoice.overdue", "usage:2027-10-01"),
    ], kinds
    assert [e.sequence for e in found] == list(range(1, len(found) + 1))
    async with db.connect() as conn:
        for e in found:
            if e.type is EventType.INVOICE_FINALIZED:
                data = e.data
                assert data["number"] is not None and data["number"].startswith("INV-")
                now = await invoice_detail_json(conn, "acme-2027", data["key"])
                assert now is not None
                # What was true at finalization (status may have moved on since).
                assert {k: v for k, v in data.items() if k not in ("status", "amount_paid",
                        "outstanding", "paid_on")} == {k: v for k, v in now.items() if k not in (
                        "status", "amount_paid", "outstanding", "paid_on")}
    expired = next(e for e in found if e.type is EventType.CREDITS_EXPIRED)
    assert Decimal(expired.data["grants"][0]["credits"]) > 0
    # Filters and the cursor: the same events again from any point.
    later = await _events(db, after=5)
    assert later == found[5:]
    assert await _events(db, after=5) == later
    paid = await _events(db, types=["invoice.paid", "payment.*"])
    assert [e.type.value for e in paid] == ["payment.recorded", "invoice.paid"] * 2


async def test_a_rolled_back_change_leaves_no_event(db: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with db.begin() as conn:
            await emit_event(conn, EventType.PAYMENT_RECORDED, None, {"amount": "1.00"})
            raise RuntimeError("the ledger change failed")
    assert await _events(db) == []


async def test_sequence_follows_commit_order_not_insert_order(db: AsyncEngine) -> None:
    """An event inserted first but committed last is sequenced last: a reader
    with a cursor after the early commits still gets it."""
    slow = await db.connect()
    trans = await slow.begin()
    first = await emit_event(slow, EventType.CONTRACT_CREATED, "a", {"n": 1})
    async with db.begin() as conn:
        second = await emit_event(conn, EventType.CONTRACT_CREATED, "b", {"n": 2})
    assert first < second
    seen = await _events(db)
    assert [e.data["n"] for e in seen] == [2]
    await trans.commit()
    await slow.close()
    after = await _events(db, after=seen[0].sequence)
    assert [e.data["n"] for e in after] == [1]


async def test_concurrent_sequencers_never_share_a_number(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        for i in range(50):
            await emit_event(conn, EventType.CONTRACT_CREATED, f"c{i}", {"n": i})

    async def one() -> int:
        async with db.begin() as conn:
            return await sequence_events(conn)

    counts = await asyncio.gather(*(one() for _ in range(5)))
    assert sum(counts) == 50
    assert [e.data["n"] for e in await _events(db)] == list(range(50))


def test_low_balance_threshold_forms() -> None:
    assert low_balance_limit("5000.00", Decimal(120000)) == Decimal("5000.00")
    assert low_balance_limit("10%", Decimal(120000)) == Decimal(12000)
    assert crossed_low_balance("10%", Decimal(100), Decimal(10), Decimal(9))
    assert not crossed_low_balance("10%", Decimal(100), Decimal(9), Decimal(5))  # once
    assert not crossed_low_balance("10%", Decimal(100), Decimal(50), Decimal(10))


async def test_credits_low_fires_once_when_the_balance_crosses(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(commitment={"amount": "1000.00"}, low_balance_threshold="25%")
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "10000"),   # 300.00
                              event("e2", "2027-02-10T00:00:00Z", "20000"),   # 600.00
                              event("e3", "2027-03-10T00:00:00Z", "1000")])   # 30.00
        await run.advance_to("2027-04-02")
    low = await _events(db, types=["credits.low"])
    assert len(low) == 1
    assert low[0].data["invoice_key"] == "usage:2027-02-01"
    assert Decimal(low[0].data["balance"]) == Decimal("100.00")
