"""Per-meter minimum and maximum spend through the real workflow and ledger (SPEC 12)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.support.scenario import PRO_CATALOG, ContractRun, at, contract_doc, event


def limited_catalog() -> dict[str, Any]:
    catalog = copy.deepcopy(PRO_CATALOG)
    catalog["plans"][0]["meter_limits"] = [{"meter": "requests", "maximum_amount": "100.00"}]
    return catalog


def _lines(invoice: dict[str, Any]) -> list[tuple[str, str | None, Decimal, str | None]]:
    return [(ln["kind"], ln.get("meter") or ln.get("fee"), Decimal(ln["amount"]),
             ln.get("period_start")) for ln in invoice["lines"]]


async def test_minimum_and_maximum_lines_credits_late_usage_and_a_partial_period(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(
        term_months=3,
        rate_overrides=[{"meter": "tokens", "minimum_amount": "50.00"}],
        credit_grants=[{"id": "promo", "credits": "200.00"}],
    )
    async with ContractRun(ts_env, db, doc, catalog=limited_catalog()) as run:
        await run.send_usage([
            event("t1", "2027-01-10T00:00:00Z", "1000"),  # tokens 30.00, under 50.00
            event("r1", "2027-01-11T00:00:00Z", "150000", meter="requests"),  # 150.00, capped
            event("r3", "2027-03-10T00:00:00Z", "60000", meter="requests"),  # 60.00
        ])
        await run.advance_to(at("2027-02-05"))
        # Late January usage: the cap is reached already, the minimum not yet.
        await run.send_usage([
            event("t-late", "2027-01-20T00:00:00Z", "500"),  # 15.00
            event("r-late", "2027-01-20T00:00:00Z", "10000", meter="requests"),  # 10.00
        ])
        await run.amend({"id": "end", "kind": "terminate", "effective": "2027-03-16T00:00:00Z"})
        await run.advance_to(at("2027-04-20"))
        invoices = [i for i in await run.invoices() if i["kind"] == "usage"]
        report = await run.report()

    jan, feb, mar = invoices
    assert _lines(jan) == [
        ("usage", "tokens", Decimal("30.00"), None),
        ("minimum", "tokens", Decimal("20.00"), None),
        ("usage", "requests", Decimal("150.00"), None),
        ("maximum", "requests", Decimal("-50.00"), None),
        ("fee", "platform", Decimal("500.00"), None),
    ]
    assert jan["lines"][1] == {"kind": "minimum", "meter": "tokens", "amount": "20.00"}
    assert feb["lines"][2] == {"kind": "minimum", "meter": "tokens", "amount": "-15.00",
                               "period_start": "2027-01-01", "period_end": "2027-02-01"}
    # credits pay the usage-kind lines, minimum and maximum included: 150.00
    assert (jan["subtotal"], jan["credits_applied"], jan["total"]) == ("650.00", "150.00",
                                                                      "500.00")
    assert _lines(feb) == [
        ("minimum", "tokens", Decimal("50.00"), None),  # no February usage at all
        ("late_usage", "tokens", Decimal("15.00"), "2027-01-01"),
        ("minimum", "tokens", Decimal("-15.00"), "2027-01-01"),  # fills January's minimum
        ("late_usage", "requests", Decimal("10.00"), "2027-01-01"),
        ("maximum", "requests", Decimal("-10.00"), "2027-01-01"),  # January is at its cap
        ("fee", "platform", Decimal("500.00"), None),
    ]
    assert (feb["subtotal"], feb["credits_applied"], feb["total"]) == ("550.00", "50.00",
                                                                      "500.00")
    # Terminated on March 16: 15 of 31 days, limits prorated like the fee.
    assert mar["period"] == {"start": "2027-03-01", "end": "2027-03-16"}
    assert _lines(mar) == [
        ("minimum", "tokens", Decimal("24.19"), None),  # 50.00 x 15/31
        ("usage", "requests", Decimal("60.00"), None),
        ("maximum", "requests", Decimal("-11.61"), None),  # capped at 48.39
        ("fee", "platform", Decimal("241.94"), None),
    ]
    assert (mar["credits_applied"], mar["total"]) == ("0.00", "314.52")
    assert report["credits"]["consumed"] == "200.00"
    # usage revenue: 200.00 from (promotional) credits recognizes 0; billed beyond: 72.58
    assert report["revenue"]["usage_billed"] == "72.58"
