"""Workflow tasks that went wrong in a run, counted from every history.

A nondeterminism is a contract stopped for good (its every task fails on
replay): a failure of the run, control or chaos. Timeouts and other failed
tasks are how Temporal moves work off a killed worker, so in the chaos run
they are expected; in the control run they mean the worker was overloaded
(issue 13's goal: none there).
"""

from __future__ import annotations

from collections import Counter

from temporalio.api.enums.v1 import EventType, TimeoutType, WorkflowTaskFailedCause
from temporalio.client import Client

NONDETERMINISM = "failed: NON_DETERMINISTIC_ERROR"


async def workflow_task_trouble(client: Client) -> dict[str, int]:
    """``{"timed out: <type>" | "failed: <cause>": count}`` over every run."""
    trouble: Counter[str] = Counter()
    async for wf in client.list_workflows():
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        for ev in history.events:
            if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                kind = TimeoutType.Name(ev.workflow_task_timed_out_event_attributes.timeout_type)
                trouble["timed out: " + kind.removeprefix("TIMEOUT_TYPE_")] += 1
            elif ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                cause = WorkflowTaskFailedCause.Name(ev.workflow_task_failed_event_attributes.cause)
                trouble["failed: " + cause.removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")] += 1
    return dict(trouble)
