"""What the API needs from its caller (``billow api``, tests): one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from documents.view import Seller
from models.events import DeliveryOptions

# Body size limits (bytes): a full usage batch (10,000 events) fits in 5 MB.
USAGE_BODY_LIMIT = 5 * 1024 * 1024
DEFAULT_BODY_LIMIT = 1024 * 1024


@dataclass
class AppDeps:
    engine: AsyncEngine
    connect_temporal: Callable[[], Awaitable[Client]]
    temporal_ui_url: str
    namespace: str
    task_queue: str
    client: Client | None = None
    # Shared secret of the CRM webhook (HMAC-SHA256); None disables the webhook.
    webhook_secret: str | None = None
    webhook_tolerance_seconds: int = 300
    # How long a request waits for the contract workflow (update or query).
    workflow_timeout_seconds: float = 30.0
    # How long an Idempotency-Key claim outlives its API process: a running request
    # renews it every third of this; a retry takes over a dead process's claim after.
    idempotency_lease_seconds: float = 10.0
    usage_body_limit: int = USAGE_BODY_LIMIT
    body_limit: int = DEFAULT_BODY_LIMIT
    # Who issues the invoices, and the locale their documents are written in.
    seller: Seller = field(default_factory=Seller)
    document_locale: str = "en_US"
    # How the delivery workflows the API starts retry (worker settings' defaults).
    delivery_options: DeliveryOptions = field(default_factory=DeliveryOptions)

    async def temporal(self) -> Client:
        if self.client is None:
            self.client = await self.connect_temporal()
        return self.client

    def workflow_url(self, workflow_id: str) -> str:
        """The Temporal UI page of a workflow."""
        base = self.temporal_ui_url.rstrip("/")
        return (f"{base}/namespaces/{quote(self.namespace, safe='')}/workflows/"
                f"{quote(workflow_id, safe=':')}")


def get_deps(request: Request) -> AppDeps:
    deps = request.app.state.deps
    assert isinstance(deps, AppDeps)
    return deps
