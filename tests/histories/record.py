"""Record workflow histories for the replay tests.

    python -m tests.histories.record <version> [scenario ...] [--out DIR]

Runs a few contract lifecycles on a time-skipping server and a fresh
database and saves each contract workflow's history (every run of it) as
JSON next to this file. Histories are recorded once per released workflow
version and kept: ``test_replay.py`` replays every saved file against the
current ``ContractWorkflow``, so a change that would break a running
contract fails there. Guard such changes with ``workflow.patched`` and record
new histories alongside the old ones (never overwrite them: an existing
file is skipped).

To record from an older release, check it out in a worktree, copy this file
and paths.py into its tests/histories/, and run it there with ``--out``
pointing at this directory (the scenarios use only what every release has).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.db import make_engine
from activities.payments import SimulatedCardGateway
from tests.histories.paths import PATHS, PATHS_V4, PATHS_V5, PATHS_V7
from tests.histories.webhook_paths import WEBHOOK_PATHS
from tests.support.scenario import ContractRun, at, contract_doc, event
from worker.main import build_worker
from worker.simulate import fresh_database
from worker.temporal_envs import start_time_skipping

HERE = Path(__file__).parent
try:
    from tests.support.paths import ACME
except ImportError:  # releases before the shared paths module
    ACME = HERE.parents[2] / "shared" / "scenarios" / "acme"

class Recorded(Protocol):
    handle: WorkflowHandle[Any, Any] | None


Scenario = Callable[[WorkflowEnvironment, AsyncEngine], Awaitable[Recorded]]


async def acme(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    run = ContractRun(
        env,
        engine,
        yaml.safe_load((ACME / "contract.yaml").read_text()),
        yaml.safe_load((ACME / "catalog.yaml").read_text()),
    )
    async with run:
        lines = dict.fromkeys((ACME / "usage.jsonl").read_text().splitlines())  # dedup
        events = [json.loads(line) for line in lines]
        await run.send_usage([e for e in events if e["customer"] == "acme"])
        await run.advance_to(at("2027-02-10", 12))
        await run.pay("commitment:2027-01-01", "100000.00")
        await run.advance_to(at("2027-05-20", 9))
        await run.pay("usage:2027-01-01", "1500.00")
        await run.advance_to(at("2028-07-01"))
    return run


async def amendments(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """Unpriced usage held, priced by amendment, a top-up, net-60, auto-pay, termination."""
    gateway = SimulatedCardGateway(declines={"cust-1": 1})
    run = ContractRun(env, engine, contract_doc(auto_pay=True), gateway=gateway)
    async with run:
        await run.send_usage([event("e1", "2027-01-05T00:00:00Z", "1000", model="claude")])
        await run.advance_to(at("2027-02-01", 3))
        await run.amend(
            {
                "id": "price-claude",
                "kind": "rate_override",
                "override": {"meter": "tokens", "match": {"model": "claude"}, "unit_price": "0.01"},
            }
        )
        await run.advance_to(at("2027-03-10", 9))
        await run.amend(
            {"id": "topup", "kind": "grant_credits", "credits": "2000.00", "price": "1800.00"}
        )
        await run.amend({"id": "net60", "kind": "change_payment_terms", "payment_terms_days": 60})
        await run.advance_to(at("2027-05-10", 9))
        await run.amend({"id": "bye", "kind": "terminate", "effective": "2027-05-20T00:00:00Z"})
        await run.advance_to(at("2027-09-01"))
    return run


async def continue_as_new(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    run = ContractRun(env, engine, contract_doc(term_months=14))
    async with run:
        await run.advance_to(at("2027-01-10"))
        await run.amend(
            {
                "id": "discount",
                "kind": "rate_override",
                "override": {"meter": "tokens", "discount_percent": "10"},
            }
        )
        await run.advance_to(at("2028-01-01", 2))
        # The same id with other content: answered "duplicate" up to v3, a
        # conflict since (issue 11 case 13).
        with contextlib.suppress(WorkflowUpdateFailedError):
            await run.amend(
                {
                    "id": "discount",
                    "kind": "rate_override",
                    "override": {"meter": "tokens", "discount_percent": "90"},
                }
            )
        await run.advance_to(at("2028-04-01"))
    return run


async def renewal(env: WorkflowEnvironment, engine: AsyncEngine) -> ContractRun:
    """An extend_term: the renewal continues as new (behind workflow.patched)."""
    run = ContractRun(env, engine, contract_doc(term_months=2))
    async with run:
        await run.advance_to(at("2027-02-10"))
        await run.amend({"id": "renew", "kind": "extend_term", "term_months": 2})
        await run.advance_to(at("2027-05-02"))
    return run


@dataclass
class _Compaction:
    handle: WorkflowHandle[Any, Any] | None = None


async def usage_compaction(env: WorkflowEnvironment, engine: AsyncEngine) -> _Compaction:
    # Imported here: releases before v3 have no compaction workflow.
    from models.operations import CompactUsageRequest
    from workflows.usage_compaction import UsageCompactionWorkflow

    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions) "
            "VALUES ('e1', 'c', 'tokens', '2027-01-08T10:00Z', 2, '{}')"))
    async with build_worker(env.client, engine, "record-compaction"):
        handle = await env.client.start_workflow(
            UsageCompactionWorkflow.run,
            CompactUsageRequest(before=datetime(2027, 1, 9, tzinfo=UTC)),
            id="billow-usage-compaction-run",
            task_queue="record-compaction",
        )
        await handle.result()
    return _Compaction(handle)


SCENARIOS: dict[str, Scenario] = {
    "acme": acme,
    "amendments": amendments,
    "continue_as_new": continue_as_new,
    "renewal": renewal,
    "usage_compaction": usage_compaction,
    **PATHS,
    **PATHS_V4,
    **PATHS_V5,
    **PATHS_V7,
    **WEBHOOK_PATHS,
}


async def record(name: str, scenario: Scenario, version: str, out: Path) -> None:
    path = out / f"{name}.{version}.json"
    if path.exists():
        print(f"kept {path} (saved histories are never overwritten)")
        return
    async with fresh_database(None) as url:
        engine = make_engine(url)
        env = await start_time_skipping()
        try:
            run = await scenario(env, engine)
            assert run.handle is not None
            runs: list[dict[str, Any]] = []
            run_id: str | None = None
            while True:  # every run of the workflow id, oldest first
                hist = await env.client.get_workflow_handle(
                    run.handle.id, run_id=run_id
                ).fetch_history()
                runs.insert(0, json.loads(hist.to_json()))
                attrs = hist.events[0].workflow_execution_started_event_attributes
                run_id = attrs.continued_execution_run_id or None
                if run_id is None:
                    break
        finally:
            await env.shutdown()
            await engine.dispose()
    path.write_text(json.dumps({"workflow_id": run.handle.id, "runs": runs}, indent=1))
    print(f"wrote {path}")


async def main(version: str, names: list[str], out: Path = HERE) -> None:
    """Record ``names`` (default: every scenario) as ``<out>/<name>.<version>.json``."""
    failed = []
    for name in names or list(SCENARIOS):
        try:
            await record(name, SCENARIOS[name], version, out)
        except Exception as exc:  # report it and record the others
            print(f"{name}: not recorded: {exc!r}")
            failed.append(name)
    if failed:
        raise SystemExit(f"not recorded: {', '.join(failed)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version")
    parser.add_argument("scenario", nargs="*", help=", ".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if unknown := [n for n in args.scenario if n not in SCENARIOS]:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    asyncio.run(main(args.version, args.scenario, args.out))
