"""Requests that outlast the API's deadline (issue 12 case 7, issue 11 case 12).

No worker runs while the request is sent, so the contract's workflow cannot answer
within the deadline; the worker starts afterwards and the request still applies.
The caller must hear "it may still apply" (504 + Retry-After), never "nothing changed";
an amendment without `effective` takes effect when billow received it, not when the
workflow got to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from tests.api.helpers import ApiServer, problem
from tests.support.paths import ACME
from worker.main import build_worker


@pytest.fixture
async def contract(api: ApiServer) -> dict[str, Any]:
    """A monthly contract whose term opened this month; its workflow has no worker yet."""
    today = datetime.now(UTC).date()
    body = {"id": f"slow-{uuid.uuid4().hex[:8]}",
            "customer": {"id": f"slow-co-{uuid.uuid4().hex[:6]}", "name": "Slow Co"},
            "plan": "pro", "starts_on": today.replace(day=1).isoformat(), "term_months": 12}
    async with api.http("ops") as http:
        catalog = yaml.safe_load((ACME / "catalog.yaml").read_text())
        assert (await http.put("/v1/catalog", json=catalog)).status_code == 201
        created = await http.post("/v1/contracts", json=body)
        assert created.status_code == 201, created.text
    return body


@contextlib.asynccontextmanager
async def deadline(api: ApiServer, seconds: float) -> AsyncIterator[None]:
    saved = api.deps.workflow_timeout_seconds
    api.deps.workflow_timeout_seconds = seconds
    try:
        yield
    finally:
        api.deps.workflow_timeout_seconds = saved


async def _amendment_row(api: ApiServer, contract_id: str, amendment_id: str,
                         wait: float = 20) -> Any:
    loop = asyncio.get_running_loop()
    until = loop.time() + wait
    while True:
        async with api.deps.engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT effective, document FROM amendments "
                "WHERE contract_id = :c AND amendment_id = :a"),
                {"c": contract_id, "a": amendment_id})).one_or_none()
        if row is not None or loop.time() > until:
            return row
        await asyncio.sleep(0.2)


async def test_an_update_past_the_deadline_answers_504_it_may_still_apply(
    api: ApiServer, contract: dict[str, Any]
) -> None:
    cid = contract["id"]
    amendment = {"id": "late-1", "kind": "change_payment_terms", "payment_terms_days": 60}
    async with api.http("crm") as http, deadline(api, 1.5):
        slow = await http.post(f"/v1/contracts/{cid}/amendments", json=amendment)
    body = problem(slow, 504)
    assert int(slow.headers["retry-after"]) > 0
    assert "may still apply" in body["detail"]
    assert "nothing" not in body["detail"]
    async with build_worker(api.client, api.deps.engine, api.task_queue):
        assert await _amendment_row(api, cid, "late-1") is not None  # it did apply
        async with api.http("crm") as http:
            again = await http.post(f"/v1/contracts/{cid}/amendments", json=amendment)
        assert again.status_code == 200, again.text


async def test_an_amendment_takes_effect_when_billow_received_it(
    api: ApiServer, contract: dict[str, Any]
) -> None:
    cid = contract["id"]
    plain = {"id": "late-2", "kind": "change_payment_terms", "payment_terms_days": 60}
    # A client's own received_at is not believed: billow stamps it.
    claimed = {"id": "late-3", "kind": "set_auto_pay", "auto_pay": True,
               "received_at": "2020-01-01T00:00:00Z"}
    sent = datetime.now(UTC)
    async with api.http("crm") as http, deadline(api, 1):
        for amendment in (plain, claimed):
            await http.post(f"/v1/contracts/{cid}/amendments", json=amendment)
    answered = datetime.now(UTC)
    await asyncio.sleep(2)  # the workflow gets to them well after they were received
    async with build_worker(api.client, api.deps.engine, api.task_queue):
        rows = [await _amendment_row(api, cid, a["id"]) for a in (plain, claimed)]
    for row in rows:
        assert row is not None
        assert sent <= row.effective <= answered, (sent, row.effective, answered)
        assert sent <= datetime.fromisoformat(row.document["received_at"]) <= answered
