"""Webhook delivery activities: Standard Webhooks signed POSTs, at least once, in order.

Each endpoint is delivered by its own workflow (workflows/webhook_delivery.py)
through these activities. The endpoint's ``cursor_seq`` is the last event it
acknowledged (a 2xx answer); it moves forward only after the receiver
acknowledged, by compare-and-set (a replay that moved it meanwhile wins), so:

- at least once: a worker that dies after the POST and before the cursor
  moves sends that event again (receivers deduplicate on ``webhook-id``, the
  event id, which never changes);
- in order: events are sent one at a time in ``seq`` order, the next only
  after the previous one was acknowledged (so in order per contract too);
- nothing that was not committed: only outbox rows, which exist only if their
  ledger change committed (activities/events.py), are ever sent.

A failed POST raises a retryable error: the workflow's retry policy is the
backoff, its deadline the three days after which the endpoint is disabled.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import metrics
from activities.events import envelope, sequence_events
from models.events import (
    DeliverEventsRequest,
    DeliverEventsResult,
    DisableEndpointRequest,
    WaitForEventsRequest,
    WaitForEventsResult,
    matches,
)
from models.operations import ActivityName

log = logging.getLogger("billow.webhooks")

__all__ = ["WebhookActivities", "signed_headers"]


def signed_headers(secret: str, event_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one delivery attempt."""
    signature = Webhook(secret).sign(event_id, at, body)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature, "content-type": "application/json",
            "user-agent": "billow-webhooks/1"}


class WebhookActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def _endpoint(self, endpoint_id: str) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(
                text("SELECT * FROM webhook_endpoints WHERE id = :id"), {"id": endpoint_id}
            )).one_or_none()

    @activity.defn(name=ActivityName.WAIT_FOR_EVENTS.value)
    async def wait_for_events(self, req: WaitForEventsRequest) -> WaitForEventsResult:
        """Return once the endpoint has events after its cursor (or after the wait).

        Sequences committed events while it looks (one sequencer at a time),
        and heartbeats, so a worker that dies here is noticed within seconds.
        A disabled endpoint is waited on like an idle one: a replay enables it
        while its workflow runs, and the workflow must then deliver, not end.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.max_wait_seconds
        while True:
            async with self.engine.begin() as conn:
                await sequence_events(conn)
            endpoint = await self._endpoint(req.endpoint_id)
            if endpoint is None or endpoint.status not in ("enabled", "disabled"):
                return WaitForEventsResult(
                    status="missing" if endpoint is None else endpoint.status, pending=False)
            if endpoint.status == "disabled":
                if loop.time() >= deadline:
                    return WaitForEventsResult(status="disabled", pending=False)
                activity.heartbeat()
                await asyncio.sleep(req.poll_seconds)
                continue
            async with self.engine.connect() as conn:
                pending = await conn.scalar(
                    text("SELECT 1 FROM event_outbox WHERE seq > :c LIMIT 1"),
                    {"c": endpoint.cursor_seq})
            if pending is not None or loop.time() >= deadline:
                return WaitForEventsResult(status="enabled", pending=pending is not None)
            activity.heartbeat()
            await asyncio.sleep(req.poll_seconds)

    @activity.defn(name=ActivityName.DELIVER_EVENTS.value)
    async def deliver_events(self, req: DeliverEventsRequest) -> DeliverEventsResult:
        """Send the endpoint's next events in order, up to ``batch``; raises on the
        first one the receiver does not acknowledge (the workflow retries)."""
        endpoint = await self._endpoint(req.endpoint_id)
        if endpoint is None or endpoint.status != "enabled":
            return DeliverEventsResult(delivered=0, cursor=endpoint.cursor_seq if endpoint else 0)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(
                text("SELECT * FROM event_outbox WHERE seq > :c ORDER BY seq LIMIT :n"),
                {"c": endpoint.cursor_seq, "n": req.batch})).all()
        cursor, delivered = int(endpoint.cursor_seq), 0
        filters = list(endpoint.event_types or [])
        async with httpx.AsyncClient(timeout=req.request_timeout_seconds,
                                     follow_redirects=False) as http:
            for row in rows:
                if matches(row.type, filters):
                    await self._post(http, endpoint, row)
                    delivered += 1
                if not await self._advance(endpoint.id, cursor, int(row.seq),
                                           delivered=matches(row.type, filters)):
                    break  # a replay moved the cursor: the next call starts from there
                cursor = int(row.seq)
                activity.heartbeat(cursor)
        return DeliverEventsResult(delivered=delivered, cursor=cursor)

    async def _post(self, http: httpx.AsyncClient, endpoint: Any, row: Any) -> None:
        body = envelope(row).model_dump_json()
        headers = signed_headers(endpoint.secret, row.event_id, body, datetime.now(UTC))
        try:
            response = await http.post(endpoint.url, content=body.encode(), headers=headers)
            error = (None if 200 <= response.status_code < 300
                     else f"HTTP {response.status_code} for event {row.event_id}")
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__} for event {row.event_id}: {exc}"
        if error is None:
            metrics.webhook_delivered(ok=True)
            return
        metrics.webhook_delivered(ok=False)
        async with self.engine.begin() as conn:
            await conn.execute(
                text("UPDATE webhook_endpoints SET last_error = :e, last_attempt_at = now(), "
                     "failing_since = coalesce(failing_since, now()) WHERE id = :id"),
                {"e": error[:1000], "id": endpoint.id})
        log.warning("webhook endpoint %s: %s (will retry)", endpoint.id, error)
        raise ApplicationError(error, type="WebhookDeliveryFailed")

    async def _advance(self, endpoint_id: str, old: int, new: int, *, delivered: bool) -> bool:
        async with self.engine.begin() as conn:
            moved = await conn.scalar(
                text("UPDATE webhook_endpoints SET cursor_seq = :new, "
                     "delivered = delivered + :d, last_error = NULL, failing_since = NULL, "
                     "last_attempt_at = CASE WHEN :d > 0 THEN now() ELSE last_attempt_at END "
                     "WHERE id = :id AND cursor_seq = :old RETURNING id"),
                {"new": new, "old": old, "d": 1 if delivered else 0, "id": endpoint_id})
        return moved is not None

    @activity.defn(name=ActivityName.DISABLE_ENDPOINT.value)
    async def disable_endpoint(self, req: DisableEndpointRequest) -> None:
        """Retries ran out: stop sending and tell ops (log, metric, the endpoint's status)."""
        async with self.engine.begin() as conn:
            # The receiver's last answer says more than the retry policy's give-up.
            done = await conn.scalar(
                text("UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = "
                     "left(:r || coalesce('; last error: ' || last_error, ''), 2000) "
                     "WHERE id = :id AND status = 'enabled' RETURNING url"),
                {"r": req.reason, "id": req.endpoint_id})
        if done is not None:
            metrics.webhook_endpoint_disabled()
            log.error("webhook endpoint %s (%s) disabled: %s. Fix the receiver, then "
                      "`billow events replay --endpoint %s --after <sequence>` re-sends.",
                      req.endpoint_id, done, req.reason, req.endpoint_id,
                      extra={"endpoint_id": req.endpoint_id})
