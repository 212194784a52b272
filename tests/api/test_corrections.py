"""Corrections over HTTP and the CLI (SPEC.md section 11): the workflow path while the
contract runs, the ledger path once its workflow has closed."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

from models.periods import add_months
from tests.api.helpers import ApiServer, counts, fields, problem, run_cli
from tests.support.correction_checks import ledger_problems
from tests.support.paths import ACME


def _months_back(n: int) -> list[date]:
    first = datetime.now(UTC).date().replace(day=1)
    return [add_months(first, -k) for k in range(n, -1, -1)]


async def _contract(api: ApiServer, months_back: int = 2) -> tuple[str, list[dict[str, Any]]]:
    """A monthly contract that started ``months_back`` months ago, with usage in each
    past month; returns its id and its finalized invoices."""
    months = _months_back(months_back)
    suffix = uuid.uuid4().hex[:8]
    cid, customer = f"corr-{suffix}", f"cust-{suffix}"
    applied = await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml"), "--json"])
    assert applied.exit_code == 0, applied.output
    contract = {
        "id": cid, "customer": {"id": customer, "name": "Corr Corp"}, "plan": "pro",
        "starts_on": months[0].isoformat(), "term_months": 12, "billing_cycle": "monthly",
        "payment_terms_days": 30, "usage_grace_hours": "0.002",
    }
    events = [{"id": f"{suffix}-{i}", "customer": customer, "meter": "tokens",
               "timestamp": f"{m.replace(day=10).isoformat()}T12:00:00Z",
               "quantity": "1000", "dimensions": {"model": "gpt-4"}}
              for i, m in enumerate(months[:-1])]
    async with api.http("crm") as crm:
        assert (await crm.post("/v1/contracts", json=contract)).status_code == 201
    async with api.http("usage") as usage:
        r = await usage.post("/v1/usage", json={"events": events})
        assert r.status_code in (200, 202), r.text
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    async with api.http("crm") as crm:
        while True:
            r = await crm.get("/v1/invoices", params={"contract": cid})
            finalized = [i for i in r.json()["invoices"] if i["number"]]
            if len(finalized) >= months_back:
                return cid, finalized
            assert loop.time() < deadline, r.text
            await asyncio.sleep(0.5)


async def test_void_over_http_through_the_workflow_then_the_ledger(
    api: ApiServer, worker: None
) -> None:
    cid, invoices = await _contract(api)
    n1, n2 = invoices[0]["number"], invoices[1]["number"]
    async with api.http("ops") as ops:
        voided = await ops.post(f"/v1/invoices/{n1}/void", json={"id": "v-1"})
        assert voided.status_code == 200, voided.text
        body = voided.json()
        assert (body["invoice_status"], body["invoice_number"], body["recorded_via"]) == (
            "void", n1, "workflow")
        again = await ops.post(f"/v1/invoices/{n1}/void", json={"id": "v-1"})
        assert again.json() == body
        conflict = problem(await ops.post(f"/v1/invoices/{n1}/void",
                                          json={"id": "v-1", "reissue": True}), 409)
        assert conflict["type"].endswith("correction-conflict") and fields(conflict) == ["id"]
        twice = problem(await ops.post(f"/v1/invoices/{n1}/void", json={"id": "v-2"}), 409)
        assert fields(twice) == ["path.number"] and "void" in twice["errors"][0]["reason"]
        pay_void = problem(await ops.post(f"/v1/invoices/{n1}/payments",
                                          json={"amount": "1.00", "payment_id": "p"}), 409)
        assert "void" in pay_void["detail"]
        assert (await ops.post(f"/v1/invoices/{n2}/payments",
                               json={"amount": invoices[1]["total"],
                                     "payment_id": "wire-2"})).status_code == 200
        paid = problem(await ops.post(f"/v1/invoices/{n2}/void", json={"id": "v-3"}), 409)
        assert fields(paid) == ["path.number"]
        assert "credit it instead" in paid["errors"][0]["reason"]
        missing_id = problem(await ops.post(f"/v1/invoices/{n2}/void", json={}), 422)
        assert fields(missing_id) == ["id"]
        state = (await ops.get(f"/v1/contracts/{cid}")).json()
    assert [i["status"] for i in state["invoices"] if i["number"]][:2] == ["void", "paid"]
    assert (await counts(api.deps.engine, "corrections"))["corrections"] == 1

    # After the workflow has closed, the ledger takes corrections with the same rules.
    await api.client.get_workflow_handle(f"contract:{cid}").terminate("test: closed workflow")
    cli = await run_cli(api, ["invoice", "void", n1, "--id", "v-1", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["recorded_via"] == "ledger"  # the first answer, again
    refused = await run_cli(api, ["invoice", "void", n2, "--id", "v-4", "--json"])
    assert refused.exit_code == 4, refused.output
    assert fields(json.loads(refused.stdout)) == ["path.number"]
    assert await ledger_problems(api.deps.engine, cid) == []


async def test_credit_notes_over_http_and_the_cli(api: ApiServer, worker: None) -> None:
    cid, invoices = await _contract(api)
    n1, n2 = invoices[0]["number"], invoices[1]["number"]
    async with api.http("ops") as ops:
        r = await ops.post(f"/v1/invoices/{n1}/credit-notes", json={
            "id": "cn-1", "reason": "billing_error", "lines": [{"line": 1, "amount": "10.00"}]})
        assert r.status_code == 200, r.text
        note = r.json()["credit_note"]
        assert (note["number"], note["total"], note["invoice_number"]) == (
            "CN-000001", "10.00", n1)
        assert note["allocation"] == {"credits_returned": "0.00", "outstanding_reduced": "10.00",
                                      "refunded": "0.00", "customer_credit": "0.00"}
        over = problem(await ops.post(f"/v1/invoices/{n1}/credit-notes", json={
            "id": "cn-2", "reason": "billing_error", "lines": [{"line": 1, "amount": "20.01"}]}),
            422)
        assert fields(over) == ["lines[0].amount"]
        both = problem(await ops.post(f"/v1/invoices/{n1}/credit-notes", json={
            "id": "cn-3", "reason": "other", "amount": "1.00",
            "lines": [{"line": 1, "amount": "1.00"}]}), 422)
        assert both["errors"]
        bad_reason = problem(await ops.post(f"/v1/invoices/{n1}/credit-notes", json={
            "id": "cn-4", "reason": "because", "amount": "1.00"}), 422)
        assert fields(bad_reason) == ["reason"]
        assert (await ops.post(f"/v1/invoices/{n2}/void", json={"id": "v"})).status_code == 200
        on_void = problem(await ops.post(f"/v1/invoices/{n2}/credit-notes", json={
            "id": "cn-5", "reason": "other", "amount": "1.00"}), 409)
        assert fields(on_void) == ["path.number"]
        listed = (await ops.get("/v1/credit-notes", params={"contract": cid})).json()
        assert [n["number"] for n in listed["credit_notes"]] == ["CN-000001"]
        shown = (await ops.get("/v1/credit-notes/CN-000001")).json()
        assert shown == note
        problem(await ops.get("/v1/credit-notes/CN-999999"), 404)
        inv = (await ops.get(f"/v1/invoices/{n1}")).json()
        assert (inv["credited"], inv["outstanding"]) == ("10.00", "520.00")
    cli = await run_cli(api, ["invoice", "credit", n1, "--id", "cn-6", "--reason", "goodwill",
                              "--line", "2=20.00", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["credit_note"]["number"] == "CN-000002"
    table = await run_cli(api, ["credit-note", "list", "--contract", cid])
    assert table.exit_code == 0 and "CN-000002" in table.stdout
    show = await run_cli(api, ["credit-note", "show", "CN-000002"])
    assert show.exit_code == 0 and "goodwill" in show.stdout
    bad = await run_cli(api, ["invoice", "credit", n1, "--id", "cn-7", "--reason", "other",
                              "--line", "two=1"])
    assert bad.exit_code == 2
    assert await ledger_problems(api.deps.engine, cid) == []
