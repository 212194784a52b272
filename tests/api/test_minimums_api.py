"""Minimum commitments and spend limits over real HTTP and the CLI (SPEC 12):
the contract file's fields, the draft, the contract view, amendments at the door."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import yaml

from models.periods import add_months
from tests.api.helpers import ApiServer, counts, fields, problem, run_cli
from tests.support.paths import ACME


def _catalog() -> dict[str, Any]:
    catalog: dict[str, Any] = yaml.safe_load((ACME / "catalog.yaml").read_text())
    catalog["plans"][0]["meter_limits"] = [{"meter": "requests", "maximum_amount": "1.00"}]
    return catalog


async def _wait_for_invoices(api: ApiServer, cid: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    async with api.http("crm") as http:
        while True:
            r = await http.get(f"/v1/contracts/{cid}")
            if len([i for i in r.json()["invoices"] if i["kind"] == "usage"]) >= n:
                return
            assert loop.time() < deadline, r.text
            await asyncio.sleep(0.3)


async def test_minimums_over_http(api: ApiServer, worker: None) -> None:
    today = datetime.now(UTC).date()
    start = add_months(today.replace(day=1), -1)
    suffix = uuid.uuid4().hex[:8]
    cid, customer = f"min-{suffix}", f"cust-{suffix}"
    contract = {
        "id": cid, "customer": {"id": customer, "name": "Min Corp"}, "plan": "pro",
        "starts_on": start.isoformat(), "term_months": 12, "billing_cycle": "monthly",
        "payment_terms_days": 30, "usage_grace_hours": "0.001",
        "minimum_commitment": {"amount": "12000.00", "per": "term"},
        "rate_overrides": [{"meter": "tokens", "minimum_amount": "100.00"}],
    }
    async with api.http("ops") as ops:
        assert (await ops.put("/v1/catalog", json=_catalog())).status_code in (200, 201)
    async with api.http("crm") as crm:
        # refused at the door, naming the field, nothing stored
        for bad, field in (
            ({"minimum_commitment": {"amount": "1.00", "per": "term", "currency": "EUR"}},
             "minimum_commitment.currency"),
            ({"minimum_commitment": {"amount": "-1.00", "per": "term"}},
             "minimum_commitment.amount"),
            ({"rate_overrides": [{"meter": "tokens", "minimum_amount": "5",
                                  "maximum_amount": "1"}]},
             "rate_overrides[0].minimum_amount"),
            ({"rate_overrides": [{"meter": "requests", "minimum_amount": "5.00"}]},
             "rate_overrides[0].minimum_amount"),  # above the plan's 1.00 cap
        ):
            refused = problem(await crm.post("/v1/contracts", json={**contract, **bad}), 422)
            assert fields(refused) == [field], refused
        assert (await counts(api.deps.engine, "contracts"))["contracts"] == 0

        r = await crm.post("/v1/contracts", json=contract)
        assert r.status_code == 201, r.text
        async with api.http("usage") as usage:
            sent = await usage.post("/v1/usage", json={"events": [
                {"id": f"{suffix}-r", "customer": customer, "meter": "requests",
                 "timestamp": f"{today.isoformat()}T00:00:00Z", "quantity": "5000",
                 "dimensions": {"region": "us"}},  # 5.00, capped at 1.00
            ]})
        assert sent.status_code == 200 and sent.json()["accepted"] == 1, sent.text
        await _wait_for_invoices(api, cid, 1)
        state = (await crm.get(f"/v1/contracts/{cid}")).json()
        draft = (await crm.get(f"/v1/contracts/{cid}/draft")).json()

        # an invalid amendment: 422 naming the field, nothing changes
        bad = problem(await crm.post(f"/v1/contracts/{cid}/amendments", json={
            "id": "m-bad", "kind": "set_minimum_commitment",
            "minimum_commitment": {"amount": "10.005", "per": "billing_period"}}), 422)
        assert fields(bad) == ["minimum_commitment.amount"], bad
        ok = await crm.post(f"/v1/contracts/{cid}/amendments", json={
            "id": "m-1", "kind": "set_minimum_commitment",
            "minimum_commitment": {"amount": "500.00", "per": "billing_period"}})
        assert ok.status_code == 200, ok.text
        amended = ok.json()
        after = (await crm.get(f"/v1/contracts/{cid}")).json()

    last_month = state["invoices"][-1]
    assert last_month["total"] == "600.00"  # tokens minimum 100 + the 500 fee
    assert state["commitment"] == {
        "per": "term", "minimum": "12000.00", "spend": "100.00", "shortfall": "11900.00",
        "true_up": "0.00", "period_start": start.isoformat(),
        "period_end": add_months(start, 1).isoformat(), "final": False}
    assert state["commitment_text"] == "spent 100.00 of 12,000.00 USD, 11 months left"
    # the draft: this period's minimum and cap lines, and spend to date with it
    assert [(ln["kind"], ln.get("meter") or ln.get("fee"), ln["amount"])
            for ln in draft["lines"]] == [
        ("minimum", "tokens", "100.00"),
        ("usage", "requests", "5.00"),
        ("maximum", "requests", "-4.00"),
        ("fee", "platform", "500.00"),
    ]
    assert draft["commitment"]["spend"] == "201.00"  # 100 billed + 101 in the draft
    assert draft["commitment"]["true_up"] == "0.00"  # a term minimum: the final invoice
    # effective from the next boundary, the draft's period keeps the term minimum
    assert amended["status"] == "scheduled"
    assert amended["effective"].startswith(add_months(start, 2).isoformat())
    assert after["pending_amendments"] == ["m-1"]

    shown = await run_cli(api, ["contract", "show", cid], scope="crm")
    assert shown.exit_code == 0, shown.output
    assert "spent 100.00 of 12,000.00 USD, 11 months left" in shown.output
    as_json = await run_cli(api, ["contract", "show", cid, "--json"], scope="crm")
    assert json.loads(as_json.stdout)["commitment"]["shortfall"] == "11900.00"
