"""Contract lifecycles on the time-skipping server: real workflow, real ledger."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.ledger_reports import unbilled_usage
from tests.support.scenario import PRO_CATALOG, ContractRun, at, contract_doc, event, lines_of


async def test_monthly_term_issues_twelve_invoices_in_order(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc()) as run:
        await run.send_usage(
            [
                event("e1", "2027-01-10T10:00:00Z", "100000"),  # 3000.00
                event("e2", "2027-02-01T00:00:00Z", "1000", meter="requests", region="eu"),  # 1.20
                event(
                    "e3", "2027-01-31T23:59:59Z", "1", meter="requests", region="us"
                ),  # 0.001 -> 0.00
            ]
        )
        await run.advance_to(at("2028-01-01", 2))
        invoices = await run.invoices()
        state = await run.state()

    assert [i["key"] for i in invoices] == [f"usage:2027-{m:02d}-01" for m in range(1, 13)]
    assert [i["number"] for i in invoices] == [f"INV-{n:06d}" for n in range(1, 13)]
    jan, feb = invoices[0], invoices[1]
    assert lines_of(jan) == [
        ("tokens", (("model", "gpt-4"),), Decimal("100000"), Decimal("3000.00")),
        ("requests", (("region", "us"),), Decimal("1"), Decimal("0.00")),
    ]
    assert lines_of(jan, "fee") == [("platform", (), None, Decimal("500.00"))]
    assert (jan["total"], jan["issued_on"], jan["due_on"]) == (
        "3500.00",
        "2027-02-01",
        "2027-03-03",
    )
    assert feb["total"] == "501.20"
    assert all(i["total"] == "500.00" for i in invoices[2:])
    # Nobody paid: everything past its due date is overdue, the flag is up.
    assert jan["status"] == "overdue" and invoices[-1]["status"] == "open"
    assert state.status == "ended"
    assert state.has_overdue_invoice


async def test_start_anchor_on_january_31_clamps_to_month_ends(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(starts_on="2027-01-31", term_months=4)) as run:
        await run.advance_to(at("2027-06-01"))
        invoices = await run.invoices()
    assert [(i["period"]["start"], i["period"]["end"]) for i in invoices] == [
        ("2027-01-31", "2027-02-28"),
        ("2027-02-28", "2027-03-31"),
        ("2027-03-31", "2027-04-30"),
        ("2027-04-30", "2027-05-31"),
    ]
    assert all(i["total"] == "500.00" for i in invoices)


async def test_calendar_anchor_prorates_first_and_last_periods(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(starts_on="2027-01-15", term_months=3, billing_anchor="calendar")
    async with ContractRun(ts_env, db, doc) as run:
        await run.advance_to(at("2027-04-16"))
        invoices = await run.invoices()
        state = await run.state()
    assert [(i["period"]["start"], i["period"]["end"], i["total"]) for i in invoices] == [
        ("2027-01-15", "2027-02-01", "274.19"),  # 500 x 17/31
        ("2027-02-01", "2027-03-01", "500.00"),
        ("2027-03-01", "2027-04-01", "500.00"),
        ("2027-04-01", "2027-04-15", "233.33"),  # 500 x 14/30
    ]
    assert state.status == "ended"


async def test_unpriced_usage_holds_the_invoice_until_an_amendment_prices_it(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=3)) as run:
        await run.send_usage(
            [
                event("e1", "2027-01-05T00:00:00Z", "1000", model="claude"),  # no rate-card entry
                event("e2", "2027-01-06T00:00:00Z", "1000", model="gpt-4"),
            ]
        )
        await run.advance_to(at("2027-02-01", 3))
        held = await run.state()
        held_status = await run.scalar(
            "SELECT status FROM invoices WHERE key = 'usage:2027-01-01' AND number IS NULL"
        )
        result = await run.amend(
            {
                "id": "price-claude",
                "kind": "rate_override",
                "override": {"meter": "tokens", "match": {"model": "claude"}, "unit_price": "0.01"},
            }
        )
        await run.advance_to(at("2027-02-01", 4))
        resumed = await run.state()
        jan = await run.invoice("usage:2027-01-01")

    assert held.status == "needs_attention"
    assert held.attention is not None and "claude" in held.attention
    assert held_status == "needs_attention"
    assert result.status == "applied"
    assert resumed.status == "active"
    assert jan["number"] == "INV-000001"
    assert lines_of(jan) == [
        ("tokens", (("model", "claude"),), Decimal("1000"), Decimal("10.00")),
        ("tokens", (("model", "gpt-4"),), Decimal("1000"), Decimal("30.00")),
    ]
    assert jan["total"] == "540.00"


def _catalog_without(entry_model: str) -> dict[str, object]:
    catalog = copy.deepcopy(PRO_CATALOG)
    meters = catalog["meters"]
    meters[0]["rate_card"] = [
        e for e in meters[0]["rate_card"] if e["match"] != {"model": entry_model}
    ]
    return catalog


async def test_usage_after_the_final_invoice_is_recorded_as_unbilled(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=1)) as run:
        await run.send_usage([event("on-time", "2027-01-10T00:00:00Z", "1000")])
        await run.advance_to(at("2027-02-01", 3))
        await run.send_usage([event("too-late", "2027-01-20T00:00:00Z", "500"),
                              event("after-term", "2027-02-05T00:00:00Z", "500")])
        async with db.connect() as conn:
            unbilled = await unbilled_usage(conn, "c-1")
        invoices = await run.invoices()
    assert [i["total"] for i in invoices] == ["530.00"]
    assert unbilled.events == 1  # inside the term; the February event is outside it
    assert unbilled.first_event_at == at("2027-01-20")


async def test_local_midnight_boundaries_across_a_dst_change(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """New York: March opens at 05:00Z (EST) and closes at 04:00Z (EDT)."""
    doc = contract_doc(starts_on="2027-03-01", term_months=2, timezone="America/New_York")
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([
            event("before", "2027-03-01T04:59:59Z", "1000"),  # Feb 28 local: before the term
            event("march", "2027-04-01T03:30:00Z", "1000"),   # Mar 31 23:30 local: March
            event("april", "2027-04-01T04:00:00Z", "2000"),   # Apr 1 00:00 local: April
        ])
        await run.advance_to(at("2027-04-01", 4))  # the boundary, before the grace window
        state = await run.state()
        await run.advance_to(at("2027-05-01", 6))
        invoices = await run.invoices()
    assert state.next_boundary == datetime(2027, 4, 1, 4, tzinfo=UTC)
    assert [(i["key"], i["issued_on"], i["total"]) for i in invoices] == [
        ("usage:2027-03-01", "2027-04-01", "530.00"),
        ("usage:2027-04-01", "2027-05-01", "560.00"),
    ]
