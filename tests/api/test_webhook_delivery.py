"""Webhook delivery to a real HTTP receiver the test starts (SPEC.md section 13).

The receiver verifies every delivery's signature with ``standardwebhooks`` and
the endpoint's secret, and records what it got. Delivery runs in the real
worker on the dev server, with short retry delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook
from temporalio.testing import WorkflowEnvironment

from activities.events import emit_event
from models.events import DeliveryOptions, EventType
from tests.api.helpers import ApiServer, problem, run_cli
from tests.support.scenario import ContractRun, contract_doc, event
from worker.main import build_worker

FAST = DeliveryOptions(initial_retry_seconds=0.2, max_retry_seconds=0.5, poll_seconds=0.1,
                       max_wait_seconds=5, request_timeout_seconds=5)


@dataclass
class Receiver:
    """What a receiver got: every delivery (verified), and how it answers."""

    url: str = ""
    secret: str = ""
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    fail_next: int = 0  # answer 500 to this many requests
    always_fail: bool = False
    hold: asyncio.Event | None = None  # block the next request until set
    held: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ids(self) -> list[str]:
        return [d["id"] for d in self.deliveries]

    def unique_ids(self) -> list[str]:
        return list(dict.fromkeys(self.ids))

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except Exception:
            self.bad_signatures += 1
            payload = json.loads(body)
        self.deliveries.append({"id": headers["webhook-id"], "payload": payload})
        status = 200
        if self.hold is not None:
            hold, self.hold = self.hold, None
            self.held.set()
            await hold.wait()
        elif self.always_fail:
            status = 500
        elif self.fail_next > 0:
            self.fail_next -= 1
            status = 500
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture
async def receiver(api: ApiServer) -> AsyncIterator[Receiver]:
    r = Receiver()
    server = _Server(uvicorn.Config(r.app, host="127.0.0.1", port=0, log_level="warning",
                                    lifespan="off", interface="asgi3"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    r.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/hooks"
    saved = api.deps.delivery_options
    api.deps.delivery_options = FAST
    try:
        yield r
    finally:
        api.deps.delivery_options = saved
        if r.hold is not None:
            r.hold.set()
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


async def _register(api: ApiServer, r: Receiver, types: list[str] | None = None) -> str:
    async with api.http("ops") as http:
        created = await http.post("/v1/webhook-endpoints",
                                  json={"url": r.url, "event_types": types or []})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["secret"].startswith("whsec_")
        r.secret = body["secret"]
        shown = await http.get(f"/v1/webhook-endpoints/{body['id']}")
        assert "secret" not in shown.json()  # shown once
        return str(body["id"])


async def _emit(db: AsyncEngine, contract: str, *numbers: int) -> None:
    for n in numbers:
        async with db.begin() as conn:
            await emit_event(conn, EventType.PAYMENT_RECORDED, contract, {"n": n})


async def _until(predicate: Any, within: float = 20) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state another task changes
            await asyncio.sleep(0.05)


async def _listed(api: ApiServer, **params: Any) -> list[dict[str, Any]]:
    async with api.http("crm") as http:
        r = await http.get("/v1/events", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return list(r.json()["events"])


@pytest.mark.usefixtures("worker")
async def test_a_contracts_events_arrive_signed_and_in_order(
    api: ApiServer, receiver: Receiver, ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    await _register(api, receiver)
    doc = contract_doc(commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "1000")])
        await run.advance_to("2027-02-02")
        await run.pay("commitment:2027-01-01", "1000.00", "wire-1")
    listed = await _listed(api)
    assert [e["type"] for e in listed] == [
        "contract.created", "invoice.finalized", "contract.activated",
        "invoice.overdue",  # net-30: due Jan 31, paid Feb 2
        "invoice.finalized", "payment.recorded", "invoice.paid"]
    await _until(lambda: len(receiver.unique_ids()) == len(listed))
    assert receiver.bad_signatures == 0
    assert receiver.unique_ids() == [e["id"] for e in listed]
    got = {d["id"]: d["payload"] for d in receiver.deliveries}
    for e in listed:
        assert got[e["id"]] == e  # the body is the listed envelope
    finalized = [e for e in listed if e["type"] == "invoice.finalized"]
    async with api.http("crm") as http:
        for e in finalized:
            inv = (await http.get(f"/v1/invoices/{e['data']['number']}")).json()
            assert e["data"]["total"] == inv["total"] and e["data"]["lines"] == inv["lines"]


@pytest.mark.usefixtures("worker")
async def test_a_receiver_that_fails_three_times_gets_the_event_again_in_order(
    api: ApiServer, receiver: Receiver, db: AsyncEngine
) -> None:
    endpoint = await _register(api, receiver, ["payment.*"])
    receiver.fail_next = 3
    await _emit(db, "c-a", 1, 2, 3)
    async with db.begin() as conn:  # not in the filter: skipped, not sent
        await emit_event(conn, EventType.CREDITS_LOW, "c-a", {"n": 99})
    await _emit(db, "c-a", 4)
    await _until(lambda: len(receiver.unique_ids()) == 4)
    first = receiver.ids[0]
    assert receiver.ids[:4] == [first] * 4  # three 500s, then acknowledged
    assert [d["payload"]["data"]["n"] for d in receiver.deliveries[3:]] == [1, 2, 3, 4]
    async with api.http("ops") as http:
        state = (await http.get(f"/v1/webhook-endpoints/{endpoint}")).json()
    assert state["delivered"] == 4 and state["last_error"] is None
    assert state["cursor"] == (await _listed(api))[-1]["sequence"]


async def test_a_worker_killed_before_or_during_delivery_still_delivers_exactly_the_committed(
    api: ApiServer, receiver: Receiver, db: AsyncEngine, dev_temporal_env: WorkflowEnvironment
) -> None:
    await _register(api, receiver)  # its workflow starts; no worker runs yet
    await _emit(db, "c-k", 1, 2)
    with pytest.raises(RuntimeError):  # a change that rolled back: no phantom event
        async with db.begin() as conn:
            await emit_event(conn, EventType.PAYMENT_RECORDED, "c-k", {"n": 666})
            raise RuntimeError("crash before commit")
    gate = receiver.hold = asyncio.Event()  # the first delivery hangs in the receiver ...
    worker = build_worker(api.client, db, api.task_queue, graceful_shutdown=timedelta(0))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(receiver.held.wait(), 20)
    await worker.shutdown()  # ... while the worker dies: the cursor did not move
    await running
    gate.set()  # the receiver answers a client that has gone
    await _emit(db, "c-k", 3)
    async with build_worker(api.client, db, api.task_queue):
        await _until(lambda: len(receiver.unique_ids()) == 3, within=40)
    numbers = [d["payload"]["data"]["n"] for d in receiver.deliveries]
    assert 666 not in numbers
    assert list(dict.fromkeys(numbers)) == [1, 2, 3]
    assert numbers.count(1) >= 2  # at least once: the interrupted one came again
    assert receiver.bad_signatures == 0


@pytest.mark.usefixtures("worker")
async def test_replay_from_a_cursor(api: ApiServer, receiver: Receiver, db: AsyncEngine) -> None:
    endpoint = await _register(api, receiver)
    await _emit(db, "c-r", 1, 2, 3, 4)
    await _until(lambda: len(receiver.ids) == 4)
    listed = await _listed(api)
    second = listed[1]
    assert await _listed(api, after=second["sequence"]) == listed[2:]
    assert await _listed(api, after=second["id"]) == listed[2:]  # by event id too
    assert await _listed(api, after=second["sequence"]) == listed[2:]  # the same again
    async with api.http("ops") as http:
        r = await http.post(f"/v1/webhook-endpoints/{endpoint}/replay",
                            json={"after": second["sequence"]})
        assert r.status_code == 200, r.text
    await _until(lambda: len(receiver.ids) == 6)
    assert receiver.ids[4:] == [e["id"] for e in listed[2:]]
    cli = await run_cli(api, ["events", "list", "--after", str(second["sequence"]), "--json"],
                        scope="crm")
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["events"] == listed[2:]
    again = await run_cli(api, ["events", "replay", "--endpoint", endpoint, "--after",
                                str(listed[2]["sequence"])])
    assert again.exit_code == 0, again.output
    await _until(lambda: len(receiver.ids) == 7)
    assert receiver.ids[6] == listed[3]["id"]
    async with api.http("crm") as http:
        problem(await http.get("/v1/events", params={"after": "evt_nope"}), 422)
        problem(await http.get("/v1/events", params={"type": "invoice.nope"}), 422)


async def test_an_endpoint_that_keeps_failing_is_disabled_and_a_replay_revives_it(
    api: ApiServer, receiver: Receiver, db: AsyncEngine
) -> None:
    api.deps.delivery_options = FAST.model_copy(update={"give_up_after_seconds": 2.0})
    receiver.always_fail = True
    endpoint = await _register(api, receiver)
    await _emit(db, "c-d", 1)
    async with build_worker(api.client, db, api.task_queue), api.http("ops") as http:
        async def status() -> dict[str, Any]:
            return dict((await http.get(f"/v1/webhook-endpoints/{endpoint}")).json())

        async with asyncio.timeout(30):
            while (state := await status())["status"] != "disabled":  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert "HTTP 500" in state["disabled_reason"]
        assert state["failing_since"] is not None and state["delivered"] == 0
        attempts = len(receiver.ids)
        assert attempts >= 3
        receiver.always_fail = False
        api.deps.delivery_options = FAST
        r = await http.post(f"/v1/webhook-endpoints/{endpoint}/replay", json={"after": 0})
        assert r.json()["status"] == "enabled"
        await _until(lambda: len(receiver.ids) > attempts)
        await asyncio.sleep(0.3)
        assert (await status())["delivered"] == 1


async def test_bad_endpoints_are_refused(api: ApiServer, db: AsyncEngine) -> None:
    async with api.http("ops") as http:
        bad = problem(await http.post("/v1/webhook-endpoints",
                                      json={"url": "ftp://x", "event_types": ["invoice.nope"]}),
                      422)
        assert {e["field"] for e in bad["errors"]} == {"url", "event_types"}
        problem(await http.get("/v1/webhook-endpoints/we_missing"), 404)
    async with api.http("crm") as http:
        problem(await http.post("/v1/webhook-endpoints", json={"url": "http://x"}), 403)
    async with db.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM webhook_endpoints")) == 0


async def _history_has(api: ApiServer, endpoint: str, event_type: str, n: int) -> bool:
    from temporalio.api.enums.v1 import EventType as HistoryEvent

    handle = api.client.get_workflow_handle(f"webhook-endpoint:{endpoint}")
    wanted = HistoryEvent.Value(f"EVENT_TYPE_{event_type}")
    history = await handle.fetch_history()
    return sum(1 for e in history.events if e.event_type == wanted) >= n


async def test_a_replay_while_the_disabled_endpoints_workflow_is_still_ending_delivers(
    api: ApiServer, receiver: Receiver, db: AsyncEngine
) -> None:
    """The endpoint's row says disabled a moment before its workflow ends. A replay
    in that moment found the workflow running (so started none) and the workflow
    then ended: the endpoint stayed enabled with nothing delivering it, forever.

    The moment is held open by running activities and workflows on separate
    workers and stopping the workflow worker: the row goes disabled, the wait
    activity sees it, and the workflow task that would end the run waits for a
    worker while the replay is sent."""
    from temporalio.worker import Worker

    from activities.payments import ManualGateway
    from worker.main import WORKFLOWS, activities_for

    endpoint = await _register(api, receiver)
    activities = Worker(api.client, task_queue=api.task_queue,
                        activities=activities_for(db, ManualGateway()))
    async with activities:
        async with Worker(api.client, task_queue=api.task_queue, workflows=WORKFLOWS):
            async with asyncio.timeout(20):  # the workflow is waiting for events
                while not await _history_has(api, endpoint, "ACTIVITY_TASK_STARTED", 1):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        async with db.begin() as conn:  # what the disable step writes
            await conn.execute(text("UPDATE webhook_endpoints SET status = 'disabled', "
                                    "disabled_reason = 'test' WHERE id = :id"),
                               {"id": endpoint})
        async with asyncio.timeout(20):  # the wait saw it; its workflow task is queued
            while not await _history_has(api, endpoint, "ACTIVITY_TASK_COMPLETED", 1):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        async with api.http("ops") as http:
            r = await http.post(f"/v1/webhook-endpoints/{endpoint}/replay", json={"after": 0})
            assert r.status_code == 200 and r.json()["status"] == "enabled"
            await _emit(db, "c-r", 1)
            async with Worker(api.client, task_queue=api.task_queue, workflows=WORKFLOWS):
                await _until(lambda: len(receiver.unique_ids()) == 1)
                shown = (await http.get(f"/v1/webhook-endpoints/{endpoint}")).json()
    assert shown["status"] == "enabled" and shown["delivered"] == 1
