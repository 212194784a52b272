"""Temporal Schedules the worker keeps in place (created once, then left to ops).

The usage compaction schedule is created when a worker starts and does not
exist yet. An existing schedule is never overwritten: ops may have paused or
re-timed it in the UI, and every worker of a fleet starts this same code.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from models.operations import CompactUsageRequest
from workflows.usage_compaction import COMPACTION_SCHEDULE_ID, UsageCompactionWorkflow

log = logging.getLogger("billow.worker")


async def ensure_compaction_schedule(client: Client, task_queue: str, every: timedelta) -> bool:
    """Create the usage compaction schedule unless it exists; True if created."""
    try:
        await client.create_schedule(
            COMPACTION_SCHEDULE_ID,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    UsageCompactionWorkflow.run,
                    CompactUsageRequest(),
                    id=f"{COMPACTION_SCHEDULE_ID}-run",
                    task_queue=task_queue,
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
    except ScheduleAlreadyRunningError:
        return False
    log.info("created schedule %r (every %s)", COMPACTION_SCHEDULE_ID, every)
    return True
