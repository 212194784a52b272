"""Creating contracts over HTTP when things go wrong: an ambiguous workflow start
(issue 11 case 7), concurrent creates of one id (issue 12 case 3), and contracts of
one customer whose terms overlap on a meter (issue 12 case 1, SPEC.md section 1)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from tests.api.helpers import ApiServer, counts, fields, problem
from tests.support.paths import ACME


@pytest.fixture
def contract() -> dict[str, Any]:
    """A contract with an id of its own: workflows of earlier tests keep running on the
    session's Temporal server, and a create would find theirs."""
    return {"id": f"create-{uuid.uuid4().hex[:8]}",
            "customer": {"id": "create-co", "name": "Create Co"}, "plan": "pro",
            "starts_on": "2030-01-01", "term_months": 12}


async def _catalog(api: ApiServer) -> None:
    async with api.http("ops") as http:
        catalog = yaml.safe_load((ACME / "catalog.yaml").read_text())
        assert (await http.put("/v1/catalog", json=catalog)).status_code == 201


class _AnswerLost(Interceptor):
    """Temporal accepts the start, the workflow registers its rows, and then the
    answer is lost: the client sees DEADLINE_EXCEEDED (a real server, a real
    workflow; only the reply to the API goes missing)."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _AnswerLostOutbound(next)


class _AnswerLostOutbound(OutboundInterceptor):
    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        handle = await super().start_workflow(input)
        for _ in range(200):  # until the workflow's first (local) activity, registration, ran
            events = [e async for e in handle.fetch_history_events()]
            if any(e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED for e in events):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the workflow never registered its contract")
        raise RPCError("context deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")


async def test_an_ambiguous_start_keeps_the_contract_and_can_be_repeated(
    api: ApiServer, worker: None, contract: dict[str, Any]
) -> None:
    await _catalog(api)
    config = api.client.config()
    config["interceptors"] = [_AnswerLost()]
    good = api.deps.client
    api.deps.client = Client(**config)
    try:
        async with api.http("crm") as http:
            lost = await http.post("/v1/contracts", json=contract)
    finally:
        api.deps.client = good
    # Nothing was deleted: the running workflow still has its contract.
    assert await counts(api.deps.engine, "contracts", "customers") == {
        "contracts": 1, "customers": 1}
    body = problem(lost, 504)
    assert lost.headers["retry-after"]
    assert "may have been created" in body["detail"] and "retry" in body["detail"]
    async with api.http("crm") as http:
        again = await http.post("/v1/contracts", json=contract)
        assert again.status_code == 200, again.text
        assert again.json()["workflow_id"] == f"contract:{contract['id']}"
        # The running workflow's ledger steps work: an amendment is recorded.
        amended = await http.post(f"/v1/contracts/{contract['id']}/amendments", json={
            "id": "after-lost-start", "kind": "change_payment_terms", "payment_terms_days": 60})
        assert amended.status_code == 200, amended.text
    desc = await api.client.get_workflow_handle(f"contract:{contract['id']}").describe()
    assert desc.status is not None and desc.status.name == "RUNNING"
    assert (await counts(api.deps.engine, "amendments"))["amendments"] == 1


async def test_concurrent_creates_with_different_terms_one_wins(
    api: ApiServer, worker: None, contract: dict[str, Any]
) -> None:
    await _catalog(api)
    terms = [{**contract, "payment_terms_days": days} for days in (30, 45)]
    async with api.http("crm") as a, api.http("crm") as b:
        answers = await asyncio.gather(a.post("/v1/contracts", json=terms[0]),
                                       b.post("/v1/contracts", json=terms[1]))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201, 409], [r.text for r in answers]
    winner = next(r for r in answers if r.status_code == 201)
    loser = next(r for r in answers if r.status_code == 409)
    assert fields(problem(loser, 409)) == ["payment_terms_days"]
    days = winner.json()["contract"]["payment_terms_days"]
    async with api.deps.engine.connect() as conn:
        stored = await conn.scalar(text(
            "SELECT (document->>'payment_terms_days')::int FROM contracts WHERE id = :id"),
            {"id": contract["id"]})
    assert stored == days
    async with api.http("crm") as http:
        state = (await http.get(f"/v1/contracts/{contract['id']}")).json()
    assert state["terms"]["payment_terms_days"] == days


async def test_concurrent_identical_creates_are_one_contract(
    api: ApiServer, worker: None, contract: dict[str, Any]
) -> None:
    await _catalog(api)
    async with api.http("crm") as a, api.http("crm") as b:
        answers = await asyncio.gather(a.post("/v1/contracts", json=contract),
                                       b.post("/v1/contracts", json=contract))
    assert sorted(r.status_code for r in answers) == [200, 201], [r.text for r in answers]
    assert len({r.json()["workflow_id"] for r in answers}) == 1


async def test_overlapping_contracts_of_one_customer_are_refused(
    api: ApiServer, worker: None, contract: dict[str, Any]
) -> None:
    await _catalog(api)
    async with api.http("crm") as http:
        assert (await http.post("/v1/contracts", json=contract)).status_code == 201
        # The README's "copy the contract under another id": same customer, same meters.
        copy = {**contract, "id": contract["id"] + "-2", "starts_on": "2030-06-01"}
        body = problem(await http.post("/v1/contracts", json=copy), 409)
        assert body["type"].endswith("contract-overlap")
        assert body["conflicting_contract_id"] == contract["id"]
        assert contract["id"] in body["detail"]
        assert "customer.id" in fields(body)
        # Back to back is fine (the term end is exclusive), and so is another customer.
        after = {**contract, "id": contract["id"] + "-3", "starts_on": "2031-01-01"}
        assert (await http.post("/v1/contracts", json=after)).status_code == 201
        other = {**copy, "customer": {"id": "other-co", "name": "Other Co"}}
        assert (await http.post("/v1/contracts", json=other)).status_code == 201
    async with api.deps.engine.connect() as conn:
        ids = (await conn.scalars(text("SELECT id FROM contracts ORDER BY id"))).all()
    # ...-2 is the other customer's
    assert ids == [contract["id"], contract["id"] + "-2", contract["id"] + "-3"]


async def test_concurrent_overlapping_creates_one_wins(
    api: ApiServer, worker: None, contract: dict[str, Any]
) -> None:
    await _catalog(api)
    a_body = contract
    b_body = {**contract, "id": contract["id"] + "-2", "starts_on": "2030-03-01"}
    async with api.http("crm") as a, api.http("crm") as b:
        answers = await asyncio.gather(a.post("/v1/contracts", json=a_body),
                                       b.post("/v1/contracts", json=b_body))
    assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
    assert (await counts(api.deps.engine, "contracts"))["contracts"] == 1
