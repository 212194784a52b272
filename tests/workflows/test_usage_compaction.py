"""The usage compaction schedule, end to end on the real dev server
(the time-skipping test server has no schedules)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.usage_rollup import utc_midnight
from worker.main import build_worker
from worker.schedules import ensure_compaction_schedule
from workflows.usage_compaction import COMPACTION_SCHEDULE_ID


async def test_the_schedule_folds_closed_days_through_the_worker(
    dev_temporal_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    from prometheus_client import REGISTRY

    def folded_total() -> float:
        return REGISTRY.get_sample_value("billow_usage_events_folded_total") or 0.0

    folded_before = folded_total()
    client = dev_temporal_env.client
    async with db.begin() as conn:
        now = await conn.scalar(text("SELECT now()"))
        today = utc_midnight(now)
        await conn.execute(
            text(
                "INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions)"
                " VALUES ('a', 'c1', 'tokens', :y, 5, '{\"model\": \"x\"}'),"
                " ('b', 'c1', 'tokens', :y2, 7, '{\"model\": \"x\"}'),"
                " ('c', 'c1', 'tokens', :t, 11, '{\"model\": \"x\"}')"
            ),
            {"y": today - timedelta(hours=3), "y2": today - timedelta(hours=2),
             "t": today + timedelta(seconds=1)},
        )
    task_queue = f"compaction-{uuid.uuid4().hex[:8]}"
    # The dev server is shared by the session: a worker process started by
    # another test may have created the schedule already.
    with contextlib.suppress(RPCError):
        await client.get_schedule_handle(COMPACTION_SCHEDULE_ID).delete()
    async with build_worker(client, db, task_queue):
        assert await ensure_compaction_schedule(client, task_queue, timedelta(hours=1))
        handle = client.get_schedule_handle(COMPACTION_SCHEDULE_ID)
        try:
            # A second worker starting leaves the schedule as ops left it.
            assert not await ensure_compaction_schedule(client, task_queue, timedelta(minutes=5))
            desc = await handle.describe()
            assert desc.schedule.spec.intervals[0].every == timedelta(hours=1)
            await handle.trigger()
            folded = None
            for _ in range(100):
                async with db.connect() as conn:
                    sql = "SELECT quantity_sum, event_count, last_event_id FROM usage_rollups"
                    folded = (await conn.execute(text(sql))).all()
                if folded:
                    break
                await asyncio.sleep(0.1)
        finally:
            await handle.delete()
    assert [tuple(r) for r in folded or []] == [(12, 2, "b")]  # today's event waits
    for _ in range(50):  # the activity counts after its transaction commits
        if folded_total() == folded_before + 2:
            break
        await asyncio.sleep(0.1)
    assert folded_total() == folded_before + 2
