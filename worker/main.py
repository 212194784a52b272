"""The Temporal worker process: ContractWorkflow plus the ledger and payment
activities, wired to one database engine."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError
from temporalio.worker import Interceptor, Worker

from activities.corrections import CorrectionActivities
from activities.db import make_engine
from activities.ledger import LedgerActivities
from activities.payments import (
    ManualGateway,
    PaymentActivities,
    PaymentGateway,
    SimulatedCardGateway,
)
from activities.usage_rollup import UsageActivities
from activities.webhook_delivery import WebhookActivities
from worker.event_delivery import ensure_endpoint_workflows
from worker.logging_setup import configure_logging
from worker.metrics import start_app_metrics_server
from worker.namespace_check import check_namespace
from worker.schedules import ensure_compaction_schedule
from worker.settings import Settings
from worker.telemetry import worker_runtime
from worker.temporal_client import connect_with_retry
from worker.tuning import WorkerTuning
from workflows.contract import ContractWorkflow
from workflows.usage_compaction import UsageCompactionWorkflow
from workflows.webhook_delivery import WebhookEndpointWorkflow

log = logging.getLogger("billow.worker")


def activities_for(engine: AsyncEngine, gateway: PaymentGateway) -> Sequence[Any]:
    ledger = LedgerActivities(engine)
    payments = PaymentActivities(engine, gateway)
    usage = UsageActivities(engine)
    webhooks = WebhookActivities(engine)
    corrections = CorrectionActivities(engine)
    return [
        ledger.register_contract,
        ledger.update_contract,
        ledger.record_amendment,
        ledger.grant_credits,
        ledger.close_period,
        ledger.record_payment,
        ledger.dunning_step,
        ledger.expire_credits,
        ledger.reserve_term_extension,
        payments.charge_invoice,
        payments.charge_card,
        payments.record_charge,
        payments.refund,
        corrections.correct_invoice,
        usage.compact_usage,
        webhooks.wait_for_events,
        webhooks.deliver_events,
        webhooks.disable_endpoint,
    ]


WORKFLOWS = [ContractWorkflow, UsageCompactionWorkflow, WebhookEndpointWorkflow]


def build_worker(
    client: Client,
    engine: AsyncEngine,
    task_queue: str,
    gateway: PaymentGateway | None = None,
    graceful_shutdown: timedelta = timedelta(seconds=30),
    tuning: WorkerTuning | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=activities_for(engine, gateway or ManualGateway()),
        interceptors=interceptors,
        # In-flight activities get this long to finish on shutdown (then they
        # are cancelled; Temporal retries them elsewhere, they are idempotent).
        graceful_shutdown_timeout=graceful_shutdown,
        **(tuning or WorkerTuning()).worker_kwargs(),
    )


def gateway_for(settings: Settings) -> PaymentGateway:
    """The payment gateway the settings name (``BILLOW_PAYMENT_GATEWAY``)."""
    if settings.payment_gateway == "simulated_card":
        return SimulatedCardGateway()
    return ManualGateway()


async def run_worker(settings: Settings, *, exit_process: bool = True) -> None:
    """Run until SIGTERM/SIGINT (graceful: in-flight activities get
    ``worker_graceful_shutdown_seconds``) or until the worker fails fatally
    (then exit non-zero, so the process gets restarted).

    While Temporal is unreachable (not started yet, restarting) the worker
    waits and retries with backoff instead of exiting (`connect_with_retry`).

    ``exit_process`` (what ``billow worker`` uses): after the orderly
    shutdown, end the process with `exit_now` instead of returning. The
    Temporal SDK's core runs on Rust threads that call into Python (the core
    log forwarder of `worker_runtime`, the completion of SDK futures), and its
    runtime was only freed by the interpreter's final GC. A call that lands
    during finalization aborts the process (``Fatal Python error:
    PyGILState_Release ... Python runtime state: finalizing``), or the
    runtime's shutdown waits forever for a thread that waits for the GIL (a
    hang after "worker stopped"); temporalio/sdk-python#300. Nothing is left
    to do by then, so the worker skips finalization: atexit handlers
    (logging, OpenTelemetry span export) and stdio are flushed first.
    """
    configure_logging(settings.log_format, settings.log_level)
    # Held until the process ends: if a GC freed the runtime while its core
    # threads still call into Python, freeing it would wait on them forever.
    runtime = worker_runtime(settings)
    try:
        await _run_worker(settings, runtime)
    except BaseException:
        if not exit_process:
            raise
        log.exception("worker failed")
        exit_now(1)
    if exit_process:
        exit_now(0)


def exit_now(code: int) -> NoReturn:
    """Flush what the process wrote and end it without interpreter finalization."""
    atexit._run_exitfuncs()  # logging.shutdown, the OpenTelemetry provider's shutdown ...
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


async def _run_worker(settings: Settings, runtime: Runtime) -> None:
    assert settings.database_url
    engine = make_engine(settings.database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before connecting: a SIGTERM while Temporal is unreachable stops the wait.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        client = await connect_with_retry(settings, runtime=runtime, stop=stop)
        if client is None:
            log.info("stopped before Temporal was reachable")
            return
        await _serve(settings, client, engine, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await engine.dispose()


async def _serve(settings: Settings, client: Client, engine: AsyncEngine,
                 stop: asyncio.Event) -> None:
    await check_namespace(client)
    worker = build_worker(
        client,
        engine,
        settings.task_queue,
        gateway_for(settings),
        graceful_shutdown=timedelta(seconds=settings.worker_graceful_shutdown_seconds),
        tuning=settings.worker_tuning(),
    )
    if settings.usage_compaction_minutes:
        every = timedelta(minutes=settings.usage_compaction_minutes)
        try:
            await ensure_compaction_schedule(client, settings.task_queue, every)
        except RPCError as exc:
            # Contracts do not depend on it (rating reads raw events until a
            # compaction has run): keep working, say why it is missing.
            log.warning("usage compaction schedule not created: %s", exc)
    try:
        await ensure_endpoint_workflows(client, engine, settings.task_queue,
                                        settings.delivery_options)
    except Exception as exc:  # billing does not depend on it; say why deliveries wait
        log.warning("webhook delivery workflows not checked: %s", exc)
    log.info("worker polling task queue %r on %s", settings.task_queue, client.namespace)
    running = asyncio.create_task(worker.run())
    stopping = asyncio.create_task(stop.wait())
    metrics_server = start_app_metrics_server(settings)
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            log.info(
                "shutting down: finishing in-flight activities (up to %ss)",
                settings.worker_graceful_shutdown_seconds,
            )
            await worker.shutdown()
        await running  # a fatal worker error propagates from here
        log.info("worker stopped")
    finally:
        stopping.cancel()
        if metrics_server is not None:
            metrics_server.stop()
