"""``GET /metrics`` on the API port: operational series for anyone, business with a key.

Probes and the documented scrape configs (``deploy/compose/prometheus``,
the k8s ``prometheus.io/*`` annotations, the liveness probe) read the API's
``/metrics`` without credentials; they get what the API is watched by:
request counts and latency, usage ingestion counts, ``process_*`` and
``python_*``. Everything else in the process registry (billed amounts,
invoices, credits, dunning: whatever a process happens to count, ``billow
up`` runs everything in one) is business data and needs an ``ops`` API key
(``Authorization: Bearer <key>``). New series are hidden by default: the
open view is an allow-list.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.requests import Request
from starlette.responses import Response

from activities.api_keys import Scope
from activities.api_keys import authenticate as lookup_key
from api.deps import AppDeps
from api.problems import problem_response
from api.workflow_calls import RETRY_AFTER

__all__ = ["OPEN_PREFIXES", "install_metrics_route"]

# Metric family names (without ``_total``) served without a key.
OPEN_PREFIXES = (
    "billow_http_",
    "billow_usage_events",  # counts of events by outcome, no amounts
    "billow_usage_ingest_races",
    "process_",
    "python_",
)


class _OpenView(CollectorRegistry):
    """The process registry restricted to the open families."""

    def __init__(self) -> None:
        super().__init__(auto_describe=False)

    def collect(self) -> Iterable[Metric]:
        for family in REGISTRY.collect():
            if family.name.startswith(OPEN_PREFIXES):
                yield family


_OPEN = _OpenView()


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def install_metrics_route(app: FastAPI, deps: AppDeps) -> None:
    async def metrics(request: Request) -> Response:
        registry: CollectorRegistry = _OPEN
        if "authorization" in request.headers:
            token = _bearer(request)
            try:
                async with deps.engine.connect() as conn:
                    info = await lookup_key(conn, token) if token else None
            except Exception:
                return problem_response(503, "unavailable", "Service Unavailable",
                                        "the database is unavailable; try again", (),
                                        request.url.path, {"Retry-After": RETRY_AFTER})
            if info is None:
                return problem_response(
                    401, "unauthorized", "Unauthorized", "invalid or revoked API key",
                    [("header.authorization", "unknown or revoked API key")],
                    request.url.path, {"WWW-Authenticate": 'Bearer realm="billow"'})
            if Scope.OPS in info.scopes:  # the whole registry
                registry = REGISTRY
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)

