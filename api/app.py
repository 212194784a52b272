"""FastAPI application factory.

``create_app`` takes its dependencies (database engine, Temporal client
factory, webhook secret) from the caller, so tests and ``billow api`` wire the
same app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api import (
    catalog,
    contracts,
    corrections,
    events,
    exports,
    invoices,
    ledger_views,
    usage,
    webhooks,
)
from api.deps import AppDeps
from api.docs_pages import install_docs
from api.idempotency import IdempotencyMiddleware
from api.metrics_view import install_metrics_route
from api.problems import PROBLEM_JSON, add_problem_schemas, install_problem_handlers
from api.schemas import CrmWebhookPayload
from api.security import ApiKeyMiddleware, BodyLimitMiddleware
from worker.logging_setup import configure_from_settings
from worker.metrics import HttpMetricsMiddleware

__all__ = ["AppDeps", "create_app"]

DESCRIPTION = """
HTTP API of **billow**: contracts from the CRM, amendments, usage, invoices and payments,
catalog. Every contract runs as the Temporal workflow `contract:<contract id>`.

**Authentication.** `Authorization: Bearer <API key>` on every `/v1` path except the CRM
webhook (signed instead). Keys are created with `billow apikey create --scope ...` and carry
scopes: `crm` (contracts, amendments, reading invoices), `usage` (sending usage), `ops`
(everything). No or an invalid key: **401**, answered from the headers before any of the
body is read; a key outside its scope: **403**. `/healthz`, `/docs` and `/openapi.json`
are open; `/metrics` shows operational series to anyone and everything with an `ops` key.

**Retries are always safe.** Every mutating request accepts an `Idempotency-Key` header
(up to 200 visible ASCII characters, scoped to your API key and the route): a retry with
the same key and body answers with the first answer (`Idempotent-Replayed: true`); the
same key with another body is a **409** and changes nothing. A payment's `payment_id`
defaults to it. When billow cannot tell within its deadline whether a change took effect
it answers **504** (or **503**) with `Retry-After` and says the change may still apply:
retry with the same key or id. Such answers are not stored, so the retry finds out.

**Errors** are `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`,
`instance` and `errors: [{field, reason}]` naming each offending field (`a.b[0].c`; query,
path and header parameters as `query.<name>`, `path.<name>`, `header.<name>`). Unknown fields
are errors. Request bodies are limited to 1 MB (5 MB for `POST /v1/usage`): **413**. A request
that fails changes nothing.

**Decimals** are strings, in requests and responses (`"0.03"`, never `0.03`).
"""

TAGS: list[dict[str, Any]] = [
    {"name": "contracts", "description": "Create contracts (idempotent on the contract id), "
     "amend them while they run, read their live state, list them."},
    {"name": "usage", "description": "Usage ingestion: batches of up to 10,000 events, "
     "deduplicated by event id for all time."},
    {"name": "invoices", "description": "Invoices (finalized invoices are immutable and "
     "numbered) and payments."},
    {"name": "catalog", "description": "Meters, rate cards and plans. Every applied document "
     "is a new, immutable version; contracts stay on the version they were created under."},
    {"name": "webhooks", "description": (
        "Signed webhooks. The CRM signs each delivery with the shared secret "
        "`BILLOW_WEBHOOK_SECRET`: `X-Billow-Timestamp: <unix seconds>` and "
        "`X-Billow-Signature: v1=<hex HMAC-SHA256(secret, timestamp + '.' + raw body)>`. "
        "Deliveries older or newer than 5 minutes (`BILLOW_WEBHOOK_TOLERANCE_SECONDS`), with "
        "a wrong signature or already accepted (replays) are refused.")},
    {"name": "events", "description": (
        "Events (`invoice.finalized`, `invoice.paid`, `payment.recorded`, `contract.*`, "
        "`credits.*` ...), each written in the same transaction as the change it reports. "
        "List them from any point (`GET /v1/events?after=`), or register a webhook endpoint: "
        "deliveries are signed as Standard Webhooks, at least once, in order, retried for "
        "three days.")},
    {"name": "exports", "description": "Finance exports: the journal by date range and the "
     "deferred-revenue roll-forward (JSON or CSV), and each contract's credit ledger."},
    {"name": "ops", "description": "Health."},
]


def create_app(deps: AppDeps) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        configure_from_settings()  # BILLOW_LOG_FORMAT; after uvicorn set up its loggers
        yield
        await deps.engine.dispose()

    app = FastAPI(
        title="billow",
        version="0.1.0",
        summary="Temporal-orchestrated billing for enterprise contracts",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,
        docs_url=None,  # served from bundled assets instead of a CDN (api/docs_pages.py)
        redoc_url=None,
    )
    app.state.deps = deps
    install_docs(app)
    install_problem_handlers(app)
    # Added last = outermost. Request metrics count every request; the API key
    # is checked from the headers before any of the body is read (an
    # unauthenticated client costs no memory or bandwidth); then the body
    # limit buffers the body; then Idempotency-Key answers retries.
    app.add_middleware(IdempotencyMiddleware, deps=deps)
    app.add_middleware(BodyLimitMiddleware, deps=deps)
    app.add_middleware(ApiKeyMiddleware, deps=deps)
    app.add_middleware(HttpMetricsMiddleware)
    install_metrics_route(app, deps)

    for module in (contracts, ledger_views, usage, invoices, corrections, catalog, webhooks):
        app.include_router(module.router)
    app.include_router(events.events_router)
    app.include_router(events.endpoints_router)
    app.include_router(exports.router)

    @app.get("/healthz", tags=["ops"], summary="Liveness and dependency check")
    async def healthz() -> JSONResponse:
        """`200 {"status": "ok", "database": "ok", "temporal": "ok"}`, or 503 with the
        failing dependency."""
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

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary,
                description=app.description, routes=app.routes, tags=app.openapi_tags,
            )
            add_problem_schemas(schema)
            _problem_422s(schema)
            components = schema["components"]["schemas"]
            payload = CrmWebhookPayload.model_json_schema(
                ref_template="#/components/schemas/{model}")
            for name, sub in payload.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components["CrmWebhookPayload"] = payload
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _problem_422s(schema: dict[str, Any]) -> None:
    """FastAPI documents its 422 as ``HTTPValidationError``; billow answers problem+json."""
    from api.problem_examples import DEFAULT

    problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"},
                              "example": DEFAULT[422]}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            r422 = responses.get("422")
            if r422 is not None and PROBLEM_JSON not in r422.get("content", {}):
                responses["422"] = {"description": "Invalid input; `errors` names each field",
                                    "content": problem}
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
