"""Worker capacity knobs: how many workflows stay cached, how many tasks run at once.

Unset (None) keeps the Temporal SDK's default (1,000 cached workflows; 100
slots of each kind). They are settings because the right numbers depend on
the machine: each cached contract holds its state in memory (the sleeping
bench measures it per contract), and workflow tasks are Python code on one
event loop, so slots beyond what the CPU can run only queue tasks in the
worker, where they can time out waiting (schedule-to-start) instead of being
picked up by a less busy worker. bench/RESULTS.md records what was measured;
deploy/README.md gives sizing advice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerTuning:
    max_cached_workflows: int | None = None
    max_concurrent_workflow_tasks: int | None = None
    max_concurrent_local_activities: int | None = None
    max_concurrent_activities: int | None = None

    def worker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `temporalio.worker.Worker` (only the ones set)."""
        return {k: v for k, v in vars(self).items() if v is not None}
