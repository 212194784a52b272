"""Worker capacity: how many workflows stay cached, how many tasks run at once.

The Temporal SDK's defaults (100 workflow-task slots, 100 local-activity
slots) do not fit a billow worker. Its workflow tasks run Python on one event
loop: with 100 taken at once, each waits its turn on that loop, and under a
burst many outlive their 10 s start-to-close timeout; the server then runs
them again, so the work is done twice. Measured (bench/RESULTS.md section 10,
1,000 contracts closing at once on two worker processes): 100/100 slots took
72.4 s with 558 start-to-close timeouts and 503 answers from the API, 8
slots per worker 48.0 s with none, 32 slots 47.6 s. So the slots do not cap
a storm's throughput: the worker's one core does. billow's defaults are:

- workflow tasks: ``WORKFLOW_TASKS_PER_CPU`` per CPU, enough to keep the
  event loop busy while ledger steps wait on the database;
- ledger steps: the connection pool's size, so a step never waits for a
  connection while its workflow task's clock runs (in the storms above no
  more than 7-14 of a worker's 15 were ever taken at once);
- the sticky cache and gateway calls: the SDK's defaults (1,000 and 100);
- the sticky queue's schedule-to-start timeout: ``STICKY_SCHEDULE_TO_START``,
  the SDK's 10 s. A workflow task for a cached contract goes to this
  worker's own (sticky) queue; if the worker does not start it within this
  time, the task times out and is scheduled again on the shared queue, where
  any worker takes it and replays the contract's history. Under a storm a
  busy worker's sticky backlog outlives 10 s: every schedule-to-start timeout
  of section 10 is one of these. With 120 s, 1,000 contracts on two workers
  closed in 25.3 s instead of 48.0 s, with 2 timeouts instead of 790. At
  5,000 contracts (more than two workers' caches hold) 300 s cut the
  timeouts from 4,889 to 972 but the storm was not shorter, so the default
  stays: raise it where each worker's share of the contracts fits its cache
  (deploy/README.md, Scaling). A longer timeout is also how long the tasks
  already queued for a worker that crashes wait before another worker takes
  them (a worker that stops cleanly hands its queue over at once).

Section 7 once blamed a slot leak in the SDK for a worker that stopped
polling after a burst, its slots taken and nothing running. The cause was the
bench: its worker process wrote the SDK core's warnings to a stdout pipe that
nobody read, and the core's thread blocked on the full pipe (section 10).
billow's processes send those warnings through Python logging
(worker/telemetry.py); in every storm of section 10, 200 slots included, no
slot stayed taken after the storm.

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
