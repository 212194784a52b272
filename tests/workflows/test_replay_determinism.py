"""A contract's history replays on the code that wrote it, whatever the timing.

The chaos run found a history of this release that failed replay: its first
workflow task heartbeated a slow local activity, and the workflow took its
creation instant from the first activation's timestamp, which a replay reads
from a later task. A backdated contract closes its past periods one grace
window after creation, so the original run closed a period at a timer that,
on replay, fired "too early" to close it. Here the slow activity is made by
holding a lock the registration needs, and the workflow task timeout is short
so the worker heartbeats the task well within the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncTransaction
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.catalog_store import apply_catalog
from models.amendments import parse_amendment
from models.catalog import load_catalog
from models.contract import load_contract
from tests.support.scenario import PRO_CATALOG, TASK_QUEUE, contract_doc
from worker.contract_service import register_contract, workflow_id
from worker.main import build_worker
from workflows.contract import ContractWorkflow, ContractWorkflowInput

LOCK_HELD_S = 2.5  # longer than the heartbeat of a 1 s workflow task


async def test_a_backdated_contract_whose_first_task_heartbeated_replays(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    now = await ts_env.get_current_time()
    months = now.year * 12 + now.month - 1 - 3  # three whole months back
    starts = date(months // 12, months % 12 + 1, 1)
    async with _slow_registration(ts_env, db, contract_doc(starts_on=starts.isoformat())) as h:
        # Past the catch-up closes (one grace window after creation).
        await ts_env.sleep(timedelta(hours=2))
        view = await h.query(ContractWorkflow.query_state)
    history = await h.fetch_history()

    assert _first_task_heartbeated(history), "no heartbeat: the test did not make the case"
    assert len(view.invoices) == 3, view.invoices  # the three past months, caught up
    await _replays(history)


async def test_an_amendment_sent_while_the_contract_registers_replays(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """The registration runs outside the contract lock, beside an update's first
    ledger step. Here the update's step is slow and completes after the
    registration's, a later one in the history; a replay resolves local
    activities in their order instead (sdk-python #1578). It must still replay:
    every other ledger step waits for the lock the update holds."""
    now = await ts_env.get_current_time()
    doc = contract_doc(starts_on=now.date().replace(day=1).isoformat())
    async with _slow_registration(ts_env, db, doc, hold_s=0, table="amendments") as h:
        amended = asyncio.create_task(h.execute_update(
            ContractWorkflow.amend,
            parse_amendment({"id": "g-early", "kind": "grant_credits", "credits": "50.00"}),
        ))
        await asyncio.sleep(LOCK_HELD_S)
        _RELEASE.set()
        result = await asyncio.wait_for(amended, 30)
        view = await h.query(ContractWorkflow.query_state)
    history = await h.fetch_history()

    assert result.status == "applied"
    assert view.status == "active"
    assert view.credit_balance == Decimal("50.00")
    await _replays(history)


_RELEASE = asyncio.Event()


@asynccontextmanager
async def _slow_registration(
    env: WorkflowEnvironment, db: AsyncEngine, doc: dict[str, Any], hold_s: float = LOCK_HELD_S,
    table: str = "customers",
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """Start the contract with a worker, writes to ``table`` blocked by a lock
    (released after ``hold_s``, or when the test sets `_RELEASE` if 0). The
    workflow's registration inserts into customers."""
    contract = load_contract(doc)
    async with db.begin() as conn:
        version, _ = await apply_catalog(conn, load_catalog(PRO_CATALOG))
    reg = await register_contract(db, contract, version)
    _RELEASE.clear()
    async with db.connect() as blocker:
        tx = await blocker.begin()
        await blocker.exec_driver_sql(f"LOCK TABLE {table} IN SHARE MODE")
        handle = await env.client.start_workflow(
            ContractWorkflow.run,
            ContractWorkflowInput(contract=contract, terms=reg.terms,
                                  catalog_version=reg.catalog_version, terms_digest=reg.digest),
            id=workflow_id(contract.id), task_queue=TASK_QUEUE,
            task_timeout=timedelta(seconds=1),
        )
        async with build_worker(env.client, db, TASK_QUEUE):
            if hold_s:
                await asyncio.sleep(hold_s)
                await tx.rollback()
                yield handle
            else:
                released = asyncio.create_task(_release_when_told(tx))
                try:
                    yield handle
                finally:
                    await released


async def _release_when_told(tx: AsyncTransaction) -> None:
    await _RELEASE.wait()
    await tx.rollback()


async def _replays(history: WorkflowHistory) -> None:
    replayer = Replayer(workflows=[ContractWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def _first_task_heartbeated(history: WorkflowHistory) -> bool:
    """The first workflow task completed before the first local activity did."""
    kinds = [e.event_type for e in history.events]
    first_done = kinds.index(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    first_activity = next(
        i for i, e in enumerate(history.events)
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    )
    return EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED in kinds[first_done:first_activity]
