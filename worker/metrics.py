"""Exposing billow's Prometheus metrics (the counters are ``activities/metrics.py``).

Two processes, two endpoints:

- the worker serves the process-wide ``prometheus_client`` registry —
  billow's counters plus ``process_*``/``python_*`` — on
  ``BILLOW_METRICS_HOST:BILLOW_WORKER_APP_METRICS_PORT`` (default 9465),
  next to the Temporal SDK's own exporter on ``BILLOW_WORKER_METRICS_PORT``
  (default 9464, ``worker/telemetry.py``). The app port opens once the worker
  is connected to Temporal and closes on shutdown, so probes use it too.
- the API serves the same registry on ``GET /metrics`` of its own port, with
  per-request metrics from ``HttpMetricsMiddleware``:
  ``billow_http_requests_total{method,route,status}``,
  ``billow_http_request_duration_seconds{method,route}`` and
  ``billow_http_requests_in_progress``. ``route`` is the route template
  (``/v1/contracts/{contract_id}``), never the raw path, so label
  cardinality stays bounded.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

import activities.metrics  # noqa: F401  (registers billow's counters in REGISTRY)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from worker.settings import Settings

log = logging.getLogger("billow.metrics")

HTTP_REQUESTS = Counter(
    "billow_http_requests", "HTTP requests served by the API.", ("method", "route", "status")
)
HTTP_DURATION = Histogram(
    "billow_http_request_duration_seconds", "HTTP request latency.", ("method", "route"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_IN_PROGRESS = Gauge("billow_http_requests_in_progress", "HTTP requests being served.")
UNMATCHED = "<unmatched>"


class AppMetricsServer:
    """The worker's billow-metrics HTTP server (a daemon thread)."""

    def __init__(self, server: Any, thread: Any, address: str) -> None:
        self._server = server
        self._thread = thread
        self.address = address

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_app_metrics_server(settings: Settings) -> AppMetricsServer | None:
    """Serve the registry on the worker's app metrics port (``None``: disabled/failed)."""
    port = settings.worker_app_metrics_port
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=settings.metrics_host)
    except OSError as exc:
        log.error("billow metrics disabled: cannot bind %s:%d: %s (set "
                  "BILLOW_WORKER_APP_METRICS_PORT)", settings.metrics_host, port, exc.strerror)
        return None
    address = f"{settings.metrics_host}:{port}"
    log.info("billow metrics on http://%s/metrics", address)
    return AppMetricsServer(server, thread, address)


class HttpMetricsMiddleware:
    """Pure ASGI middleware counting and timing every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes becomes a 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        HTTP_IN_PROGRESS.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            HTTP_IN_PROGRESS.dec()
            # The router records the matched route in the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = str(scope.get("method", "GET"))
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - start)


async def metrics_endpoint(_: Request) -> Response:
    from starlette.responses import Response

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def install_http_metrics(app: FastAPI) -> None:
    """Add request metrics and ``GET /metrics`` (Prometheus text format) to ``app``."""
    app.add_middleware(HttpMetricsMiddleware)
    app.add_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
