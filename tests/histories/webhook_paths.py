"""Webhook endpoint workflow paths whose commands changed, for the replay tests.

``webhook_disabled``: deliveries fail until the endpoint is disabled. Up to v5
the workflow ended there; from v6 it waits for a replay
(``disabled-endpoint-waits``), and this scenario then deletes the endpoint,
which ends it. Each version's history replays on today's code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.events import emit_event
from models.events import DeliveryOptions, EventType
from worker.event_delivery import start_endpoint_workflow
from worker.main import build_worker

QUEUE = "record-webhook"
OPTIONS = DeliveryOptions(initial_retry_seconds=0.2, max_retry_seconds=0.5, poll_seconds=0.1,
                          max_wait_seconds=1.0, give_up_after_seconds=2.0)


@dataclass
class _Endpoint:
    handle: WorkflowHandle[Any, Any] | None = None


async def _failing_receiver() -> tuple[asyncio.Server, str]:
    """An HTTP receiver that answers every request 500."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n")
                       if h.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n"
                     b"connection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hooks"


async def _status(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return str(await conn.scalar(text(
            "SELECT status FROM webhook_endpoints WHERE id = 'we_record'")))


async def webhook_disabled(env: WorkflowEnvironment, engine: AsyncEngine) -> _Endpoint:
    server, url = await _failing_receiver()
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO webhook_endpoints (id, url, description, event_types, secret, status, "
            "cursor_seq) VALUES ('we_record', :url, '', '[]', 'whsec_cmVjb3Jk', 'enabled', 0)"),
            {"url": url})
        await emit_event(conn, EventType.PAYMENT_RECORDED, "c-record", {"n": 1})
    try:
        async with build_worker(env.client, engine, QUEUE):
            await start_endpoint_workflow(env.client, QUEUE, "we_record", url, OPTIONS)
            handle = env.client.get_workflow_handle("webhook-endpoint:we_record")
            async with asyncio.timeout(60):
                while await _status(engine) != "disabled":  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.5)  # v6 waits: its wait activity sees the disable
                async with engine.begin() as conn:  # ends a v6 run (a v5 run has ended)
                    await conn.execute(text(
                        "UPDATE webhook_endpoints SET status = 'deleted' WHERE id = 'we_record'"))
                result = await handle.result()
            assert result in ("disabled", "deleted"), result
    finally:
        server.close()
    return _Endpoint(handle)


WEBHOOK_PATHS = {"webhook_disabled": webhook_disabled}
