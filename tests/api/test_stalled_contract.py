"""A contract whose workflow cannot answer right now (issue 12 cases 8 and 9): the
caller gets a retryable 503 with Retry-After, never a 500 and never a 4xx that a
client would not retry."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from temporalio import workflow
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowUpdateInput,
    WorkflowUpdateHandle,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from tests.api.helpers import ApiServer, problem
from tests.support.paths import ACME

AMENDMENT = {"id": "while-stalled", "kind": "set_auto_pay", "auto_pay": True}


@workflow.defn(name="ContractWorkflow", sandboxed=False)
class StalledContract:
    """Stands in for a contract whose workflow task fails on every attempt (a bug
    or a replay failure): the real server retries the task forever."""

    @workflow.run
    async def run(self, inp: Any) -> None:
        raise RuntimeError("every workflow task of this contract fails")

    @workflow.update(name="amend")
    async def amend(self, amendment: Any) -> Any:
        return None


@pytest.fixture
async def contract_id(api: ApiServer) -> str:
    cid = f"stalled-{uuid.uuid4().hex[:8]}"
    async with api.http("ops") as http:
        catalog = yaml.safe_load((ACME / "catalog.yaml").read_text())
        assert (await http.put("/v1/catalog", json=catalog)).status_code == 201
        created = await http.post("/v1/contracts", json={
            "id": cid, "customer": {"id": cid, "name": "Stalled Co"}, "plan": "pro",
            "starts_on": "2030-01-01", "term_months": 12})
        assert created.status_code == 201, created.text
    return cid


async def test_an_update_to_a_stalled_contract_is_a_503(
    api: ApiServer, contract_id: str
) -> None:
    async with Worker(api.client, task_queue=api.task_queue, workflows=[StalledContract]):
        handle = api.client.get_workflow_handle(f"contract:{contract_id}")
        for _ in range(100):  # until its workflow task has failed at least once
            raw = (await handle.describe()).raw_description
            if raw.pending_workflow_task.attempt > 1:
                break
            await asyncio.sleep(0.1)
        saved = api.deps.workflow_timeout_seconds
        api.deps.workflow_timeout_seconds = 2
        try:
            async with api.http("crm") as http:
                r = await http.post(f"/v1/contracts/{contract_id}/amendments", json=AMENDMENT)
        finally:
            api.deps.workflow_timeout_seconds = saved
    body = problem(r, 503)
    assert r.headers["retry-after"]
    assert "stalled" in body["detail"] and "may still apply" in body["detail"]


class _FailedPrecondition(Interceptor):
    """The server's answer to an update while the workflow's task keeps failing."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _FailedPreconditionOutbound(next)


class _FailedPreconditionOutbound(OutboundInterceptor):
    async def start_workflow_update(
        self, input: StartWorkflowUpdateInput
    ) -> WorkflowUpdateHandle[Any]:
        raise RPCError("workflow task is failing", RPCStatusCode.FAILED_PRECONDITION, b"")


async def test_failed_precondition_is_a_503(api: ApiServer, contract_id: str) -> None:
    config = api.client.config()
    config["interceptors"] = [_FailedPrecondition()]
    good = api.deps.client
    api.deps.client = Client(**config)
    try:
        async with api.http("crm") as http:
            r = await http.post(f"/v1/contracts/{contract_id}/amendments", json=AMENDMENT)
    finally:
        api.deps.client = good
    body = problem(r, 503)
    assert r.headers["retry-after"] and "may still apply" in body["detail"]


async def test_a_payment_for_an_invoice_the_workflow_has_not_caught_up_with_is_recorded(
    api: ApiServer, worker: None, contract_id: str
) -> None:
    """The ledger committed an invoice, then the worker crashed before its workflow
    task completed: the ledger (and GET /v1/invoices) has it, the workflow's state not
    yet. Never a 422: the workflow lets the ledger decide, and the ledger records it
    (SPEC.md section 10; it was a retryable 503 before the workflow did so)."""
    today = datetime.now(UTC).date()
    async with api.deps.engine.begin() as conn:
        await conn.execute(text(
            """
            INSERT INTO invoices (contract_id, key, number, kind, status, currency,
                period_start, period_end, issued_on, due_on, subtotal, credits_applied,
                total, amount_paid, finalized_at)
            VALUES (:c, 'top_up:2030-01-01', 'INV-900001', 'top_up', 'open', 'USD',
                :start, :end, :today, :today, 50, 0, 50, 0, now())
            """), {"c": contract_id, "start": date(2030, 1, 1), "end": date(2031, 1, 1),
                   "today": today})
    async with api.http("ops") as http:
        listed = (await http.get("/v1/invoices", params={"contract": contract_id})).json()
        assert [i["number"] for i in listed["invoices"]] == ["INV-900001"]
        r = await http.post("/v1/invoices/INV-900001/payments",
                            json={"amount": "50.00", "payment_id": "wire-1"})
    assert r.status_code == 200, r.text
    assert (r.json()["applied"], r.json()["amount_paid"], r.json()["status"]) == (
        True, "50.00", "paid")
