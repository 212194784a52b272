"""History stays bounded: continue-as-new, and amendment ids survive it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from models.periods import add_months
from tests.support.scenario import ContractRun, at, contract_doc, event


async def test_a_monthly_contract_year_stays_under_200_history_events(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """A year of a typical monthly contract: usage, fees, every invoice paid."""
    async with ContractRun(ts_env, db, contract_doc(commitment={"amount": "1000.00"})) as run:
        start = at("2027-01-01")
        await run.send_usage(
            [event(f"u{m}", start + timedelta(days=31 * m + 3), "50000") for m in range(12)]
        )
        await run.advance_to(at("2027-01-05"))
        await run.pay("commitment:2027-01-01", "1000.00")
        for m in range(1, 13):
            boundary = add_months(start.date(), m)
            await run.advance_to(at(boundary + timedelta(days=5)))
            inv = await run.invoice(f"usage:{add_months(start.date(), m - 1).isoformat()}")
            if inv["status"] != "paid":
                await run.pay(inv["key"], inv["total"])
        events = await run.history_length()
        state = await run.state()
    assert state.status == "ended"
    assert all(i.status == "paid" for i in state.invoices)
    assert events < 200, events


async def test_amendment_resent_after_continue_as_new_answers_as_the_first_time(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Issue 11 case 13: the same id answers as the first time with the same
    content, and is a conflict with other content, also in a later run."""
    discount = {
        "id": "crm-amend-1",
        "kind": "rate_override",
        "override": {"meter": "tokens", "discount_percent": "10"},
    }
    async with ContractRun(ts_env, db, contract_doc(term_months=14)) as run:
        await run.advance_to(at("2027-01-10"))
        first = await run.amend(discount)
        await run.advance_to(at("2028-01-01", 2))  # 12 periods closed: a new run
        assert run.handle is not None
        latest = await ts_env.client.get_workflow_handle(run.handle.id).fetch_history()
        started = latest.events[0].workflow_execution_started_event_attributes
        resend = await run.amend(discount)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await run.amend(
                {**discount, "override": {"meter": "tokens", "discount_percent": "90"}}
            )
        state = await run.state()
        recorded = await run.scalar("SELECT count(*) FROM amendments")
    assert first.status == "applied"
    assert started.continued_execution_run_id, "the workflow continued as new"
    assert (resend.status, resend.effective) == ("applied", first.effective)
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "AmendmentConflict"
    assert "id" in str(cause)
    assert state.applied_amendment_ids == ["crm-amend-1"]
    assert [o.discount_percent for o in state.terms.rate_overrides] == [10]
    assert recorded == 1


async def test_a_renewal_continues_as_new_and_bills_the_extra_months(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-02-10"))
        result = await run.amend({"id": "renew", "kind": "extend_term", "term_months": 2})
        await run.advance_to(at("2027-05-02"))
        assert run.handle is not None
        latest = await ts_env.client.get_workflow_handle(run.handle.id).fetch_history()
        started = latest.events[0].workflow_execution_started_event_attributes
        invoices = await run.invoices()
        state = await run.state()
    assert result.status == "applied"
    assert started.continued_execution_run_id, "the renewal started a new run"
    assert [i["key"] for i in invoices] == [f"usage:2027-0{m}-01" for m in range(1, 5)]
    assert state.terms.term_end.isoformat() == "2027-05-01"
    assert state.status == "ended"
