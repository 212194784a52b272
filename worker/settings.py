"""Runtime configuration, read from the environment (``BILLOW_`` prefix).

Only ``worker`` and ``api`` import this module, and only inside functions:
nothing reads settings at import time of ``models`` or ``workflows``. The
conventional unprefixed ``DATABASE_URL`` and ``TEMPORAL_ADDRESS`` are honoured
too, so a user who sets them gets their services instead of the embedded ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from documents.view import Seller
from models.events import DeliveryOptions
from worker.tuning import WorkerTuning


class Settings(BaseSettings):
    """Every knob billow reads. ``None`` means "use the embedded service"."""

    model_config = SettingsConfigDict(env_prefix="BILLOW_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BILLOW_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL (postgresql+asyncpg://...). Unset: embedded PostgreSQL.",
    )
    temporal_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BILLOW_TEMPORAL_ADDRESS", "TEMPORAL_ADDRESS"),
        description="host:port of a Temporal frontend. Unset: embedded dev server.",
    )
    temporal_namespace: str = "default"
    task_queue: str = "billow"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    data_dir: Path = Path("./.billow")
    # Ops CLI -> API. BILLOW_API_URL; unset: the local API (api_host:api_port).
    api_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("BILLOW_API_URL"),
        description="Base URL of the billow API the ops commands call.",
    )
    api_key: str | None = None  # BILLOW_API_KEY, sent by the ops commands
    # CRM webhook: HMAC-SHA256 shared secret; unset disables the webhook.
    webhook_secret: str | None = None
    webhook_tolerance_seconds: int = 300
    api_idempotency_lease_seconds: float = Field(
        default=10, gt=0, description="How long a request's Idempotency-Key claim outlives a "
        "crashed API process (renewed every third of it while the request runs).")

    # --- invoice documents (SPEC.md section 13) ---
    seller_name: str = Field(default="billow", description="Seller name on invoice documents.")
    seller_address: str = Field(
        default="", description="Seller address on invoices; lines separated by newlines.")
    seller_tax_id: str = Field(default="", description="Seller tax id (VAT, EIN) on invoices.")
    seller_email: str = Field(default="", description="Seller billing contact on invoices.")
    seller_payment_instructions: str = Field(
        default="", description="How to pay (bank, IBAN, reference); lines separated by newlines.")
    document_locale: str = Field(
        default="en_US", description="Locale of invoice documents (amounts, dates), e.g. de_DE.")

    # --- events and webhooks (SPEC.md section 13) ---
    webhook_retry_hours: float = Field(
        default=72, gt=0, description="Retry a failing webhook delivery this long, then "
                                      "disable the endpoint.")
    webhook_retry_initial_seconds: float = Field(
        default=5, gt=0, description="First retry delay (doubles up to the maximum).")
    webhook_retry_max_seconds: float = Field(default=3600, gt=0,
                                             description="Longest delay between retries.")
    event_poll_seconds: float = Field(
        default=1, gt=0, description="How often an idle endpoint looks for new events.")

    # --- secured Temporal clusters and Temporal Cloud (deploy/README.md) ---
    temporal_api_key: SecretStr | None = Field(
        default=None, description="Temporal Cloud API key (sent as a bearer token; implies TLS)."
    )
    temporal_tls: bool | None = Field(
        default=None,
        description="TLS to the frontend. Unset: on when an API key or any TLS file is given.",
    )
    temporal_tls_cert: str | None = Field(
        default=None, description="mTLS client certificate: a PEM file path, or the PEM itself."
    )
    temporal_tls_key: str | None = Field(
        default=None, description="mTLS client private key: a PEM file path, or the PEM itself."
    )
    temporal_tls_ca: str | None = Field(
        default=None, description="CA bundle to verify the server with (default: system roots)."
    )
    temporal_tls_server_name: str | None = Field(
        default=None, description="TLS server name (SNI and verification) when it differs."
    )

    # --- observability (deploy/README.md, "Metrics, logs and traces") ---
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Bind address of the worker metrics servers (the image sets 0.0.0.0).",
    )
    worker_metrics_port: int = Field(
        default=9464, ge=0, le=65535,
        description="Worker: Temporal SDK Prometheus metrics on this port (0: off).",
    )
    worker_app_metrics_port: int = Field(
        default=9465, ge=0, le=65535,
        description="Worker: billow's own counters on this port (0: off); also its health port.",
    )
    worker_graceful_shutdown_seconds: float = Field(
        default=30, ge=0,
        description="Worker: how long in-flight activities may finish after SIGTERM.",
    )
    # Capacity (worker/tuning.py says why the defaults differ from the SDK's).
    worker_max_cached_workflows: int | None = Field(
        default=None, ge=1,
        description="Worker: contracts kept in memory between tasks (SDK default 1000).",
    )
    worker_max_concurrent_workflow_tasks: int | None = Field(
        default=None, ge=2,
        description="Worker: workflow tasks run at once (default 4 per CPU).",
    )
    worker_max_concurrent_local_activities: int | None = Field(
        default=None, ge=1,
        description="Worker: ledger steps run at once (default 15, the database pool's "
                    "size: each holds a connection while it runs).",
    )
    worker_max_concurrent_activities: int | None = Field(
        default=None, ge=1,
        description="Worker: payment gateway calls run at once (SDK default 100).",
    )
    worker_sticky_schedule_to_start_seconds: float | None = Field(
        default=None, gt=0,
        description="Worker: how long a cached contract's workflow task waits for this worker "
                    "before it times out and goes to any worker (default 10, the SDK's); also "
                    "how long a crashed worker's contracts wait to move.",
    )
    payment_gateway: Literal["manual", "simulated_card"] = Field(
        default="manual",
        description="Worker: how auto-pay charges. 'manual': no stored payment method, "
                    "invoices are paid by transfer; 'simulated_card': always-accepting test "
                    "card (demos). A real gateway implements activities.payments.PaymentGateway.",
    )
    usage_compaction_minutes: int = Field(
        default=60, ge=0,
        description="Worker: how often the Temporal Schedule 'billow-usage-compaction' folds "
                    "closed UTC days of usage into rollups (0: the worker does not create it).",
    )
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    otel_enabled: bool = Field(
        default=False, description="Trace workflows/activities with OpenTelemetry (otel extra)."
    )
    otel_service_name: str = "billow"
    otel_exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp",
        description="otlp needs opentelemetry-exporter-otlp; it reads OTEL_EXPORTER_OTLP_*.",
    )

    @property
    def delivery_options(self) -> DeliveryOptions:
        return DeliveryOptions(
            initial_retry_seconds=self.webhook_retry_initial_seconds,
            max_retry_seconds=self.webhook_retry_max_seconds,
            give_up_after_seconds=self.webhook_retry_hours * 3600,
            poll_seconds=self.event_poll_seconds,
        )

    @property
    def seller(self) -> Seller:
        return Seller(name=self.seller_name, address=self.seller_address,
                      tax_id=self.seller_tax_id, email=self.seller_email,
                      payment_instructions=self.seller_payment_instructions)

    @property
    def temporal_ui_url(self) -> str:
        return f"http://localhost:{self.temporal_ui_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    def worker_tuning(self) -> WorkerTuning:
        return WorkerTuning(
            max_cached_workflows=self.worker_max_cached_workflows,
            max_concurrent_workflow_tasks=self.worker_max_concurrent_workflow_tasks,
            max_concurrent_local_activities=self.worker_max_concurrent_local_activities,
            max_concurrent_activities=self.worker_max_concurrent_activities,
            sticky_schedule_to_start_s=self.worker_sticky_schedule_to_start_seconds,
        )

    @property
    def client_api_url(self) -> str:
        """Where the ops commands send requests (BILLOW_API_URL, else the local API)."""
        return (self.api_base_url or self.api_url).rstrip("/")


def load_settings() -> Settings:
    return Settings()
