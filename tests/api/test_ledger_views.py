"""The ledger behind an ended contract, through the CLI and HTTP: credit history,
revenue, payments and reminders, the catalog, and the tables at 80 and 120 columns.

The worked example (acme, SPEC.md) runs its whole term on a time-skipping server
into the API's database; its workflow is not on the API's Temporal server, so
the API reads the contract from the ledger, as it does once a workflow closed.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from models.catalog import load_catalog_file
from models.contract import load_contract_file
from models.formatting import money_amount
from models.timeline import load_timeline_file
from models.usage import parse_usage_jsonl
from tests.api.helpers import ApiServer, run_cli
from tests.support.paths import ACME
from tests.support.snapshots import assert_snapshot
from worker.simulate import SimulationInput, contract_report, simulate_on

EXPECTED = json.loads((ACME / "expected.json").read_text())


@pytest.fixture
async def acme(api: ApiServer, db: AsyncEngine, ts_env: WorkflowEnvironment) -> dict[str, Any]:
    """Acme's whole term in the API's database; returns the ledger's report."""
    events, problems = parse_usage_jsonl((ACME / "usage.jsonl").read_text())
    assert problems == []
    await simulate_on(ts_env, db, SimulationInput(
        catalog=load_catalog_file(ACME / "catalog.yaml"),
        contract=load_contract_file(ACME / "contract.yaml"), usage=events,
        timeline=load_timeline_file(ACME / "timeline.yaml")))
    async with db.connect() as conn:
        return await contract_report(conn, "acme-2027", "USD")


async def _json(api: ApiServer, args: list[str]) -> Any:
    result = await run_cli(api, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_credit_history_and_revenue_of_an_ended_contract_equal_the_ledger(
    api: ApiServer, acme: dict[str, Any]
) -> None:
    shown = await _json(api, ["contract", "show", "acme-2027", "--all"])
    assert shown["status"] == "ended" and shown["source"] == "database"
    # The same figures as the ledger's report (and the example) ...
    assert shown["revenue_summary"]["revenue"] == acme["revenue"] == EXPECTED["revenue"]
    assert shown["revenue_summary"]["credits"] == acme["credits"] == EXPECTED["credits"]
    history = shown["credit_history"]
    assert history["summary"] == acme["credits"]
    # ... and where they come from: one grant, what it paid, what expired as breakage.
    [grant] = history["grants"]
    assert (grant["grant_id"], grant["invoice_key"]) == ("commitment", "commitment:2027-01-01")
    assert {k: Decimal(grant[k]) for k in ("credits", "price", "consumed", "expired", "balance",
                                           "recognized", "breakage")} == {
        "credits": Decimal("120000"), "price": Decimal("100000"),
        "consumed": Decimal("110000"), "expired": Decimal("10000"), "balance": 0,
        "recognized": Decimal("91666.66"), "breakage": Decimal("8333.34")}
    numbers = {i["key"]: i["number"] for i in (await _json(
        api, ["invoice", "list", "--contract", "acme-2027"]))["invoices"]}
    moves = [(m["on"], m["kind"], m["invoice_number"], Decimal(m["credits"]),
              Decimal(m["balance"])) for m in history["movements"]]
    assert moves == [
        ("2027-01-01", "grant", numbers["commitment:2027-01-01"], Decimal("120000"),
         Decimal("120000")),
        ("2027-04-01", "consume", numbers["usage:2027-01-01"], Decimal("-25000"),
         Decimal("95000")),
        ("2027-07-01", "consume", numbers["usage:2027-04-01"], Decimal("-43000"),
         Decimal("52000")),
        ("2027-10-01", "consume", numbers["usage:2027-07-01"], Decimal("-32000"),
         Decimal("20000")),
        ("2028-01-01", "consume", numbers["usage:2027-10-01"], Decimal("-10000"),
         Decimal("10000")),
        ("2028-01-01", "expire", None, Decimal("-10000"), Decimal("0")),
    ]
    assert Decimal(history["movements"][-1]["breakage"]) == Decimal("8333.34")

    # Payments and reminders per invoice: Q1 was paid four days late.
    by_key = {c["invoice_key"]: c for c in shown["collection"]["invoices"]}
    q1 = by_key["usage:2027-01-01"]
    assert [(p["amount"], p["received_on"]) for p in q1["payments"]] == [
        ("1500.00", "2027-05-20")]
    assert [(r["step"], r["on"]) for r in q1["reminders"]] == [
        ("overdue", "2027-05-17"), ("reminder_1", "2027-05-17")]
    assert by_key["usage:2027-10-01"]["payments"] == []
    assert [r["step"] for r in by_key["usage:2027-10-01"]["reminders"]] == [
        "overdue", "reminder_1", "reminder_7", "reminder_30"]
    one = await _json(api, ["invoice", "show", numbers["usage:2027-01-01"]])
    assert one["collection"] == q1

    # In the table: the breakage is there in words and money.
    table = (await run_cli(api, ["contract", "show", "acme-2027", "--credits"])).stdout
    assert re.search(r"breakage revenue\s+8,333\.34\s+USD", table), table
    assert re.search(r"expired\s+10,000\.00\s+USD", table), table


def _money_strings(report: dict[str, Any]) -> set[str]:
    """Every amount of the report as the tables show it."""
    values: set[str] = set()
    for inv in report["invoices"]:
        for k in ("subtotal", "credits_applied", "total"):
            values.add(money_amount(Decimal(inv[k]), "USD"))
        values |= {money_amount(Decimal(ln["amount"]), "USD") for ln in inv["lines"]}
    return values


@pytest.mark.parametrize("columns", [80, 120])
async def test_tables_at_80_and_120_columns(
    api: ApiServer, acme: dict[str, Any], columns: int
) -> None:
    numbers = {i["key"]: i["number"] for i in (await _json(
        api, ["invoice", "list", "--contract", "acme-2027"]))["invoices"]}
    commands = {
        "invoice-list": ["invoice", "list"],
        "contract-show-all": ["contract", "show", "acme-2027", "--all"],
        "invoice-show-q1": ["invoice", "show", numbers["usage:2027-01-01"]],
        "invoice-show-commitment": ["invoice", "show", numbers["commitment:2027-01-01"]],
        "contract-list": ["contract", "list"],
        "catalog-show": ["catalog", "show"],
    }
    amounts = _money_strings(acme)
    seen: set[str] = set()
    for name, args in commands.items():
        result = await run_cli(api, args, columns=columns)
        assert result.exit_code == 0, result.output
        text = result.stdout
        assert max(len(ln.rstrip()) for ln in text.splitlines()) <= columns, text
        # No amount is split: each one that appears, appears whole on one line.
        for line in text.splitlines():
            for token in re.findall(r"[\d,]+\.\d\d", line):
                assert re.fullmatch(r"\d{1,3}(,\d{3})*\.\d\d", token), (token, line)
                seen.add(token)
        assert_snapshot(f"{name}.{columns}.txt", text)
    assert {"100,000.00", "26,500.00", "25,000.00", "1,500.00"} <= seen & amounts
