"""What ops see in the Temporal UI: search attributes, summaries, details.

Runs on the real dev server (the time-skipping server has no visibility).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from models.periods import add_months
from tests.support.scenario import ContractRun, contract_doc
from workflows import search_attributes as sa


async def test_contracts_are_searchable_by_their_business_attributes(
    dev_temporal_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    env = dev_temporal_env
    today = datetime.now(UTC).date()
    start = add_months(today.replace(day=1), -2)
    doc = contract_doc(id="vis-1", customer={"id": "vis-cust", "name": "Visible Inc"},
                       starts_on=start.isoformat(), usage_grace_hours="0")
    async with ContractRun(env, db, doc) as run:
        assert run.handle is not None
        for _ in range(100):  # the two past periods close right away
            state = await run.state()
            if len(state.invoices) == 2:
                break
            await asyncio.sleep(0.1)
        query = ("CustomerId = 'vis-cust' AND PlanKey = 'pro' AND ContractStatus = 'active' "
                 "AND BillingCycle = 'monthly' AND HasOverdueInvoice = false")
        found = []
        for _ in range(100):  # visibility is eventually consistent
            found = [w async for w in env.client.list_workflows(query)]
            if found:
                break
            await asyncio.sleep(0.1)
        desc = await run.handle.describe()
        summary, details = await desc.static_summary(), await desc.static_details()
        metadata = await run.handle.query("__temporal_workflow_metadata")
        history = await run.handle.fetch_history()

    assert [w.id for w in found] == ["contract:vis-1"]
    attrs = desc.typed_search_attributes
    assert attrs.get(sa.NEXT_BILLING_AT) == datetime.combine(
        add_months(start, 3), datetime.min.time(), tzinfo=UTC)
    assert attrs.get(sa.CREDIT_BALANCE) == 0.0
    assert summary == f"Visible Inc · pro · {start} → {add_months(start, 12)}"
    assert "**Customer:** Visible Inc (`vis-cust`)" in (details or "")
    current = metadata.current_details
    assert "**Status:** active" in current
    assert f"**Next boundary:** {add_months(start, 3)}" in current
    summaries = [e.user_metadata.summary.data.decode() for e in history.events
                 if e.HasField("user_metadata") and e.user_metadata.HasField("summary")]
    assert any("rate usage" in s for s in summaries)
    assert any("sleep until" in s for s in summaries), summaries
    assert timedelta(0) <= datetime.now(UTC) - desc.start_time < timedelta(minutes=5)


async def test_commitment_progress_is_visible_and_searchable(
    dev_temporal_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    env = dev_temporal_env
    today = datetime.now(UTC).date()
    start = add_months(today.replace(day=1), -2)
    doc = contract_doc(id="vis-min", customer={"id": "vis-min", "name": "Short Inc"},
                       starts_on=start.isoformat(), usage_grace_hours="0",
                       minimum_commitment={"amount": "12000.00", "per": "term"},
                       rate_overrides=[{"meter": "tokens", "minimum_amount": "100.00"}])
    async with ContractRun(env, db, doc) as run:
        assert run.handle is not None
        for _ in range(100):  # the two past periods close right away
            state = await run.state()
            if len(state.invoices) == 2:
                break
            await asyncio.sleep(0.1)
        query = "CustomerId = 'vis-min' AND CommitmentShortfall > 11000"
        found = []
        for _ in range(100):  # visibility is eventually consistent
            found = [w async for w in env.client.list_workflows(query)]
            if found:
                break
            await asyncio.sleep(0.1)
        desc = await run.handle.describe()
        details = await desc.static_details()
        metadata = await run.handle.query("__temporal_workflow_metadata")

    assert [w.id for w in found] == ["contract:vis-min"]
    # two tokens minimums (100.00 each) are the spend so far
    assert desc.typed_search_attributes.get(sa.COMMITMENT_SHORTFALL) == 11800.0
    assert state.commitment is not None and state.commitment.spend == 200
    assert "**Minimum commitment:** 12000.00 USD per term" in (details or "")
    assert "**Spend limits per period:** tokens ≥ 100.00 USD" in (details or "")
    assert ("**Minimum commitment (term):** spent 200.00 of 12,000.00 USD, 10 months left"
            in metadata.current_details)
    last = add_months(start, 1).isoformat()
    assert (f"**Spend limits on usage:{last}:** tokens minimum 100.00"
            in metadata.current_details)
