"""A real billow API for the tests: uvicorn serving ``create_app`` on a free port.

One server runs for the session in the tests' event loop (so ``db``, the dev
Temporal client and an in-process worker share it) and is always stopped;
``api`` hands each test an emptied database, fresh keys and a task queue. The
CLI is called from a thread (`helpers.run_cli`), so the server keeps serving
while a synchronous command waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.api_keys import create_api_key
from activities.db import make_engine
from api.app import AppDeps, create_app
from tests.api.helpers import TEMPORAL_UI, WEBHOOK_SECRET, ApiServer
from worker.main import build_worker


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (pytest keeps Ctrl-C)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture(scope="session")
async def _api_server(
    database_url: str, dev_temporal_env: WorkflowEnvironment
) -> AsyncIterator[ApiServer]:
    """One uvicorn for the session (tests get fresh keys and a fresh task queue)."""
    client = dev_temporal_env.client

    async def connect() -> Client:
        return client

    deps = AppDeps(
        engine=make_engine(database_url), connect_temporal=connect,
        temporal_ui_url=TEMPORAL_UI, namespace=client.namespace, task_queue="api-test",
        client=client, webhook_secret=WEBHOOK_SECRET, workflow_timeout_seconds=15,
    )
    server = _Server(uvicorn.Config(create_app(deps), host="127.0.0.1", port=0,
                                    log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield ApiServer(f"http://127.0.0.1:{port}", deps, {}, "api-test", client)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def api(_api_server: ApiServer, db: AsyncEngine) -> ApiServer:
    """The running API on an emptied database, with one key per scope.

    Each test gets its own task queue, so workflows left running on the
    session's Temporal server by earlier tests are never picked up again.
    """
    task_queue = f"api-test-{uuid.uuid4().hex[:8]}"
    deps = _api_server.deps
    deps.task_queue = task_queue
    deps.webhook_secret = WEBHOOK_SECRET
    keys: dict[str, str] = {}
    async with db.begin() as conn:
        for scope in ("crm", "usage", "ops"):
            keys[scope] = (await create_api_key(conn, [scope], f"test {scope}")).key
    return replace(_api_server, keys=keys, task_queue=task_queue)


@pytest.fixture
async def worker(api: ApiServer, db: AsyncEngine) -> AsyncIterator[None]:
    """The real worker (workflows + activities) on the API's task queue."""
    async with build_worker(api.client, db, api.task_queue):
        yield
