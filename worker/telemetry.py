"""Temporal SDK telemetry: the Prometheus runtime and optional OpenTelemetry tracing.

- ``worker_runtime``: an SDK ``Runtime`` whose Prometheus exporter serves the
  SDK's own metrics (``temporal_worker_task_slots_available``,
  ``temporal_activity_execution_latency`` ...) on
  ``BILLOW_METRICS_HOST:BILLOW_WORKER_METRICS_PORT`` (default 127.0.0.1:9464; the image
  binds 0.0.0.0),
  and whose core logs go through Python logging (so JSON logs stay JSON).
  A port that cannot be bound is logged and the worker runs without SDK
  metrics: observability never stops billing (the readiness probe, on the
  app metrics port, still tells).
- ``tracing_interceptors``: with ``BILLOW_OTEL_ENABLED=true``, the
  ``temporalio.contrib.opentelemetry.TracingInterceptor`` (client and worker:
  workflow starts, signals, updates, workflow and activity executions),
  exporting through the OpenTelemetry SDK (``pip install billow[otel]``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

if TYPE_CHECKING:
    from temporalio.client import Interceptor

    from worker.settings import Settings

log = logging.getLogger("billow.telemetry")


def core_logging_config() -> LoggingConfig:
    """The SDK core's warnings through Python logging (``temporalio.core``), as
    every billow process that runs a worker must: the SDK's default writes them
    to stdout, and a stdout nobody reads stops the core (RESULTS section 10)."""
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )


def sdk_metrics_address(settings: Settings) -> str | None:
    if settings.worker_metrics_port == 0:
        return None
    host = settings.metrics_host
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{settings.worker_metrics_port}"


def worker_runtime(settings: Settings) -> Runtime:
    """The worker's SDK runtime, serving Temporal SDK metrics when configured."""
    address = sdk_metrics_address(settings)
    if address is not None:
        try:
            runtime = Runtime(telemetry=TelemetryConfig(
                logging=core_logging_config(), metrics=PrometheusConfig(bind_address=address)))
        except ValueError as exc:  # "Failed starting Prometheus exporter: Address in use"
            log.error("Temporal SDK metrics disabled: %s (set BILLOW_WORKER_METRICS_PORT)", exc)
        else:
            log.info("Temporal SDK metrics on http://%s/metrics", address)
            return runtime
    return Runtime(telemetry=TelemetryConfig(logging=core_logging_config()))


_tracing_configured = False


def tracing_interceptors(settings: Settings) -> list[Interceptor]:
    """``[TracingInterceptor()]`` when OpenTelemetry is enabled, else ``[]``.

    Given to ``Client.connect``, it also applies to workers built on that client.
    """
    if not settings.otel_enabled:
        return []
    try:
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as exc:  # opentelemetry-api missing
        raise RuntimeError(
            "BILLOW_OTEL_ENABLED=true needs OpenTelemetry: pip install 'billow[otel]'"
        ) from exc
    _configure_tracer_provider(settings)
    return [TracingInterceptor()]


def _configure_tracer_provider(settings: Settings) -> None:
    """Install an SDK tracer provider exporting spans, once per process.

    Without ``opentelemetry-sdk`` the global (no-op or externally configured,
    e.g. by ``opentelemetry-instrument``) provider is left alone.
    """
    global _tracing_configured
    if _tracing_configured or settings.otel_exporter == "none":
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("opentelemetry-sdk is not installed: spans go to the global tracer provider")
        return
    exporter: SpanExporter
    if settings.otel_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise RuntimeError(
                    "BILLOW_OTEL_EXPORTER=otlp needs an OTLP exporter: pip install "
                    "opentelemetry-exporter-otlp (or set BILLOW_OTEL_EXPORTER=console)"
                ) from exc
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracing_configured = True
    log.info("OpenTelemetry tracing on (%s exporter)", settings.otel_exporter)
