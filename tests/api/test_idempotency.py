"""``Idempotency-Key`` on mutating requests and retried payments (issue 12 cases 7, 10;
SPEC.md section 10): a retry answers as the first time, another body under the same
key is a 409, an unknown outcome is a 504 that says the change may still apply, and a
payment retried after one is recorded once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from tests.api.helpers import ApiServer, counts, fields, problem
from tests.support.paths import ACME
from worker.main import build_worker

CATALOG: dict[str, Any] = yaml.safe_load((ACME / "catalog.yaml").read_text())


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}


@contextlib.asynccontextmanager
async def deadline(api: ApiServer, seconds: float) -> AsyncIterator[None]:
    saved = api.deps.workflow_timeout_seconds
    api.deps.workflow_timeout_seconds = seconds
    try:
        yield
    finally:
        api.deps.workflow_timeout_seconds = saved


async def test_a_retry_answers_as_the_first_time_and_another_body_is_a_conflict(
    api: ApiServer,
) -> None:
    headers = key()
    async with api.http("ops") as http:
        first = await http.put("/v1/catalog", json=CATALOG, headers=headers)
        assert first.status_code == 201, first.text
        again = await http.put("/v1/catalog", json=CATALOG, headers=headers)
        # The first answer (201, created) — not "already applied" (200, created: false).
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.headers["idempotent-replayed"] == "true"
        other = {**CATALOG, "plans": []}
        conflict = problem(await http.put("/v1/catalog", json=other, headers=headers), 409)
        assert fields(conflict) == ["header.idempotency-key"]
        # Key order and whitespace do not make another request.
        reordered = dict(reversed(list(CATALOG.items())))
        assert (await http.put("/v1/catalog", json=reordered, headers=headers)).status_code == 201
        # The same key on another route is another request.
        other_route = await http.post("/v1/usage", json={"events": []}, headers=headers)
        assert other_route.status_code == 200, other_route.text
        bad = problem(await http.put("/v1/catalog", json=CATALOG,
                                     headers={"Idempotency-Key": "x" * 201}), 422)
        assert fields(bad) == ["header.idempotency-key"]
    assert (await counts(api.deps.engine, "catalog_versions"))["catalog_versions"] == 1


async def test_keys_are_scoped_to_the_api_key(api: ApiServer) -> None:
    headers = key()
    async with api.http("ops") as ops, api.http("usage") as usage:
        a = await ops.post("/v1/usage", json={"events": []}, headers=headers)
        b = await usage.post("/v1/usage", json={"events": [{
            "id": "e-1", "customer": "nobody", "meter": "tokens",
            "timestamp": "2030-01-01T00:00:00Z"}]}, headers=headers)
    assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
    assert "idempotent-replayed" not in b.headers


@pytest.fixture
async def invoice(api: ApiServer) -> AsyncIterator[dict[str, Any]]:
    """A finalized commitment invoice of a contract that opened this month (the worker
    ran until then and is stopped again)."""
    today = datetime.now(UTC).date()
    suffix = uuid.uuid4().hex[:8]
    contract = {"id": f"idem-{suffix}", "customer": {"id": f"idem-co-{suffix}", "name": "I"},
                "plan": "pro", "starts_on": today.replace(day=1).isoformat(),
                "term_months": 12, "commitment": {"amount": "1000.00", "bonus_percent": "0"}}
    async with api.http("ops") as http:
        assert (await http.put("/v1/catalog", json=CATALOG)).status_code == 201
        async with build_worker(api.client, api.deps.engine, api.task_queue):
            assert (await http.post("/v1/contracts", json=contract)).status_code == 201
            for _ in range(100):
                listed = (await http.get("/v1/invoices",
                                         params={"contract": contract["id"]})).json()
                numbered = [i for i in listed["invoices"] if i["number"]]
                if numbered:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("no commitment invoice")
    yield numbered[0]


async def _paid(api: ApiServer, number: str) -> tuple[Decimal, int]:
    async with api.deps.engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT i.amount_paid, (SELECT count(*) FROM payments p WHERE p.invoice_id = i.id) "
            "AS n FROM invoices i WHERE number = :n"), {"n": number})).one()
    return Decimal(row.amount_paid), int(row.n)


async def test_a_payment_past_the_deadline_is_504_and_its_retry_records_it_once(
    api: ApiServer, invoice: dict[str, Any]
) -> None:
    number = invoice["number"]
    headers = key()
    payment = {"amount": "100.00"}  # no payment_id: the Idempotency-Key is its id
    async with api.http("ops") as http:
        # No worker: the workflow cannot answer within the deadline.
        async with deadline(api, 1.5):
            slow = await http.post(f"/v1/invoices/{number}/payments", json=payment,
                                   headers=headers)
        body = problem(slow, 504)
        assert slow.headers["retry-after"] and "may still apply" in body["detail"]
        async with build_worker(api.client, api.deps.engine, api.task_queue):
            retry = await http.post(f"/v1/invoices/{number}/payments", json=payment,
                                    headers=headers)
            assert retry.status_code == 200, retry.text
            # The first send was recorded once the worker was back; the retry tells so.
            assert retry.json()["applied"] is True
            assert retry.json()["amount_paid"] == "100.00"
            replay = await http.post(f"/v1/invoices/{number}/payments", json=payment,
                                     headers=headers)
            assert replay.json() == retry.json()
            assert replay.headers["idempotent-replayed"] == "true"
            conflict = await http.post(f"/v1/invoices/{number}/payments",
                                       json={"amount": "200.00"}, headers=headers)
            problem(conflict, 409)
    assert await _paid(api, number) == (Decimal("100.00"), 1)


async def test_concurrent_sends_of_one_payment_record_it_once_and_answer_alike(
    api: ApiServer, invoice: dict[str, Any]
) -> None:
    number = invoice["number"]
    headers = key()
    async with build_worker(api.client, api.deps.engine, api.task_queue), \
            api.http("ops") as a, api.http("ops") as b:
        answers = await asyncio.gather(*(
            http.post(f"/v1/invoices/{number}/payments", json={"amount": "100.00"},
                      headers=headers) for http in (a, b)))
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["applied"] is True
    assert await _paid(api, number) == (Decimal("100.00"), 1)


async def test_a_resent_payment_id_answers_as_the_first_time(
    api: ApiServer, invoice: dict[str, Any]
) -> None:
    """Without Idempotency-Key: the payment's own id. A retry of a send that timed out
    must not answer `applied: false` for the payment the first send recorded."""
    number = invoice["number"]
    payment = {"amount": "100.00", "payment_id": f"wire-{uuid.uuid4().hex[:8]}"}
    async with api.http("ops") as http:
        async with deadline(api, 1.5):
            problem(await http.post(f"/v1/invoices/{number}/payments", json=payment), 504)
        async with build_worker(api.client, api.deps.engine, api.task_queue):
            retry = await http.post(f"/v1/invoices/{number}/payments", json=payment)
    assert retry.status_code == 200, retry.text
    assert retry.json()["applied"] is True
    assert await _paid(api, number) == (Decimal("100.00"), 1)


async def test_a_claim_held_by_a_dead_request_expires(db: Any) -> None:
    """An API process that died mid-request leaves its claim; once the lease is over a
    retry takes over, and the dead request can no longer store its answer."""
    from datetime import timedelta

    from activities.idempotency import (
        Claimed,
        Completed,
        InProgress,
        Mismatch,
        claim_key,
        complete_key,
        release_key,
    )

    async def claim(digest: str = "h1", lease: float = 0.5) -> Any:
        async with db.begin() as conn:
            return await claim_key(conn, "key-1", "POST /v1/x", "k", digest,
                                   timedelta(seconds=lease))

    first = await claim()
    assert isinstance(first, Claimed)
    assert isinstance(await claim(), InProgress)
    assert isinstance(await claim("h2"), Mismatch)
    await asyncio.sleep(0.6)
    second = await claim(lease=30)
    assert isinstance(second, Claimed) and second.token != first.token
    async with db.begin() as conn:
        assert await complete_key(conn, first, 200, "application/json", b"{}") is False
        await release_key(conn, second)  # an unknown outcome: the next retry runs again
    third = await claim(lease=30)
    assert isinstance(third, Claimed)
    async with db.begin() as conn:
        assert await complete_key(conn, third, 201, "application/json", b'{"a":1}')
    assert await claim() == Completed(201, "application/json", b'{"a":1}')
