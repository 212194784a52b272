"""``GET /v1/events`` lists every event committed before the request, even while
a webhook delivery is numbering events at that moment (found flaky in
tests/api/test_webhook_delivery.py under load: the listing skipped the
numbering and answered without the payment just recorded)."""

from __future__ import annotations

import asyncio

from activities.events import emit_event, sequence_events
from models.events import EventType
from tests.api.helpers import ApiServer


async def test_a_listing_waits_for_a_sequencer_at_work_and_has_what_committed_before(
    api: ApiServer,
) -> None:
    engine = api.deps.engine
    async with engine.begin() as conn:
        await emit_event(conn, EventType.CONTRACT_CREATED, "a", {"n": 1})
    busy = await engine.connect()
    trans = await busy.begin()
    assert await sequence_events(busy) == 1  # a delivery numbering it, not committed yet
    async with engine.begin() as conn:  # recorded before the listing is asked for
        await emit_event(conn, EventType.CONTRACT_CREATED, "b", {"n": 2})

    async def listed() -> list[int]:
        async with api.http("crm") as http:
            r = await http.get("/v1/events", params={"limit": 1000})
            assert r.status_code == 200, r.text
            return [e["data"]["n"] for e in r.json()["events"]]

    listing = asyncio.create_task(listed())
    await asyncio.sleep(0.5)
    await trans.commit()
    await busy.close()
    assert await asyncio.wait_for(listing, 30) == [1, 2]
