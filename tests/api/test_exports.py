"""Finance exports over the acme example: the journal adds up, the roll-forward
closes to the deferred balance, the credit ledger explains the credits."""

from __future__ import annotations

import csv
import io
import itertools
import json
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.ledger_reports import revenue_summary
from tests.api.helpers import ApiServer, problem, run_cli
from tests.api.test_documents import _run_acme

D = Decimal


async def test_acme_journal_and_deferred_revenue(
    api: ApiServer, ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    await _run_acme(ts_env, db)
    async with db.connect() as conn:
        revenue = await revenue_summary(conn, "acme-2027", "USD")
    async with api.http("ops") as http:
        whole = (await http.get("/v1/journal")).json()
        # Totals are the sums of the entries, per account and in all; debits = credits.
        sums: dict[str, list[Decimal]] = {}
        for e in whole["entries"]:
            assert sum(D(ln["debit"]) for ln in e["lines"]) == sum(
                D(ln["credit"]) for ln in e["lines"])
            for ln in e["lines"]:
                pair = sums.setdefault(ln["account"], [D(0), D(0)])
                pair[0] += D(ln["debit"])
                pair[1] += D(ln["credit"])
        assert {t["account"]: [D(t["debit"]), D(t["credit"])] for t in whole["totals"]} == sums
        assert D(whole["debit"]) == D(whole["credit"]) == sum(p[0] for p in sums.values())
        assert D(whole["totals"][[t["account"] for t in whole["totals"]].index(
            "usage_revenue")]["credit"]) == D(revenue.usage_from_credits) + D(revenue.usage_billed)
        # A date range takes exactly the entries booked in it (inclusive).
        q1 = (await http.get("/v1/journal", params={"from": "2027-01-01",
                                                    "to": "2027-03-31"})).json()
        assert q1["entries"] and all("2027-01-01" <= e["booked_on"] <= "2027-03-31"
                                     for e in q1["entries"])
        assert len(q1["entries"]) == len([e for e in whole["entries"]
                                          if e["booked_on"] <= "2027-03-31"])
        # CSV: one row per line, the same figures.
        as_csv = await http.get("/v1/journal", params={"format": "csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert len(rows) == sum(len(e["lines"]) for e in whole["entries"])
        assert sum(D(r["debit"]) for r in rows) == D(whole["debit"])
        same = await http.get("/v1/journal", headers={"Accept": "text/csv"})
        assert same.text == as_csv.text

        deferred = (await http.get("/v1/deferred-revenue")).json()
        months = deferred["months"]
        assert months[0]["month"] == "2027-01" and D(months[0]["opening"]) == 0
        assert D(months[0]["invoiced"]) == D("100000.00")
        for prev, nxt in itertools.pairwise(months):
            assert nxt["opening"] == prev["closing"]
        for m in months:
            assert D(m["closing"]) == (D(m["opening"]) + D(m["invoiced"]) - D(m["recognized"])
                                       - D(m["breakage"]) - D(m["credited"]))
        # Closes to the deferred balance and agrees with the journal to the cent.
        assert D(months[-1]["closing"]) == D(revenue.deferred_balance) == D(
            deferred["deferred_balance"]["acme-2027"])
        assert sum(D(m["recognized"]) for m in months) == D(revenue.usage_from_credits)
        assert sum(D(m["breakage"]) for m in months) == D(revenue.breakage)
        ranged = (await http.get("/v1/deferred-revenue",
                                 params={"from": "2027-04", "to": "2027-06"})).json()["months"]
        assert [m["month"] for m in ranged] == ["2027-04", "2027-05", "2027-06"]
        assert ranged[0]["opening"] == next(m for m in months
                                            if m["month"] == "2027-03")["closing"]
        problem(await http.get("/v1/deferred-revenue", params={"from": "2027-13"}), 422)
        problem(await http.get("/v1/journal", params={"from": "2027-02-01",
                                                      "to": "2027-01-01"}), 422)

        credits = (await http.get("/v1/contracts/acme-2027/credits")).json()
        grant = credits["grants"][0]
        assert (grant["grant_id"], D(grant["credits"]), D(grant["balance"])) == (
            "commitment", D("120000.00"), D(0))
        kinds = [m["kind"] for m in credits["movements"]]
        assert kinds[0] == "grant" and kinds[-1] == "expire" and "consume" in kinds
        assert D(grant["breakage"]) == D(revenue.breakage)
        problem(await http.get("/v1/contracts/nope/credits"), 404)
        problem(await http.get("/v1/journal", headers={
            "Authorization": f"Bearer {api.keys['crm']}"}), 403)

    cli = await run_cli(api, ["journal", "export", "--from", "2027-01-01", "--to", "2027-03-31",
                              "--format", "json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["entries"] == q1["entries"]
    cli = await run_cli(api, ["revenue", "deferred", "--json"])
    assert json.loads(cli.output)["months"] == months
    cli = await run_cli(api, ["contract", "show", "acme-2027", "--credits", "--json"])
    assert json.loads(cli.output)["credit_history"]["summary"] == credits["summary"]
