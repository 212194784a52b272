"""The floor of the lifecycle bench: a workflow with billow's timers and nothing else.

One run per contract: a first local activity (billow registers the
contract), then for every period a timer to the instant billow would close it
(``max(period end, workflow start) + grace``, as `ContractState.close_at`)
followed by one local activity that commits one trivial row. Same dev server,
same worker settings as billow's worker; what billow costs above this is
billow's own work. Not billow code: it lives with the benchmarks.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.common import RetryPolicy

# Like workflows/contract.py: what the sandbox would otherwise re-import for
# every workflow run (SQLAlchemy is heavy) is passed through.
with workflow.unsafe.imports_passed_through():
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncEngine

SKELETON_TABLE = """
CREATE TABLE IF NOT EXISTS bench_skeleton_steps (
    contract_id text NOT NULL,
    step integer NOT NULL,
    close_at timestamptz NOT NULL,
    done_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (contract_id, step)
)
"""


class SkeletonInput(BaseModel):
    contract_id: str
    period_ends: list[datetime]  # UTC instants, one per period
    grace_seconds: int


class SkeletonStep(BaseModel):
    contract_id: str
    step: int  # 0: registration, 1..n: the periods
    close_at: datetime


class SkeletonActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @activity.defn(name="bench_skeleton_step")
    async def step(self, req: SkeletonStep) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO bench_skeleton_steps (contract_id, step, close_at) "
                    "VALUES (:cid, :step, :close) ON CONFLICT DO NOTHING"
                ),
                {"cid": req.contract_id, "step": req.step, "close": req.close_at},
            )


_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))


@workflow.defn(name="BenchSkeletonWorkflow")
class SkeletonWorkflow:
    @workflow.run
    async def run(self, inp: SkeletonInput) -> None:
        started = workflow.info().start_time
        await self._step(inp.contract_id, 0, started)
        grace = timedelta(seconds=inp.grace_seconds)
        for i, end in enumerate(inp.period_ends, start=1):
            close = max(end, started) + grace
            delay = close - workflow.now()
            if delay > timedelta(0):
                await workflow.sleep(delay)
            await self._step(inp.contract_id, i, close)

    async def _step(self, cid: str, step: int, close: datetime) -> None:
        await workflow.execute_local_activity(
            "bench_skeleton_step",
            SkeletonStep(contract_id=cid, step=step, close_at=close),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
        )
