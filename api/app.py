"""FastAPI application factory.

``create_app`` takes its dependencies (database engine, Temporal client
factory) from the caller, so tests and ``billow api`` wire the same app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client


@dataclass
class AppDeps:
    engine: AsyncEngine
    connect_temporal: Callable[[], Awaitable[Client]]
    temporal_ui_url: str
    namespace: str
    task_queue: str
    client: Client | None = None

    async def temporal(self) -> Client:
        if self.client is None:
            self.client = await self.connect_temporal()
        return self.client


def create_app(deps: AppDeps) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await deps.engine.dispose()

    app = FastAPI(
        title="billow",
        version="0.1.0",
        summary="Temporal-orchestrated billing for enterprise contracts",
        lifespan=lifespan,
    )
    app.state.deps = deps

    @app.get("/healthz", tags=["ops"], summary="Liveness and dependency check")
    async def healthz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with deps.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure means "not healthy"; report it
            checks["database"] = f"error: {exc.__class__.__name__}"
        try:
            client = await deps.temporal()
            await client.service_client.check_health()
            checks["temporal"] = "ok"
        except Exception as exc:
            deps.client = None
            checks["temporal"] = f"error: {exc.__class__.__name__}"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if healthy else "degraded", **checks},
                            status_code=200 if healthy else 503)

    return app
