"""The usage compactor, as a workflow a Temporal Schedule starts every hour.

One short workflow per run: the activity folds the closed UTC days'
usage into rollups (activities/usage_rollup.py) and returns counts. Running it
through Temporal puts it where ops already look: the schedule can be paused,
triggered or re-timed in the UI or CLI, and each run's outcome is in its
history. Runs are serialized in the database (an advisory lock), so an
overlapping run or a retry only waits; the schedule also skips overlaps.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models.operations import ActivityName, CompactUsageRequest, CompactUsageResult

__all__ = ["COMPACTION_SCHEDULE_ID", "UsageCompactionWorkflow"]

COMPACTION_SCHEDULE_ID = "billow-usage-compaction"


@workflow.defn(name="UsageCompaction")
class UsageCompactionWorkflow:
    @workflow.run
    async def run(self, req: CompactUsageRequest) -> CompactUsageResult:
        result: CompactUsageResult = await workflow.execute_activity(
            ActivityName.COMPACT_USAGE.value,
            req,
            result_type=CompactUsageResult,
            # A day's usage of a large installation takes minutes to fold.
            start_to_close_timeout=timedelta(hours=1),
            # A few tries, then the run fails and shows in the UI; the next
            # scheduled run starts afresh (a run that keeps failing would
            # otherwise hold the schedule, which skips overlapping runs).
            retry_policy=RetryPolicy(
                maximum_interval=timedelta(minutes=5),
                maximum_attempts=3,
                non_retryable_error_types=["ValueError"],
            ),
        )
        return result
