"""A worker that dies mid-lifecycle loses nothing and bills nothing twice.

Two kinds of death, on the Acme example:
- *during* an activity: every ledger activity commits its transaction and
  then the worker "dies" before reporting completion (once per activity
  type), so Temporal retries work that already happened;
- *between* activities: the worker is shut down mid-term and a brand-new
  worker (empty cache, full replay of the history) takes over.
The outcome must be exactly the example's invoices, numbers, credits and
revenue, with a balanced journal and credit ledger.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.payments import SimulatedCardGateway
from models.usage import parse_usage_jsonl
from tests.support.compare import differences
from tests.support.paths import ACME
from tests.support.scenario import TASK_QUEUE, ContractRun, at
from worker.main import WORKFLOWS, activities_for

EXPECTED = json.loads((ACME / "expected.json").read_text())


class WorkerDied(Exception):
    """Stands for a process that vanished after its transaction committed."""


def dying_after_commit(functions: Sequence[Callable[..., Any]], died: set[str]) -> list[Any]:
    """The real activities, each of which dies once right after doing its work."""
    return [_die_once_after(fn, died) for fn in functions]


def _die_once_after(fn: Callable[..., Any], died: set[str]) -> Any:
    name = fn.__temporal_activity_definition.name  # type: ignore[attr-defined]

    async def once(arg: Any) -> Any:
        result = await fn(arg)
        if name not in died:
            died.add(name)
            raise WorkerDied(f"{name} committed, then the worker died")
        return result

    # The payload converter decodes by the real activity's type hints.
    hints = typing.get_type_hints(fn)
    arg_name = next(iter(inspect.signature(fn).parameters))
    once.__annotations__ = {"arg": hints[arg_name], "return": hints["return"]}
    return activity.defn(name=name)(once)


class AcmeRun(ContractRun):
    def __init__(self, env: WorkflowEnvironment, engine: AsyncEngine, crash: bool) -> None:
        import yaml

        super().__init__(
            env, engine,
            contract=yaml.safe_load((ACME / "contract.yaml").read_text()),
            catalog=yaml.safe_load((ACME / "catalog.yaml").read_text()),
        )
        self.crash = crash
        self.died: set[str] = set()

    async def start_worker(self) -> None:
        functions = activities_for(self.engine, SimulatedCardGateway())
        acts = dying_after_commit(functions, self.died) if self.crash else functions
        # No workflow cache: every workflow task replays the history from
        # scratch, as a new process would (and no sticky queue is left behind
        # when this worker goes away).
        self._worker = Worker(self.env.client, task_queue=TASK_QUEUE, workflows=WORKFLOWS,
                              activities=acts, max_cached_workflows=0)
        await self._worker.__aenter__()


async def test_a_worker_dying_during_and_between_activities_changes_nothing(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    events, _ = parse_usage_jsonl((ACME / "usage.jsonl").read_text())
    async with AcmeRun(ts_env, db, crash=True) as run:
        await run.send_usage([e.model_dump(mode="json") for e in events if e.customer == "acme"
                              and e.id != "acme-0003"] + [events[2].model_dump(mode="json")])
        await run.advance_to(at("2027-02-10", 12))
        await run.pay("commitment:2027-01-01", "100000.00")
        await run.advance_to(at("2027-05-20", 9))
        await run.pay("usage:2027-01-01", "1500.00")
        # Between activities: the worker shuts down while the workflow sleeps
        # towards the 2027-07-01 boundary, and a brand-new worker (no cache:
        # it replays the whole history) carries on. (The time-skipping server
        # cannot skip time while a workflow task waits for a worker.)
        await run.advance_to(at("2027-06-15"))
        await run.stop_worker()
        await run.start_worker()
        await run.advance_to(at("2028-07-01"))
        report = await run.report()
        async with db.connect() as conn:
            unbalanced = await conn.scalar(text(
                "SELECT count(*) FROM (SELECT entry_id FROM journal_lines GROUP BY entry_id "
                "HAVING sum(debit) <> sum(credit)) x"))
            ledger_total = await conn.scalar(text("SELECT sum(amount) FROM credit_ledger"))
            payments = await conn.scalar(text("SELECT count(*) FROM payments"))
            consumptions = await conn.scalar(text(
                "SELECT count(*) FROM credit_ledger WHERE kind = 'consume'"))

    assert {"close_period", "grant_credits", "record_payment", "dunning_step",
            "expire_credits"} <= run.died
    expected = {k: v for k, v in EXPECTED.items() if k != "until"}
    assert differences(expected, report) == []
    assert [i["number"] for i in report["invoices"]] == [f"INV-{n:06d}" for n in range(1, 6)]
    assert unbalanced == 0
    assert ledger_total == 0  # granted = consumed + expired, balance 0
    assert (payments, consumptions) == (2, 4)
