"""Worker capacity: how many workflows stay cached, how many tasks run at once.

The Temporal SDK's defaults (100 workflow-task slots, 100 local-activity
slots) do not fit a billow worker. Its workflow tasks run Python on one event
loop, and each ledger step holds one of the worker's database connections
(`DB_CONNECTIONS`). Under a burst (thousands of contracts created at once, a
month-start storm) 100 concurrent tasks queue their ledger steps behind 15
connections; first workflow tasks then outlive their 10 s timeout, and the
SDK (1.35) kept the slots of such timed-out tasks: after a 4,000-contract
burst, 96 of 100 slots stayed taken with nothing running and the worker never
polled again (bench/RESULTS.md section 7). So billow's defaults are:

- workflow tasks: ``WORKFLOW_TASKS_PER_CPU`` per CPU, enough to keep the
  event loop busy while ledger steps wait on the database;
- ledger steps: the connection pool's size, so a step never waits for a
  connection while its workflow task's clock runs;
- the sticky cache and gateway calls: the SDK's defaults (1,000 and 100);
- the sticky queue's schedule-to-start timeout: ``STICKY_SCHEDULE_TO_START``.
  A workflow task for a cached contract goes to this worker's own (sticky)
  queue; if the worker does not start it within this time, the task times
  out and is scheduled again on the shared queue, where any worker replays
  the contract's history. Under a storm a busy worker's sticky backlog
  outlives a short timeout: each timeout is a workflow-task timeout in the
  history and a full replay. A longer timeout is also how long a crashed
  worker's contracts wait before another worker takes them (a worker that
  shuts down cleanly hands them over at once).

Every value can be set (BILLOW_WORKER_*, worker/settings.py); deploy/README.md
gives sizing advice and bench/RESULTS.md what was measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

WORKFLOW_TASKS_PER_CPU = 4
# activities/db.make_engine: pool_size 5 + SQLAlchemy's default overflow of 10.
DB_CONNECTIONS = 15
STICKY_SCHEDULE_TO_START = timedelta(seconds=10)  # the SDK's default


def default_workflow_tasks() -> int:
    return max(4, WORKFLOW_TASKS_PER_CPU * (os.cpu_count() or 1))


@dataclass(frozen=True)
class WorkerTuning:
    max_cached_workflows: int | None = None  # None: the SDK's default
    max_concurrent_workflow_tasks: int | None = None  # None: default_workflow_tasks()
    max_concurrent_local_activities: int | None = None  # None: DB_CONNECTIONS
    max_concurrent_activities: int | None = None  # None: the SDK's default
    sticky_schedule_to_start_s: float | None = None  # None: STICKY_SCHEDULE_TO_START

    def worker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `temporalio.worker.Worker`."""
        chosen: dict[str, Any] = {
            "max_concurrent_workflow_tasks": (self.max_concurrent_workflow_tasks
                                              or default_workflow_tasks()),
            "max_concurrent_local_activities": (self.max_concurrent_local_activities
                                                or DB_CONNECTIONS),
            "sticky_queue_schedule_to_start_timeout": (
                timedelta(seconds=self.sticky_schedule_to_start_s)
                if self.sticky_schedule_to_start_s is not None else STICKY_SCHEDULE_TO_START),
        }
        if self.max_cached_workflows is not None:
            chosen["max_cached_workflows"] = self.max_cached_workflows
        if self.max_concurrent_activities is not None:
            chosen["max_concurrent_activities"] = self.max_concurrent_activities
        return chosen
