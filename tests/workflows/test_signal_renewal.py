"""A renewal sent by signal (ops' `temporal workflow signal`, no answer) continues
as new and the contract keeps billing and answering, on both servers.

The 2,000-example lifecycle fuzz saw the time-skipping server stop advancing
after some signal renewals (bench/RESULTS.md section 5) and now sends renewals as
updates; this keeps the signal path itself covered, on the real dev server too.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from models.amendments import parse_amendment
from tests.support.scenario import ContractRun, contract_doc, event_type_counts
from workflows.contract import ContractWorkflow


@pytest.mark.parametrize("server", ["time-skipping", "dev"])
async def test_a_renewal_by_signal_continues_as_new_and_keeps_running(
    server: str, ts_env: WorkflowEnvironment, dev_temporal_env: WorkflowEnvironment,
    db: AsyncEngine,
) -> None:
    env = ts_env if server == "time-skipping" else dev_temporal_env
    now = await env.get_current_time()
    starts = now.date().replace(day=1)
    doc = contract_doc(id=f"c-signal-{server}", starts_on=starts.isoformat(), term_months=2)
    async with ContractRun(env, db, doc) as run:
        assert run.handle is not None
        first_run = (await run.handle.describe()).run_id
        await run.handle.signal(ContractWorkflow.amend_signal, parse_amendment(
            {"id": "renew", "kind": "extend_term", "term_months": 2}))
        latest = first_run
        for _ in range(120):
            latest = (await env.client.get_workflow_handle(run.handle.id).describe()).run_id
            if latest != first_run:
                break
            await asyncio.sleep(0.25)
        after = await asyncio.wait_for(
            run.amend({"id": "g-after", "kind": "grant_credits", "credits": "5.00"}), 60)
        if server == "time-skipping":
            await asyncio.wait_for(run.advance_to(now + timedelta(days=130)), 120)
        state = await asyncio.wait_for(run.state(), 30)
        invoices = [i["key"] for i in await run.invoices()]
        counts = await event_type_counts(env, run.handle.id)
    assert latest != first_run, "the renewal did not continue as new"
    assert after.status == "applied"
    assert state.terms.term_end.isoformat() == f"{starts.year + (starts.month + 3) // 12}-" \
        f"{(starts.month + 3) % 12 + 1:02d}-01"
    if server == "time-skipping":
        assert len(invoices) == 4 and state.status == "ended", (invoices, state.status)
    assert "WORKFLOW_TASK_FAILED" not in counts, counts
