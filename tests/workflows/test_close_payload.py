"""No close request carries the term's history (issue 13): the ledger gives the
invoiced periods, so the 14th close of a term is as small as its first, and the
state a continue-as-new carries holds one invoiced period, not twelve."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from models.operations import ClosePeriodRequest
from tests.support.scenario import ContractRun, at, contract_doc, event, lines_of
from workflows.contract import ContractWorkflowInput


class _CloseRequests(Interceptor):
    """Records every close_period request the worker's activities receive."""

    def __init__(self) -> None:
        self.seen: list[ClosePeriodRequest] = []

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next, self.seen)


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, seen: list[ClosePeriodRequest]) -> None:
        super().__init__(next)
        self.seen = seen

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        self.seen += [a for a in input.args if isinstance(a, ClosePeriodRequest)]
        return await super().execute_activity(input)


async def test_close_requests_carry_no_earlier_periods_and_late_usage_is_still_billed(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    requests = _CloseRequests()
    doc = contract_doc(term_months=14)
    async with ContractRun(ts_env, db, doc, interceptors=[requests]) as run:
        await run.send_usage([event("jan", "2027-01-10T00:00:00Z", "1000")])
        await asyncio.wait_for(run.advance_to(at("2028-01-20")), 120)
        # January 2027 usage arriving a year late is billed on January 2028's invoice.
        await run.send_usage([event("jan-late", "2027-01-31T23:59:59Z", "500")])
        await asyncio.wait_for(run.advance_to(at("2028-03-05")), 120)
        late = lines_of(await run.invoice("usage:2028-01-01"), "late_usage")
        carried = await _continued_as_new_inputs(run)
    assert late == [("tokens", (("model", "gpt-4"),), Decimal(500), Decimal("15.00"))]
    closes = sorted({r.period.start_date: r for r in requests.seen}.values(),
                    key=lambda r: r.period.start_date)
    assert len(closes) == 14
    assert [r.earlier_periods for r in closes[1:]] == [None] * 13
    assert carried, "a 14-month term continues as new after 12 periods"
    states = [c.state for c in carried]
    assert all(s is not None and len(s.invoiced_periods) == 1 for s in states)


async def _continued_as_new_inputs(run: ContractRun) -> list[ContractWorkflowInput]:
    """What each run of the workflow carried into the next one."""
    assert run.handle is not None
    converter = pydantic_data_converter.payload_converter
    inputs: list[ContractWorkflowInput] = []
    run_id: str | None = None  # None: the latest run
    while True:
        history = await run.env.client.get_workflow_handle(
            run.handle.id, run_id=run_id).fetch_history()
        inputs += [converter.from_payloads(e.workflow_execution_continued_as_new_event_attributes
                                           .input.payloads, [ContractWorkflowInput])[0]
                   for e in history.events
                   if e.HasField("workflow_execution_continued_as_new_event_attributes")]
        first = history.events[0].workflow_execution_started_event_attributes
        run_id = first.continued_execution_run_id or None
        if run_id is None:
            return inputs
