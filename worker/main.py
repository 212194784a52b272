"""The Temporal worker process: ContractWorkflow plus the ledger and payment
activities, wired to one database engine."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker

from activities.db import make_engine
from activities.ledger import LedgerActivities
from activities.payments import ManualGateway, PaymentActivities, PaymentGateway
from worker.settings import Settings
from worker.temporal_client import connect
from workflows.contract import ContractWorkflow

log = logging.getLogger("billow.worker")


def activities_for(engine: AsyncEngine, gateway: PaymentGateway) -> Sequence[Any]:
    ledger = LedgerActivities(engine)
    payments = PaymentActivities(engine, gateway)
    return [
        ledger.register_contract,
        ledger.update_contract,
        ledger.record_amendment,
        ledger.grant_credits,
        ledger.close_period,
        ledger.record_payment,
        ledger.dunning_step,
        ledger.expire_credits,
        payments.charge_invoice,
    ]


WORKFLOWS = [ContractWorkflow]


def build_worker(
    client: Client, engine: AsyncEngine, task_queue: str, gateway: PaymentGateway | None = None
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=activities_for(engine, gateway or ManualGateway()),
        # In-flight activities get this long to finish on shutdown.
        graceful_shutdown_timeout=timedelta(seconds=30),
    )


async def run_worker(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    assert settings.database_url
    engine = make_engine(settings.database_url)
    client = await connect(settings)
    worker = build_worker(client, engine, settings.task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling task queue %r on %s", settings.task_queue, client.namespace)
    async with worker:
        await stop.wait()
        log.info("shutting down: finishing in-flight activities")
    await engine.dispose()
