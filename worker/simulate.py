"""``billow simulate``: one contract's whole life in seconds (SPEC.md section 9).

The real ``ContractWorkflow`` and activities run on a time-skipping Temporal
test server against a real, fresh PostgreSQL database. Usage goes through the
ingestion path, the contract is created the way the API creates it, and each
timeline action is sent as the API would send it, at its instant. Time is
advanced explicitly (``env.sleep``) up to each action and then to ``until``.

A timeline action the contract refuses (an update error: an invalid
amendment, a payment for more than is owed) does not stop the run: it is
listed in the output's ``refused`` (only when there is one, so the output of
a clean timeline has exactly the SPEC.md section 9 keys) and the rest of the
timeline goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.catalog_store import apply_catalog
from activities.correction_store import credit_notes_of, ledger_request
from activities.corrections import apply_correction
from activities.db import asyncpg_dsn, make_engine
from activities.ledger_reports import credit_summary, invoice_documents, revenue_summary
from activities.migrate import upgrade_async
from activities.payments import SimulatedCardGateway, record_refund
from activities.usage_ingest import IngestReport, IngestResult, IngestStatus, ingest_usage
from activities.usage_rollup import compact_usage, utc_midnight
from models.amendments import (
    ChangePaymentTermsAmendment,
    ExtendTermAmendment,
    TerminateAmendment,
)
from models.catalog import Catalog
from models.contract import Contract, resolve_terms
from models.corrections import CorrectCredit, CorrectVoid, correct_update_id
from models.periods import local_date, local_midnight_utc, term_end_date, termination_end_date
from models.timeline import AmendAction, CreditAction, PayAction, TimelineAction, VoidAction
from models.usage import UsageEvent
from worker.contract_service import start_contract
from worker.main import build_worker
from worker.temporal_envs import start_time_skipping
from workflows.contract import ContractWorkflow, PaymentInput
from workflows.contract_state import amend_update_id

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
    refused: list[dict[str, Any]] = field(default_factory=list)


class SimulationProgress:
    """What a simulation reports while it runs; this base reports nothing.

    ``billow simulate`` shows it on stderr (``worker/simulate_cli.py``), never
    on stdout, where ``--json`` output goes.
    """

    def phase(self, description: str) -> None:
        """A step starts: starting the database, the Temporal server ..."""

    def ingested(self, done: int, total: int) -> None:
        """``done`` of ``total`` usage events went through ingestion."""

    def simulated(self, day: date, first: date, until: date) -> None:
        """Simulated time reached ``day`` (local) of ``first`` .. ``until``."""


NO_PROGRESS = SimulationProgress()
# Simulated time advances in steps of at most this, so progress can be shown.
PROGRESS_STEP = timedelta(days=7)


def _utc_day_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)


def default_until(
    contract: Contract, catalog: Catalog, timeline: Iterable[TimelineAction] = ()
) -> date:
    """Term end + payment terms + 30 days: every invoice has had its chance to be paid.

    The term end is the one the timeline leaves: after every ``extend_term``,
    or a ``terminate``'s end if earlier; the payment terms are the longest in
    force at any time (``change_payment_terms`` included). Never before the
    last action's day, so every action is sent.
    """
    terms = resolve_terms(contract, catalog)
    months, end, terms_days = terms.term_months, terms.term_end, terms.payment_terms_days
    terminated = False
    last_action: date | None = None
    for action in sorted(timeline, key=lambda a: a.at):
        last_action = local_date(action.at, terms.timezone)
        if not isinstance(action, AmendAction):
            continue
        amendment = action.amendment
        if isinstance(amendment, ExtendTermAmendment) and not terminated:
            months += amendment.term_months
            end = max(end, term_end_date(terms.starts_on, months))
        elif isinstance(amendment, TerminateAmendment) and not terminated:
            terminated = True
            effective = amendment.effective or action.at
            end = min(end, max(termination_end_date(effective, terms.timezone), terms.starts_on))
        elif isinstance(amendment, ChangePaymentTermsAmendment):
            terms_days = max(terms_days, amendment.payment_terms_days)
    until = end + timedelta(days=terms_days + 30)
    return max(until, last_action) if last_action is not None else until


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
    engine: AsyncEngine,
    events: Sequence[UsageEvent | dict[str, Any]],
    progress: SimulationProgress = NO_PROGRESS,
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
        progress.ingested(i + len(batch), len(events))
    count = Counter(r.status for r in results)
    return IngestReport(
        accepted=count[IngestStatus.ACCEPTED],
        duplicate=count[IngestStatus.DUPLICATE],
        conflict=count[IngestStatus.CONFLICT],
        rejected=count[IngestStatus.REJECTED],
        results=results,
    )


async def run_simulation(
    sim: SimulationInput,
    database_url: str | None = None,
    progress: SimulationProgress = NO_PROGRESS,
) -> SimulationResult:
    """Fresh database, fresh time-skipping server, one contract's whole life."""
    progress.phase("starting PostgreSQL" if database_url is None else "creating a database")
    async with fresh_database(database_url) as url:
        engine = make_engine(url)
        progress.phase("starting the Temporal time-skipping server")
        env = await start_time_skipping()
        try:
            return await simulate_on(env, engine, sim, progress)
        finally:
            await env.shutdown()
            await engine.dispose()


async def simulate_on(
    env: WorkflowEnvironment,
    engine: AsyncEngine,
    sim: SimulationInput,
    progress: SimulationProgress = NO_PROGRESS,
) -> SimulationResult:
    """Run ``sim`` on a given time-skipping environment and migrated database."""
    tz = sim.contract.timezone
    # Before anything runs; recomputed below without the refused actions.
    until = sim.until or default_until(sim.contract, sim.catalog, sim.timeline)
    progress.phase("applying the catalog and creating the contract")
    async with engine.begin() as conn:
        version, _ = await apply_catalog(conn, sim.catalog)
    gateway = SimulatedCardGateway(declines=dict(sim.card_declines))
    refused: list[dict[str, Any]] = []
    async with build_worker(env.client, engine, TASK_QUEUE, gateway):
        started = await start_contract(
            env.client, engine, sim.contract, TASK_QUEUE, catalog_version=version
        )
        progress.phase(f"ingesting {len(sim.usage)} usage events")
        ingest = await ingest_all(engine, sim.usage, progress)
        if sim.compact_usage:
            async with engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                await compact_usage(raw, before=utc_midnight(_utc_day_after(until)))
        handle = env.client.get_workflow_handle(started.workflow_id)
        first = local_date(await env.get_current_time(), tz)
        progress.phase(f"simulating {first} → {until}")

        def show(now: datetime) -> None:
            progress.simulated(local_date(now, tz), first, until)

        end_of_until = local_midnight_utc(until + timedelta(days=1), tz)
        for index, action in enumerate(sim.timeline):
            if sim.until is not None and action.at >= end_of_until:
                refused.append(refusal(index, action, [("at", f"after --until {until}: not sent")]))
                continue
            await advance_to(env, action.at, show)
            await settle(env, handle)
            problems = await send_action(handle, action, engine)
            if problems is not None:
                refused.append(refusal(index, action, problems))
        if sim.until is None:
            sent = [a for i, a in enumerate(sim.timeline) if i not in _indexes(refused)]
            until = default_until(sim.contract, sim.catalog, sent)
        # Stop at the end of the `until` day (local time).
        end_of_until = local_midnight_utc(until + timedelta(days=1), tz)
        await advance_to(env, end_of_until - timedelta(microseconds=1), show)
    progress.phase("reading the ledger")
    async with engine.connect() as conn:
        currency = sim.catalog.plan(sim.contract.plan).currency
        output = await contract_report(conn, sim.contract.id, currency)
    output["until"] = until.isoformat()
    if refused:
        output["refused"] = refused
    return SimulationResult(output=output, ingest=ingest, refused=refused)


def _indexes(refused: Sequence[dict[str, Any]]) -> set[int]:
    return {int(r["index"]) for r in refused}


async def contract_report(conn: AsyncConnection, contract_id: str, currency: str) -> dict[str, Any]:
    """The SPEC.md section 9 object for one contract, read from the ledger."""
    report: dict[str, Any] = {
        "contract_id": contract_id,
        "currency": currency,
        "until": None,
        "invoices": await invoice_documents(conn, contract_id),
    }
    notes = await credit_notes_of(conn, contract_id)
    if notes:  # only when there is one, so a plain run has exactly the section 9 keys
        report["credit_notes"] = [
            note.model_dump(mode="json", include=_NOTE_FIELDS) for note in notes
        ]
    report["credits"] = (await credit_summary(conn, contract_id)).model_dump(mode="json")
    report["revenue"] = (await revenue_summary(conn, contract_id, currency)).model_dump(
        mode="json")
    return report


# What `billow simulate` prints of a credit note (SPEC.md section 11).
_NOTE_FIELDS = {"id", "number", "invoice", "issued_on", "reason", "lines", "total",
                "allocation"}


async def advance_to(
    env: WorkflowEnvironment, at: datetime, show: Callable[[datetime], None] | None = None
) -> None:
    """Skip time forward to ``at`` (no-op if already past).

    With ``show``, in steps of `PROGRESS_STEP` (or a hundredth of the way,
    if longer: a 100-year term stays quick), calling it after each.
    """
    now = await env.get_current_time()
    chunk = max(PROGRESS_STEP, (at - now) / 100)
    while at > now:
        step = at - now if show is None else min(at - now, chunk)
        await env.sleep(step)
        now += step
        if show is not None:
            show(now)


async def settle(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any]) -> None:
    """Let the workflow finish what fell due at this instant before we send.

    The time-skipping test server (1.40) fails a workflow task that cancels a
    timer at the very instant that timer was started ("invalid history
    builder state for action"), and the workflow then never progresses. That
    is what happens when an action lands exactly on a due date or boundary:
    the workflow starts its next timer and the action's update cancels it.
    So actions are delivered one second after their instant (same day), once
    a query (answered after pending workflow tasks) shows the workflow idle.
    Amendments carry their action's instant as ``received_at``
    (`send_action`), so a second late changes no number. A real server needs
    none of this.
    """
    await env.sleep(timedelta(seconds=1))
    with contextlib.suppress(Exception):  # a finished workflow has nothing pending
        await handle.query(ContractWorkflow.query_state)


Problems = list[tuple[str, str]]


async def send_action(handle: WorkflowHandle[Any, Any], action: TimelineAction,
                      engine: AsyncEngine | None = None) -> Problems | None:
    """Send a timeline action the way the API sends it: as a workflow update.

    Returns None when the contract took it, else the ``(field, reason)``
    problems it was refused with (an update error; the run goes on). A void
    or credit after the workflow has completed goes to the ledger, as the
    API's does.
    """
    try:
        if isinstance(action, VoidAction | CreditAction):
            correction = action.correction()
            try:
                _: object = await handle.execute_update(
                    ContractWorkflow.correct, correction, id=correct_update_id(correction))
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND or engine is None:
                    raise
                return await _correct_in_ledger(engine, handle, correction, action.at)
            return None
        if isinstance(action, PayAction):
            _ = await handle.execute_update(
                ContractWorkflow.pay,
                PaymentInput(
                    invoice=action.invoice,
                    amount=action.amount,
                    payment_id=payment_id(action),
                ),
            )
        elif isinstance(action, AmendAction):
            # Received at its instant, though delivered a second later
            # (`settle`): its default `effective` is `at` (SPEC.md section 7).
            amendment = action.amendment.model_copy(update={"received_at": action.at})
            _ = await handle.execute_update(
                ContractWorkflow.amend, amendment, id=amend_update_id(amendment)
            )
    except WorkflowUpdateFailedError as exc:
        return update_problems(exc)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        # The workflow completed (term closed, nothing left to collect).
        return [("", f"the contract's workflow has completed: {exc.message}")]
    return None


async def _correct_in_ledger(engine: AsyncEngine, handle: WorkflowHandle[Any, Any],
                             correction: CorrectVoid | CorrectCredit,
                             now: datetime) -> Problems | None:
    """A correction once the contract's workflow has completed: the ledger applies it
    (a refund is then recorded as a manual one, as the API does)."""
    contract_id = handle.id.removeprefix("contract:")
    async with engine.begin() as conn:
        request = await ledger_request(conn, contract_id, correction, now)
        try:
            outcome = await apply_correction(conn, request)
        except ApplicationError as exc:
            listed = exc.details[0] if exc.details else None
            if isinstance(listed, list):
                return [(str(d.get("field") or ""), str(d.get("reason") or "")) for d in listed]
            return [("", exc.message)]
        if outcome.refund is not None:
            await record_refund(conn, outcome.refund, method="manual", reference=None)
    return None


def payment_id(action: PayAction) -> str:
    return f"timeline:{action.invoice}:{action.at.astimezone(UTC).isoformat()}"


def update_problems(exc: WorkflowUpdateFailedError) -> Problems:
    """The ``(field, reason)`` pairs of a refused update.

    billow's handlers refuse with an ``ApplicationError`` whose first detail
    lists ``{"field", "reason"}``; anything else is reported by its message.
    """
    cause = exc.cause
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details else None
        if isinstance(details, list):
            found = [
                (str(d.get("field") or ""), str(d.get("reason") or ""))
                for d in details
                if isinstance(d, dict)
            ]
            if found:
                return found
        return [("", cause.message)]
    return [("", str(cause or exc))]


def refusal(index: int, action: TimelineAction, problems: Problems) -> dict[str, Any]:
    """One entry of the output's ``refused`` list."""
    entry: dict[str, Any] = {
        "index": index,
        "at": action.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "action": action.action,
    }
    if isinstance(action, AmendAction):
        entry["kind"] = action.amendment.kind
        entry["id"] = action.amendment.id
    elif isinstance(action, VoidAction | CreditAction):
        entry["invoice"] = action.invoice
        entry["id"] = action.id
    else:
        entry["invoice"] = action.invoice
        entry["id"] = payment_id(action)
    entry["reason"] = "; ".join(f"{f}: {r}" if f else r for f, r in problems)
    entry["errors"] = [{"field": f, "reason": r} for f, r in problems]
    return entry
