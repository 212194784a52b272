"""``billow simulate``: one contract's whole life in seconds (SPEC.md section 9).

The real ``ContractWorkflow`` and activities run on a time-skipping Temporal
test server against a real, fresh PostgreSQL database. Usage goes through the
ingestion path, the contract is created the way the API creates it, and each
timeline action is sent as the API would send it, at its instant. Time is
advanced explicitly (``env.sleep``) up to each action and then to ``until``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.catalog_store import apply_catalog
from activities.db import asyncpg_dsn, make_engine
from activities.ledger_reports import credit_summary, invoice_documents, revenue_summary
from activities.migrate import upgrade_async
from activities.payments import SimulatedCardGateway
from activities.usage_ingest import IngestReport, IngestResult, IngestStatus, ingest_usage
from activities.usage_rollup import compact_usage, utc_midnight
from models.catalog import Catalog
from models.contract import Contract
from models.periods import local_midnight_utc
from models.timeline import AmendAction, PayAction, TimelineAction
from models.usage import UsageEvent
from worker.contract_service import start_contract
from worker.main import build_worker
from worker.temporal_envs import start_time_skipping
from workflows.contract import ContractWorkflow, PaymentInput

TASK_QUEUE = "billow-simulate"
BATCH = 10_000


@dataclass
class SimulationInput:
    catalog: Catalog
    contract: Contract
    usage: Sequence[UsageEvent | dict[str, Any]]
    timeline: Sequence[TimelineAction] = ()
    until: date | None = None
    # Customers whose next N auto-pay charges the simulated card declines.
    card_declines: dict[str, int] = field(default_factory=dict)
    # Fold the usage into daily rollups before the contract runs, as the
    # nightly compactor would have: rating then reads rollups for whole days.
    compact_usage: bool = False


@dataclass
class SimulationResult:
    output: dict[str, Any]
    ingest: IngestReport


def _utc_day_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)


def default_until(contract: Contract, catalog: Catalog) -> date:
    """Term end + payment terms + 30 days: every invoice has had its chance to be paid."""
    from models.contract import resolve_terms

    terms = resolve_terms(contract, catalog)
    return terms.term_end + timedelta(days=terms.payment_terms_days + 30)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str | None) -> AsyncIterator[str]:
    """A new, migrated database: on the configured server, or an embedded one."""
    if server_url:
        name = f"billow_sim_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        try:
            await upgrade_async(url)
            yield url
        finally:
            admin = await asyncpg.connect(asyncpg_dsn(server_url))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()
        return
    from worker.embedded import ensure_embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="billow-sim-"))
    os.chmod(root, 0o755)  # the embedded server runs as its own user when we are root
    pg = await asyncio.to_thread(ensure_embedded_postgres, root, "billow_sim")
    try:
        await upgrade_async(pg.url)
        yield pg.url
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


async def ingest_all(
    engine: AsyncEngine, events: Sequence[UsageEvent | dict[str, Any]]
) -> IngestReport:
    results: list[IngestResult] = []
    for i in range(0, len(events), BATCH):
        batch = [
            e.model_dump(mode="json") if isinstance(e, UsageEvent) else e
            for e in events[i : i + BATCH]
        ]
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            report = await ingest_usage(raw, batch)
            await conn.commit()
        results += [r.model_copy(update={"index": r.index + i}) for r in report.results]
    count = Counter(r.status for r in results)
    return IngestReport(
        accepted=count[IngestStatus.ACCEPTED],
        duplicate=count[IngestStatus.DUPLICATE],
        conflict=count[IngestStatus.CONFLICT],
        rejected=count[IngestStatus.REJECTED],
        results=results,
    )


async def run_simulation(sim: SimulationInput, database_url: str | None = None) -> SimulationResult:
    """Fresh database, fresh time-skipping server, one contract's whole life."""
    async with fresh_database(database_url) as url:
        engine = make_engine(url)
        env = await start_time_skipping()
        try:
            return await simulate_on(env, engine, sim)
        finally:
            await env.shutdown()
            await engine.dispose()


async def simulate_on(
    env: WorkflowEnvironment, engine: AsyncEngine, sim: SimulationInput
) -> SimulationResult:
    """Run ``sim`` on a given time-skipping environment and migrated database."""
    until = sim.until or default_until(sim.contract, sim.catalog)
    async with engine.begin() as conn:
        version, _ = await apply_catalog(conn, sim.catalog)
    gateway = SimulatedCardGateway(declines=dict(sim.card_declines))
    async with build_worker(env.client, engine, TASK_QUEUE, gateway):
        started = await start_contract(
            env.client, engine, sim.contract, TASK_QUEUE, catalog_version=version
        )
        ingest = await ingest_all(engine, sim.usage)
        if sim.compact_usage:
            async with engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                await compact_usage(raw, before=utc_midnight(_utc_day_after(until)))
        handle = env.client.get_workflow_handle(started.workflow_id)
        for action in sim.timeline:
            await advance_to(env, action.at)
            await settle(env, handle)
            await send_action(handle, action)
        # Stop at the end of the `until` day (local time).
        await advance_to(
            env,
            local_midnight_utc(until + timedelta(days=1), sim.contract.timezone)
            - timedelta(microseconds=1),
        )
    async with engine.connect() as conn:
        output = await contract_report(
            conn, sim.contract.id, sim.catalog.plan(sim.contract.plan).currency
        )
    output["until"] = until.isoformat()
    return SimulationResult(output=output, ingest=ingest)


async def contract_report(conn: AsyncConnection, contract_id: str, currency: str) -> dict[str, Any]:
    """The SPEC.md section 9 object for one contract, read from the ledger."""
    return {
        "contract_id": contract_id,
        "currency": currency,
        "until": None,
        "invoices": await invoice_documents(conn, contract_id),
        "credits": (await credit_summary(conn, contract_id)).model_dump(mode="json"),
        "revenue": (await revenue_summary(conn, contract_id, currency)).model_dump(mode="json"),
    }


async def advance_to(env: WorkflowEnvironment, at: datetime) -> None:
    """Skip time forward to ``at`` (no-op if already past)."""
    now = await env.get_current_time()
    if at > now:
        await env.sleep(at - now)


async def settle(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any]) -> None:
    """Let the workflow finish what fell due at this instant before we send.

    The time-skipping test server (1.40) fails a workflow task that cancels a
    timer at the very instant that timer was started ("invalid history
    builder state for action"), and the workflow then never progresses. That
    is what happens when an action lands exactly on a due date or boundary:
    the workflow starts its next timer and the action's update cancels it.
    So actions are delivered one second after their instant (same day), once
    a query (answered after pending workflow tasks) shows the workflow idle.
    A real server needs none of this.
    """
    await env.sleep(timedelta(seconds=1))
    with contextlib.suppress(Exception):  # a finished workflow has nothing pending
        await handle.query(ContractWorkflow.query_state)


async def send_action(handle: WorkflowHandle[Any, Any], action: TimelineAction) -> None:
    """Send a timeline action the way the API sends it: as a workflow update."""
    if isinstance(action, PayAction):
        _: object = await handle.execute_update(
            ContractWorkflow.pay,
            PaymentInput(
                invoice=action.invoice,
                amount=action.amount,
                payment_id=f"timeline:{action.invoice}:{action.at.astimezone(UTC).isoformat()}",
            ),
        )
    elif isinstance(action, AmendAction):
        _ = await handle.execute_update(
            ContractWorkflow.amend, action.amendment, id=f"amend:{action.amendment.id}"
        )
