"""The whole CRM/ops path over real HTTP: uvicorn, the real worker, PostgreSQL and
the Temporal dev server in real time.

A contract that started three months ago on a monthly cycle, with a usage grace
of 0.002 h (~7 s), gets one grace window from its creation before its three past
periods close: usage sent right after creating it lands on three invoices.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text

from models.periods import add_months
from tests.api.helpers import TEMPORAL_UI, ApiServer, counts, fields, problem, run_cli
from tests.support.paths import ACME


def _months_back(n: int) -> list[date]:
    today = datetime.now(UTC).date()
    first = today.replace(day=1)
    return [add_months(first, -k) for k in range(n, -1, -1)]


async def _wait_for_invoices(api: ApiServer, contract_id: str, n: int) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    async with api.http("crm") as http:
        while True:
            r = await http.get("/v1/invoices", params={"contract": contract_id})
            assert r.status_code == 200, r.text
            finalized = [i for i in r.json()["invoices"] if i["number"]]
            if len(finalized) >= n:
                return finalized
            assert loop.time() < deadline, f"only {len(finalized)} invoices: {r.text}"
            await asyncio.sleep(0.5)


async def test_contract_lifecycle_over_http(api: ApiServer, worker: None,
                                            tmp_path: Path) -> None:
    m1, m2, m3, current = _months_back(3)
    suffix = uuid.uuid4().hex[:8]
    cid, customer = f"e2e-{suffix}", f"cust-{suffix}"

    # --- catalog through the CLI -----------------------------------------------------------
    applied = await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml"), "--json"])
    assert applied.exit_code == 0, applied.output
    assert json.loads(applied.stdout)["created"] is True
    again = await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml"), "--json"])
    assert json.loads(again.stdout) | {"created": False} == json.loads(again.stdout)

    # --- create the contract (CRM key) and send its usage right away --------------------------
    contract = {
        "id": cid, "customer": {"id": customer, "name": "E2E Corp"}, "plan": "pro",
        "starts_on": m1.isoformat(), "term_months": 12, "billing_cycle": "monthly",
        "payment_terms_days": 30, "usage_grace_hours": "0.002",
    }
    async with api.http("crm") as crm:
        r = await crm.post("/v1/contracts", json=contract)
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["workflow_id"] == f"contract:{cid}"
        assert created["temporal_ui_url"] == (
            f"{TEMPORAL_UI}/namespaces/default/workflows/contract:{cid}")
        assert created["created"] is True and created["run_id"]

    def event(i: str, month: date, meter: str, qty: str, **dims: str) -> dict[str, Any]:
        return {"id": f"{suffix}-{i}", "customer": customer, "meter": meter,
                "timestamp": f"{month.replace(day=10).isoformat()}T12:00:00Z",
                "quantity": qty, "dimensions": dims}

    events = [
        event("1", m1, "tokens", "1000", model="gpt-4"),          # 30.00
        event("2", m2, "tokens", "50000", model="gpt-3.5"),       # 100.00
        event("3", m2, "requests", "1000", region="eu"),          # 1.20
        event("4", m3, "requests", "2500", region="us"),          # 2.50 (fallback price)
        event("5", current, "tokens", "1", model="gpt-4"),        # open period: not yet billed
        event("1", m1, "tokens", "1000", model="gpt-4"),          # duplicate
    ]
    usage_file = tmp_path / "usage.jsonl"
    usage_file.write_text("\n".join(json.dumps(e) for e in events)
                          + '\n{"id": "broken"\n'
                          + json.dumps({**events[0], "id": f"{suffix}-6", "meter": "sms"}) + "\n")
    sent = await run_cli(api, ["usage", "send", str(usage_file), "--json"], scope="usage")
    assert sent.exit_code == 2, sent.output  # some events were rejected
    report = json.loads(sent.stdout)
    assert (report["accepted"], report["duplicate"], report["rejected"]) == (5, 1, 2)
    assert [(i["line"], i["status"]) for i in report["issues"]] == [
        (6, "duplicate"), (7, "rejected"), (8, "rejected")]
    assert "meter" in report["issues"][2]["reason"]

    # --- idempotent create, conflicting create ---------------------------------------------------
    async with api.http("crm") as crm:
        same = await crm.post("/v1/contracts", json=contract)
        assert same.status_code == 200 and same.json()["created"] is False
        conflict = problem(await crm.post("/v1/contracts",
                                          json={**contract, "payment_terms_days": 45}), 409)
        assert fields(conflict) == ["payment_terms_days"]
    contract_file = tmp_path / "contract.json"
    contract_file.write_text(json.dumps({**contract, "term_months": 24}))
    cli_conflict = await run_cli(api, ["contract", "create", str(contract_file)])
    assert cli_conflict.exit_code == 4, cli_conflict.output

    # --- three finalized invoices with the right amounts ------------------------------------------
    invoices = await _wait_for_invoices(api, cid, 3)
    assert [i["key"] for i in invoices] == [f"usage:{m.isoformat()}" for m in (m1, m2, m3)]
    assert [Decimal(i["total"]) for i in invoices] == [
        Decimal("530.00"), Decimal("601.20"), Decimal("502.50")]
    assert {i["status"] for i in invoices} == {"open"}
    n1, n2, n3 = (i["number"] for i in invoices)
    async with api.http("crm") as crm:
        doc = (await crm.get(f"/v1/invoices/{n2}")).json()
        assert {(ln["kind"], ln["amount"]) for ln in doc["lines"]} == {
            ("usage", "100.00"), ("usage", "1.20"), ("fee", "500.00")}
        assert doc["outstanding"] == "601.20"
        state = (await crm.get(f"/v1/contracts/{cid}")).json()
        assert state["source"] == "workflow" and state["status"] == "active"
        assert [i["number"] for i in state["invoices"] if i["number"]] == [n1, n2, n3]
        assert state["next_boundary"].startswith(add_months(current, 1).isoformat())
        draft = (await crm.get(f"/v1/contracts/{cid}/draft")).json()
        assert (draft["key"], draft["status"], draft["number"]) == (
            f"usage:{current.isoformat()}", "draft", None)
        assert draft["total"] == "500.03"  # the open period's one event so far, plus the fee

    # --- amend through the CLI ---------------------------------------------------------------
    amendment = tmp_path / "amend.yaml"
    amendment.write_text(
        f"id: {suffix}-amend-1\nkind: rate_override\n"
        "override: {meter: requests, match: {region: eu}, unit_price: \"0.001\"}\n")
    amended = await run_cli(api, ["contract", "amend", cid, str(amendment), "--json"])
    assert amended.exit_code == 0, amended.output
    assert json.loads(amended.stdout)["status"] == "applied"
    # a resend is answered like the first send and changes nothing
    resent = await run_cli(api, ["contract", "amend", cid, str(amendment), "--json"])
    assert json.loads(resent.stdout) == json.loads(amended.stdout)
    assert (await counts(api.deps.engine, "amendments"))["amendments"] == 1
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(f"id: {suffix}-amend-2\nkind: rate_override\n"
                       "override: {meter: sms, unit_price: \"1\"}\n")
    rejected = await run_cli(api, ["contract", "amend", cid, str(invalid), "--json"])
    assert rejected.exit_code == 2, rejected.output
    assert fields(json.loads(rejected.stdout)) == ["override.meter"]
    missing = await run_cli(api, ["contract", "amend", "no-such-contract", str(amendment)])
    assert missing.exit_code == 3
    shown = await run_cli(api, ["contract", "show", cid, "--json"])
    view = json.loads(shown.stdout)
    assert f"{suffix}-amend-1" in view["amendments"]
    assert any(o.get("meter") == "requests" and o.get("unit_price") == "0.001"
               for o in view["terms"]["rate_overrides"])
    table = await run_cli(api, ["contract", "show", cid])
    assert table.exit_code == 0 and cid in table.stdout and n1 in table.stdout
    listed = await run_cli(api, ["contract", "list", "--json"])
    assert [c["contract_id"] for c in json.loads(listed.stdout)["contracts"]] == [cid]
    inv_list = await run_cli(api, ["invoice", "list", "--contract", cid])
    assert inv_list.exit_code == 0 and n3 in inv_list.stdout

    # --- pay through the API (the workflow's `pay` update) ---------------------------------------
    async with api.http("ops") as ops:
        paid = await ops.post(f"/v1/invoices/{n1}/payments",
                              json={"amount": "530.00", "payment_id": f"{suffix}-wire-1"})
        assert paid.status_code == 200, paid.text
        assert paid.json() | {"status": "paid", "applied": True, "recorded_via": "workflow",
                              "amount_paid": "530.00"} == paid.json()
        # a resend answers as the first time did (and records nothing: 3 payments below)
        replay = await ops.post(f"/v1/invoices/{n1}/payments",
                                json={"amount": "530.00", "payment_id": f"{suffix}-wire-1"})
        assert replay.json() == paid.json()  # the first answer again
        reused = problem(await ops.post(f"/v1/invoices/{n2}/payments",
                                        json={"amount": "5.00", "payment_id": f"{suffix}-wire-1"}),
                         409)
        assert fields(reused) == ["path.number", "amount"]
        problem(await ops.post(f"/v1/invoices/{n1}/payments", json={"amount": "1.00"}), 409)
        cents = problem(await ops.post(f"/v1/invoices/{n2}/payments",
                                       json={"amount": "1.005"}), 422)
        assert fields(cents) == ["amount"]
    partial = await run_cli(api, ["invoice", "pay", n2, "--amount", "100.00",
                                  "--payment-id", f"{suffix}-wire-2", "--json"])
    assert partial.exit_code == 0, partial.output
    assert json.loads(partial.stdout)["status"] == "open"
    shown_inv = await run_cli(api, ["invoice", "show", n2, "--json"])
    assert json.loads(shown_inv.stdout)["outstanding"] == "501.20"

    # --- once the workflow has closed: ledger payments, database reads ---------------------------
    await api.client.get_workflow_handle(f"contract:{cid}").terminate("test: closed workflow")
    async with api.http("ops") as ops:
        direct = await ops.post(f"/v1/invoices/{n3}/payments", json={"amount": "502.50"})
        assert direct.status_code == 200, direct.text
        assert direct.json()["recorded_via"] == "ledger"
        assert direct.json()["status"] == "paid"
        other_amount = problem(await ops.post(f"/v1/invoices/{n2}/payments", json={
            "amount": "1.00", "payment_id": f"{suffix}-wire-2"}), 409)
        assert fields(other_amount) == ["amount"]
        state = (await ops.get(f"/v1/contracts/{cid}")).json()
        assert state["source"] == "database"
        assert [i["status"] for i in state["invoices"]] == ["paid", "open", "paid"]
        assert f"{suffix}-amend-1" in state["amendments"]
        ended = problem(await ops.post(f"/v1/contracts/{cid}/amendments", json={
            "id": f"{suffix}-amend-3", "kind": "set_auto_pay", "auto_pay": True}), 409)
        assert ended["type"].endswith("contract-ended")
    async with api.deps.engine.connect() as conn:
        journal = await conn.scalar(text(
            "SELECT count(*) FROM journal_entries WHERE contract_id = :c AND kind = 'payment'"
        ), {"c": cid})
    assert (await counts(api.deps.engine, "payments"))["payments"] == 3
    assert journal == 3  # one balanced entry per payment, whichever path recorded it
