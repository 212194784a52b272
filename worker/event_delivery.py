"""Starting the webhook endpoints' delivery workflows (API and worker share it)."""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from models.events import DeliveryOptions, EndpointDeliveryInput
from workflows.webhook_delivery import WebhookEndpointWorkflow, endpoint_workflow_id

log = logging.getLogger("billow.webhooks")

__all__ = ["ensure_endpoint_workflows", "start_endpoint_workflow"]


async def start_endpoint_workflow(client: Client, task_queue: str, endpoint_id: str,
                                  url: str, options: DeliveryOptions) -> None:
    """Start the endpoint's workflow unless it runs (then nothing changes)."""
    await client.start_workflow(
        WebhookEndpointWorkflow.run,
        EndpointDeliveryInput(endpoint_id=endpoint_id, options=options),
        id=endpoint_workflow_id(endpoint_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary=f"deliver events to {url}",
    )


async def ensure_endpoint_workflows(client: Client, engine: AsyncEngine, task_queue: str,
                                    options: DeliveryOptions) -> int:
    """Every enabled endpoint has its workflow (worker start: one may have been
    registered while Temporal was down). Returns how many endpoints there are."""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT id, url FROM webhook_endpoints WHERE status = 'enabled' ORDER BY id"))).all()
    for row in rows:
        await start_endpoint_workflow(client, task_queue, row.id, row.url, options)
    if rows:
        log.info("webhook delivery running for %d endpoint(s)", len(rows))
    return len(rows)
