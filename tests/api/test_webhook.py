"""The CRM webhook: a signed closed-won deal creates its contract; tampered, stale
and replayed deliveries are refused and store nothing."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import yaml
from temporalio.client import WorkflowExecutionStatus

from api.webhooks import sign
from tests.api.helpers import WEBHOOK_SECRET, ApiServer, counts, fields, problem
from tests.support.paths import ACME

TABLES = ("contracts", "customers", "webhook_deliveries")


def _deal(suffix: str, **changes: Any) -> dict[str, Any]:
    deal = {"id": f"D-{suffix}", "contract_id": f"crm-{suffix}",
            "customer": {"id": f"crm-cust-{suffix}", "name": "Webhook Ltd"}, "plan": "pro",
            "starts_on": "2031-01-01", "term_months": 12, "billing_cycle": "quarterly",
            "commitment": {"amount": "12000.00", "bonus_percent": "10"}}
    return {**deal, **changes}


def _signed(payload: Any, ts: int | None = None, secret: str = WEBHOOK_SECRET,
            delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    stamp = int(time.time()) if ts is None else ts
    headers = {"content-type": "application/json", "X-Billow-Timestamp": str(stamp),
               "X-Billow-Signature": sign(secret, stamp, body)}
    if delivery:
        headers["X-Billow-Delivery"] = delivery
    return body, headers


async def _post(http: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await http.post("/v1/webhooks/crm", content=body, headers=headers)


async def test_signed_deal_creates_the_contract_and_replays_are_refused(api: ApiServer) -> None:
    suffix = uuid.uuid4().hex[:8]
    async with api.http("ops") as ops:
        catalog = yaml.safe_load((ACME / "catalog.yaml").read_text())
        assert (await ops.put("/v1/catalog", json=catalog)).status_code == 201
    payload = {"event": "deal.closed_won", "id": f"dlv-{suffix}",
               "occurred_at": "2030-12-15T10:00:00Z", "deal": _deal(suffix)}
    body, headers = _signed(payload)
    async with api.http(None) as http:  # no API key: the signature authenticates
        r = await _post(http, body, headers)
        assert r.status_code == 201, r.text
        accepted = r.json()
        assert accepted["status"] == "created" and accepted["contract_id"] == f"crm-{suffix}"
        assert accepted["workflow_id"] == f"contract:crm-{suffix}"
        handle = api.client.get_workflow_handle(accepted["workflow_id"])
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        stored = await counts(api.deps.engine, *TABLES)
        assert stored == {"contracts": 1, "customers": 1, "webhook_deliveries": 1}

        # the same signed request again: a replay
        replay = problem(await _post(http, body, headers), 409)
        assert replay["type"].endswith("replayed-delivery")
        # the same delivery id, re-signed later: still the same delivery
        body2, headers2 = _signed(payload, ts=int(time.time()) + 1)
        problem(await _post(http, body2, headers2), 409)
        # tampered: body changed after signing
        tampered = body.replace(b'"12000.00"', b'"1.00"')
        assert tampered != body
        bad = problem(await _post(http, tampered, headers), 401)
        assert bad["type"].endswith("invalid-signature")
        assert fields(bad) == ["header.x-billow-signature"]
        # signed with another secret
        problem(await _post(http, *_signed(payload, secret="not-the-secret")), 401)
        # stale and future timestamps, correctly signed
        old = problem(await _post(http, *_signed(payload, ts=int(time.time()) - 600)), 401)
        assert old["type"].endswith("stale-timestamp")
        problem(await _post(http, *_signed(payload, ts=int(time.time()) + 600)), 401)
        # missing or malformed headers
        problem(await _post(http, body, {"content-type": "application/json"}), 401)
        problem(await _post(http, body, {**headers, "X-Billow-Timestamp": "yesterday"}), 401)
        problem(await _post(http, body, {**headers, "X-Billow-Signature": "v0=abc"}), 401)
        assert await counts(api.deps.engine, *TABLES) == stored

        # a new delivery of the same deal: idempotent on the contract id
        again = await _post(http, *_signed({**payload, "id": f"dlv-{suffix}-2"}))
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "exists"
        # the same contract id with other terms: a conflict, and the delivery is not kept
        changed = {**payload, "id": f"dlv-{suffix}-3",
                   "deal": _deal(suffix, term_months=24)}
        conflict = problem(await _post(http, *_signed(changed)), 409)
        assert fields(conflict) == ["term_months"]
        assert (await counts(api.deps.engine, "webhook_deliveries"))["webhook_deliveries"] == 2


async def test_invalid_payloads_store_nothing(api: ApiServer) -> None:
    suffix = uuid.uuid4().hex[:8]
    async with api.http(None) as http:
        missing_plan = {"event": "deal.closed_won",
                        "deal": {k: v for k, v in _deal(suffix).items() if k != "plan"}}
        doc = problem(await _post(http, *_signed(missing_plan)), 422)
        assert fields(doc) == ["deal.plan"]
        unknown = {"event": "deal.closed_won", "deal": _deal(suffix, stage="won")}
        assert fields(problem(await _post(http, *_signed(unknown)), 422)) == ["deal.stage"]
        wrong_type = {"event": "deal.closed_won", "deal": _deal(suffix, term_months="a year")}
        assert fields(problem(await _post(http, *_signed(wrong_type)), 422)) == [
            "deal.term_months"]
        malformed = problem(await _post(http, *_signed(b'{"event": "deal.closed_won",')), 422)
        assert "malformed JSON" in malformed["errors"][0]["reason"]
        # valid deal, but no catalog applied yet: refused, and can be resent later
        valid = {"event": "deal.closed_won", "id": f"dlv-{suffix}", "deal": _deal(suffix)}
        problem(await _post(http, *_signed(valid)), 409)
        assert await counts(api.deps.engine, *TABLES) == dict.fromkeys(TABLES, 0)
        # other events are acknowledged and ignored
        ignored = await _post(http, *_signed({"event": "deal.updated", "deal": {"id": "x"}}))
        assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"
        assert await counts(api.deps.engine, "contracts") == {"contracts": 0}
        # too large
        problem(await _post(http, *_signed(b"{" + b" " * (1024 * 1024) + b"}")), 413)
        # without a configured secret the webhook is off
        api.deps.webhook_secret = None
        try:
            problem(await _post(http, *_signed(valid)), 503)
        finally:
            api.deps.webhook_secret = WEBHOOK_SECRET
