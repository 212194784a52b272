"""Run one generated `Lifecycle` through the real workflow and activities.

Each example gets an emptied database (every table truncated, the invoice
number series reset, as the ``db`` fixture does) and a fresh time-skipping
Temporal server (~0.1 s; time on a server only moves forward). The worker is
billow's own (`worker.main.activities_for`, `WORKFLOWS`) plus one activity
interceptor (`lifecycle_outcome.CountAttempts`). Actions are delivered as
``billow simulate`` and the API deliver them: usage through `ingest_all`,
amendments as the ``amend`` update with the API's update id (or the
``amend_signal`` signal), payments as the ``pay`` update with the API's
update id (or ``pay_signal``), corrections as the ``correct`` update with the
API's update id or, once the workflow has completed, straight to the ledger
(tests/support/lifecycle_correct.py), each one second after its instant (`settle`:
the time-skipping server 1.40 fails a workflow task that cancels a timer in
the instant it started; see worker/simulate.py). Amendments carry
``received_at`` = the action's ``at``, the default ``effective`` in a
timeline (SPEC.md section 7). ``compact`` runs the usage compactor.

How "retried more than 3 times" is observed: the interceptor sees every
attempt of every local and regular activity with the exception it raised.
Four failed attempts with a retryable error mean a fifth is coming: that is
the violation, and the example is stopped right there (waiting for
"forever" would cost the whole wall budget). A watchdog also reads the
history once a second and stops the example at the first
``WORKFLOW_TASK_FAILED``: a task that fails once fails again on every replay.

Nothing here asserts: the run produces an `Outcome`, and
`tests.support.lifecycle_checks` judges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    Worker,
)

from activities.catalog_store import apply_catalog
from activities.payments import SimulatedCardGateway
from activities.usage_rollup import compact_usage, utc_midnight
from api.workflow_calls import reasons_from_message
from models.amendments import parse_amendment
from models.catalog import load_catalog
from models.contract import load_contract
from models.errors import BillowValidationError
from models.periods import billing_periods, local_midnight_utc
from tests.support.lifecycle_correct import Memo, send_correction, update_problems
from tests.support.lifecycle_gen import Lifecycle
from tests.support.lifecycle_ledger import read_ledger, truncate_all
from tests.support.lifecycle_outcome import (
    Answer,
    CountAttempts,
    FailingGateway,
    HistoryRun,
    Outcome,
    Recorder,
)
from worker.binaries import temporal_test_server
from worker.contract_service import start_contract
from worker.main import WORKFLOWS, activities_for
from worker.simulate import ingest_all, settle
from worker.temporal_envs import register_search_attributes, start_time_skipping
from workflows.contract import ContractView, ContractWorkflow, PaymentInput
from workflows.contract_state import amend_update_id

TASK_QUEUE = "lifecycle-fuzz"
UPDATE_WALL_S = 30.0
MAX_PERIODS_AFTER_TIMELINE = 24  # a 100-year term is not run to its end
# The time-skipping server times a workflow out 10 years after it started (a
# real server has no default execution timeout): never skip that far.
MAX_WORKFLOW_AGE = timedelta(days=9 * 365)


async def time_skipping_env(runtime: Runtime | None) -> WorkflowEnvironment:
    """`worker.temporal_envs.start_time_skipping`, on a given SDK runtime: one
    runtime for a whole fuzz run instead of a new thread pool per example."""
    if runtime is None:
        return await start_time_skipping()
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(),
        data_converter=pydantic_data_converter, runtime=runtime)
    await register_search_attributes(env.client)
    return env


async def run_lifecycle(engine: AsyncEngine, lc: Lifecycle, *, budget_s: float = 120.0,
                        runtime: Runtime | None = None) -> Outcome:
    """Run ``lc`` on a fresh time-skipping server and emptied database."""
    started = time.monotonic()
    out = Outcome(lifecycle=lc)
    await truncate_all(engine)
    env = await time_skipping_env(runtime)
    recorder = Recorder()
    customer = str(lc.contract.get("customer", {}).get("id", ""))
    card = SimulatedCardGateway(declines={customer: lc.card_declines})
    gateway = FailingGateway(lc.gateway_failures, card) if lc.gateway_failures else card
    worker = Worker(
        env.client, task_queue=TASK_QUEUE, workflows=WORKFLOWS,
        activities=activities_for(engine, gateway), interceptors=[CountAttempts(recorder)],
        graceful_shutdown_timeout=timedelta(seconds=2),
        max_cached_workflows=0 if lc.replay else 1000,  # 1000: the SDK's default
    )
    handle: WorkflowHandle[Any, Any] | None = None
    try:
        async with worker:
            driver = asyncio.create_task(_drive(env, engine, lc, out))
            watchdog = asyncio.create_task(_watch(env, lc, out, recorder))
            done, _ = await asyncio.wait({driver, watchdog}, timeout=budget_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if driver not in done:
                out.aborted = (recorder.why or (watchdog.result() if watchdog in done else None)
                               or f"no progress within the {budget_s:.0f} s wall budget")
            for task in (driver, watchdog):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if driver in done and driver.exception() is not None:
                exc = driver.exception()
                out.aborted = f"driver crashed: {type(exc).__name__}: {exc}"
            if out.created:
                handle = env.client.get_workflow_handle(f"contract:{lc.contract['id']}")
                await _observe(env, handle, out, wait_s=5.0 if out.aborted else UPDATE_WALL_S)
                if out.aborted and out.status == "RUNNING":
                    # Nothing may be left retrying when the worker stops: the SDK's core
                    # panics completing a local activity after its worker shut down.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(handle.terminate("lifecycle-fuzz: stopped"), 10)
            out.activities = list(recorder.records.values())
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(env.shutdown(), 20)
    out.ledger = await read_ledger(engine, lc.contract)
    out.wall_s = time.monotonic() - started
    return out


async def _watch(env: WorkflowEnvironment, lc: Lifecycle, out: Outcome,
                 recorder: Recorder) -> str:
    """Return (and so stop the example) at the first sign it can never finish."""
    wf_id = f"contract:{lc.contract['id']}"
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(recorder.stuck.wait(), 1.0)
        if recorder.why is not None:
            return recorder.why
        if not out.created:
            continue
        with contextlib.suppress(Exception):
            hist = await env.client.get_workflow_handle(wf_id).fetch_history()
            for e in hist.events:
                name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
                if name in ("WORKFLOW_TASK_FAILED", "WORKFLOW_EXECUTION_FAILED"):
                    return f"{name}: {_failure_detail(e)}"


async def _drive(env: WorkflowEnvironment, engine: AsyncEngine, lc: Lifecycle,
                 out: Outcome) -> None:
    catalog = load_catalog(lc.catalog)
    async with engine.begin() as conn:
        version, _ = await apply_catalog(conn, catalog)
    out.started_at = await env.get_current_time()
    try:
        contract = load_contract(lc.contract)
        await start_contract(env.client, engine, contract, TASK_QUEUE, catalog_version=version)
        out.created = True
        out.creation = Answer(-1, "", "create", "ok")
    except BillowValidationError as exc:
        out.creation = Answer(-1, "", "create", "refused", problems=list(exc.problems),
                              message=str(exc))
        return
    except Exception as exc:
        out.creation = Answer(-1, "", "create", "error", message=f"{type(exc).__name__}: {exc}")
        return
    handle = env.client.get_workflow_handle(f"contract:{contract.id}")
    memo: Memo = {}  # what each correction's first send resolved to
    settled: set[str] = set()  # action instants already settled
    for i, action in enumerate(lc.actions):
        at = datetime.fromisoformat(action["at"].replace("Z", "+00:00"))
        if at > out.started_at + MAX_WORKFLOW_AGE:
            out.answers.append(Answer(i, action["at"], action["do"], "skipped",
                                      message="past the test server's 10-year limit"))
            continue
        await advance(env, at)
        out.answers.append(await _send(env, engine, handle, i, action, memo, lc.currency,
                                       settled))
    # Run on to the end: term end + payment terms + 31 days, as `billow simulate`.
    until, capped = await _horizon(env, handle, lc)
    if out.started_at is not None and until > out.started_at + MAX_WORKFLOW_AGE:
        until, capped = out.started_at + MAX_WORKFLOW_AGE, True
    out.horizon, out.horizon_capped = until, capped
    await advance(env, until)


ADVANCE_STEP = timedelta(days=30)


async def advance(env: WorkflowEnvironment, at: datetime) -> None:
    """`worker.simulate.advance_to` in steps of 30 days: one long ``env.sleep``
    is one RPC, and skipping years of a busy contract in it outlives the RPC's
    deadline ("Timeout expired", then "h2 protocol error")."""
    while (now := await env.get_current_time()) < at:
        await env.sleep(min(at - now, ADVANCE_STEP))


async def _settle(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], at: str,
                  settled: set[str]) -> None:
    """`settle` once per action instant. Each settle moves the clock one second,
    so a second action at the same instant settled again lands a second later,
    which can be exactly a boundary (two seconds before it): the time-skipping
    server's timer bug (see `settle`) then wedged the run ("h2 protocol error").
    Later actions at that instant only wait for the workflow to be idle. (The
    server's clock is not compared: it runs on in real time between skips.)"""
    if at not in settled:
        settled.add(at)
        await settle(env, handle)
        return
    with contextlib.suppress(Exception):  # a finished workflow has nothing pending
        await handle.query(ContractWorkflow.query_state)


async def _send(env: WorkflowEnvironment, engine: AsyncEngine, handle: WorkflowHandle[Any, Any],
                i: int, action: dict[str, Any], memo: Memo, currency: str,
                settled: set[str]) -> Answer:
    at, do = action["at"], action["do"]
    if do == "correct":
        # As the API: the update while the workflow runs, else the ledger.
        running = await _status(env.client, handle.id) == WorkflowExecutionStatus.RUNNING
        if running:
            await _settle(env, handle, at, settled)
        return await send_correction(engine, handle, i, action, memo, running=running,
                                     now=await env.get_current_time(), currency=currency)
    if do == "usage":
        try:
            report = await ingest_all(engine, action["events"])
        except Exception as exc:
            return Answer(i, at, do, "error", message=f"{type(exc).__name__}: {exc}"[:500])
        results = [r.model_dump(mode="json") for r in report.results]
        rejected = [r for r in report.results if r.status == "rejected"]
        return Answer(i, at, do, "refused" if rejected else "ok", result=results,
                      problems=[pair for r in rejected
                                for pair in reasons_from_message(r.reason or "")])
    if do == "compact":
        instant = datetime.fromisoformat(at.replace("Z", "+00:00"))
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            folded = await compact_usage(raw, before=utc_midnight(instant))
        return Answer(i, at, do, "ok", result={"events": folded.events})
    if await _status(env.client, handle.id) != WorkflowExecutionStatus.RUNNING:
        return Answer(i, at, do, "skipped", message="the workflow has closed")
    await _settle(env, handle, at, settled)
    if do == "amend":
        doc = dict(action["amendment"]) | {"received_at": at}
        try:
            amendment = parse_amendment(doc)
        except BillowValidationError as exc:
            return Answer(i, at, do, "refused", problems=list(exc.problems), message=str(exc))
        if action.get("via") == "signal":
            return await _call(i, at, do, doc,
                               handle.signal(ContractWorkflow.amend_signal, amendment))
        # The API's update id: the id and the content, so Temporal's update
        # cache never answers a different amendment sent under the same id.
        return await _call(i, at, do, doc, handle.execute_update(
            ContractWorkflow.amend, amendment, id=amend_update_id(amendment)))
    payment = await _resolve_payment(handle, action)
    if isinstance(payment, Answer):
        payment.index, payment.at = i, at
        return payment
    if action.get("via") == "signal":
        return await _call(i, at, do, payment.model_dump(mode="json"),
                           handle.signal(ContractWorkflow.pay_signal, payment))
    # The API's update id (api/invoices.py): a payment's identity, or a fresh one.
    update_id = (f"pay:{uuid.uuid4().hex}" if payment.payment_id is None else
                 f"pay:{payment.payment_id}:{payment.invoice}:{payment.amount.normalize():f}")
    return await _call(i, at, do, payment.model_dump(mode="json"),
                       handle.execute_update(ContractWorkflow.pay, payment, id=update_id))


async def _call(i: int, at: str, do: str, sent: Any, call: Any) -> Answer:
    try:
        result = await asyncio.wait_for(call, UPDATE_WALL_S)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        message = getattr(cause, "message", None) or str(exc)
        return Answer(i, at, do, "refused", problems=update_problems(cause, message),
                      message=message, sent=sent)
    except TimeoutError:
        return Answer(i, at, do, "error", message=f"no answer within {UPDATE_WALL_S:.0f} s",
                      sent=sent)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            # The workflow closed while the update was on its way: what the API
            # answers then (409 naming path.contract_id, api/contracts.py).
            return Answer(i, at, do, "refused", message=exc.message, sent=sent,
                          problems=[("path.contract_id", "the contract's workflow has closed")])
        return Answer(i, at, do, "error", message=f"RPCError: {exc.message}"[:500], sent=sent)
    except Exception as exc:
        return Answer(i, at, do, "error", message=f"{type(exc).__name__}: {exc}"[:500],
                      sent=sent)
    dumped = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
    return Answer(i, at, do, "ok", result=dumped, sent=sent)


async def _view(handle: WorkflowHandle[Any, Any], wait_s: float = UPDATE_WALL_S) -> ContractView:
    view: ContractView = await asyncio.wait_for(
        handle.query(ContractWorkflow.query_state), wait_s)
    return view


async def _resolve_payment(handle: WorkflowHandle[Any, Any],
                           action: dict[str, Any]) -> PaymentInput | Answer:
    """Turn ``usage#2``/``half`` into an invoice key and an amount, from the state."""
    try:
        view = await _view(handle)
    except Exception as exc:
        return Answer(0, "", "pay", "error", message=f"state query: {type(exc).__name__}: {exc}")
    ref = action["invoice"]
    kind, _, nth = ref.partition("#")
    # ``usage#1``: the second usage invoice still owing (else of all of them);
    # ``paid``: one already paid (the refusal is the point).
    of_kind = [inv for inv in view.invoices if inv.kind == kind or ref in ("latest", "paid")]
    owing = [inv for inv in of_kind if inv.status in ("open", "overdue")]
    settled = [inv for inv in of_kind if inv.status == "paid"]
    candidates = settled if ref == "paid" else owing or of_kind
    chosen = None
    if kind == "unknown":
        key = "usage:1999-01-01"
    elif nth and int(nth) < len(candidates):
        chosen = candidates[int(nth)]
    elif not nth and candidates:
        chosen = candidates[-1]
    if chosen is None and kind != "unknown":
        key = f"{kind}:{view.terms.starts_on.isoformat()}"
    if chosen is not None:
        key = chosen.key
    outstanding = chosen.outstanding if chosen is not None else Decimal(100)
    amounts = {"outstanding": outstanding, "half": (outstanding / 2).quantize(Decimal("0.01")),
               "over": outstanding + 1}
    try:
        amount = amounts.get(action["amount"]) or Decimal(action["amount"])
    except InvalidOperation:
        amount = Decimal(1)
    try:
        return PaymentInput(invoice=key, amount=amount, payment_id=action.get("payment_id"))
    except ValidationError as exc:  # the API refuses the body (422) naming the field
        return Answer(0, "", "pay", "refused", message=str(exc)[:300], problems=[
            (".".join(str(x) for x in e["loc"]), e["msg"]) for e in exc.errors()])


async def _status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The latest run's status, read from the raw describe response: the SDK's
    ``describe()`` fails on the time-skipping server once a Datetime search
    attribute was unset (it decodes the server's null as an ISO string)."""
    request = DescribeWorkflowExecutionRequest(
        namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id))
    try:
        resp = await asyncio.wait_for(
            client.workflow_service.describe_workflow_execution(request), UPDATE_WALL_S)
    except Exception:
        return None
    return WorkflowExecutionStatus(resp.workflow_execution_info.status)


async def _horizon(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any],
                   lc: Lifecycle) -> tuple[datetime, bool]:
    """Local end of term end + payment terms + 31 days, with the terms in force now."""
    try:
        t = (await _view(handle)).terms
        starts_on, term_end, tz = t.starts_on, t.term_end, t.timezone
        terms_days, cycle, anchor, cycle_anchor = (
            t.payment_terms_days, t.billing_cycle, t.billing_anchor, t.cycle_anchor)
    except Exception:
        from models.contract import resolve_terms

        r = resolve_terms(load_contract(lc.contract), load_catalog(lc.catalog))
        starts_on, term_end, tz = r.starts_on, r.term_end, r.timezone
        terms_days, cycle, anchor, cycle_anchor = (
            r.payment_terms_days, r.billing_cycle, r.billing_anchor, r.cycle_anchor)
    until = local_midnight_utc(term_end + timedelta(days=min(terms_days, 20_000) + 32), tz)
    today = _local_today(await env.get_current_time(), tz)
    periods = [] if today >= term_end else billing_periods(
        starts_on, term_end, cycle, anchor, tz, cycle_anchor=cycle_anchor,
        from_date=max(starts_on, today))
    # Horizons off the whole hour: a horizon on an instant where a timer fires
    # would observe the workflow in the middle of that step.
    if len(periods) > MAX_PERIODS_AFTER_TIMELINE:
        return periods[MAX_PERIODS_AFTER_TIMELINE].end + timedelta(days=3, seconds=1717), True
    return until - timedelta(seconds=1717), False


def _local_today(now: datetime, tz: str) -> date:
    from models.periods import local_date

    return local_date(now, tz)


# --- after the run -------------------------------------------------------------------


def _failure_detail(e: Any) -> str:
    for attr in ("workflow_task_failed_event_attributes",
                 "workflow_execution_failed_event_attributes"):
        if e.HasField(attr):
            f = getattr(e, attr).failure
            msg = f.message
            if f.HasField("cause"):
                msg += f" (cause: {f.cause.message})"
            if f.stack_trace:
                msg += " @ " + f.stack_trace.strip().splitlines()[-1].strip()[:200]
            return str(msg[:600])
    for attr in ("timer_started_event_attributes", "timer_fired_event_attributes",
                 "timer_canceled_event_attributes"):
        if e.HasField(attr):
            return str(getattr(e, attr).timer_id)
    return ""


async def _observe(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any],
                   out: Outcome, wait_s: float) -> None:
    """Histories of every run, the state query and the latest run's status.

    The history is read again while its last task is still in flight (a
    history read mid-task shows the workflow between two timers), and the
    state is queried once it is idle, so it matches the ledger read after."""
    for _ in range(20):
        out.histories = await _histories(env, handle, wait_s)
        last = out.histories[-1].events[-1][0] if out.histories else ""
        if out.aborted or last not in ("WORKFLOW_TASK_SCHEDULED", "WORKFLOW_TASK_STARTED"):
            break
        await asyncio.sleep(0.25)
    try:
        out.view = (await _view(handle, wait_s)).model_dump(mode="json")
    except Exception as exc:
        out.query_error = f"{type(exc).__name__}: {exc}"[:500]
    status = await _status(env.client, handle.id)
    out.status = status.name if status is not None else None


async def _histories(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any],
                     wait_s: float) -> list[HistoryRun]:
    runs: list[HistoryRun] = []
    run_id: str | None = None
    with contextlib.suppress(Exception):
        while True:
            h = env.client.get_workflow_handle(handle.id, run_id=run_id)
            hist = await asyncio.wait_for(h.fetch_history(), wait_s)
            events = [(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_"),
                       _failure_detail(e)) for e in hist.events]
            runs.insert(0, HistoryRun(run_id=hist.run_id, events=events))
            first = hist.events[0].workflow_execution_started_event_attributes
            run_id = first.continued_execution_run_id or None
            if run_id is None:
                break
    return runs
