"""``/v1/events`` and ``/v1/webhook-endpoints``: events other systems can trust.

Events are listed from any point (``after``, a sequence number or an event
id) and delivered to registered endpoints signed as Standard Webhooks. An
endpoint is created with the event types it wants; its signing secret is in
the creation answer only. A replay moves an endpoint's cursor back (and
re-enables it): everything after the point is sent again, in order.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.api_keys import Scope
from activities.events import event_seq, list_events, sequence_events
from api.deps import AppDeps, get_deps
from api.problems import not_found, problem_responses, validation_problem
from api.security import require_scope
from api.workflow_calls import temporal_client, temporal_errors
from models.events import EventEnvelope, check_filter
from worker.event_delivery import start_endpoint_workflow

events_router = APIRouter(prefix="/v1/events", tags=["events"])
endpoints_router = APIRouter(prefix="/v1/webhook-endpoints", tags=["events"])
Deps = Annotated[AppDeps, Depends(get_deps)]
_read = [Depends(require_scope(Scope.CRM))]
_ops = [Depends(require_scope(Scope.OPS))]


class EventList(BaseModel):
    events: list[EventEnvelope]
    next_after: int | None = Field(description="Pass as `after` for the next page; "
                                               "null when this page is the last one so far.")


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "url": "https://erp.example.com/billow/events",
        "event_types": ["invoice.*", "payment.recorded"], "description": "ERP sync"}})
    url: str = Field(max_length=2000, description="Where events are POSTed (http or https).")
    event_types: list[str] = Field(
        default_factory=list, max_length=50,
        description="Types to send: exact (`invoice.paid`), a family (`invoice.*`) or `*`; "
                    "empty means all.")
    description: str = Field(default="", max_length=1000)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or len(v.split("://", 1)[1]) < 1:
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("event_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        return [check_filter(t) for t in v]


class EndpointOut(BaseModel):
    id: str
    url: str
    description: str
    event_types: list[str]
    status: str = Field(description="enabled, disabled (retries ran out) or deleted.")
    cursor: int = Field(description="Sequence of the last event acknowledged (or skipped "
                                    "by the filter).")
    delivered: int
    last_attempt_at: datetime | None
    last_error: str | None
    failing_since: datetime | None
    disabled_reason: str | None
    created_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(description="The signing secret (`whsec_...`). Shown only here: "
                                    "store it to verify `webhook-signature`.")


class EndpointList(BaseModel):
    endpoints: list[EndpointOut]


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"after": 120}})
    after: int | str = Field(description="Re-send every event after this sequence number "
                                         "or event id (`evt_...`); 0 for all.")


def _out(row: Any) -> dict[str, Any]:
    return {"id": row.id, "url": row.url, "description": row.description,
            "event_types": row.event_types, "status": row.status, "cursor": row.cursor_seq,
            "delivered": row.delivered, "last_attempt_at": row.last_attempt_at,
            "last_error": row.last_error, "failing_since": row.failing_since,
            "disabled_reason": row.disabled_reason, "created_at": row.created_at}


async def _cursor(conn: AsyncConnection, after: int | str | None, field: str) -> int:
    if after is None:
        return 0
    if isinstance(after, int) or (isinstance(after, str) and after.isdigit()):
        value = int(after)
        if value < 0:
            raise validation_problem([(field, "must be 0 or more")])
        return value
    seq = await event_seq(conn, after)
    if seq is None:
        raise validation_problem([(field, f"no event {after!r} (or not sequenced yet)")])
    return seq


@events_router.get("", summary="List events", response_model=EventList, dependencies=_read,
                   responses=problem_responses(401, 403, 422))
async def get_events(
    deps: Deps,
    after: Annotated[str | None, Query(description="Sequence number or event id; events "
                                                   "after it (default: from the start).")]
    = None,
    type: Annotated[list[str] | None, Query(description="Only these types (repeat; "
                                                        "`invoice.*` for a family).")] = None,
    contract: Annotated[str | None, Query(description="Only this contract's events.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """Events in order (`sequence`), each with the object as the API showed it when the
    change committed. Listing from the same `after` always returns the same events, so a
    consumer that polls with the last `sequence` it processed never misses one. Scope:
    `crm` or `ops`."""
    types = list(type or [])
    try:
        types = [check_filter(t) for t in types]
    except ValueError as exc:
        raise validation_problem([("query.type", str(exc))]) from exc
    async with deps.engine.begin() as conn:
        await sequence_events(conn, wait=True)  # what just committed is listed now
    async with deps.engine.connect() as conn:
        cursor = await _cursor(conn, after, "query.after")
        items = await list_events(conn, after=cursor, types=[t for t in types if t != "*"],
                                  contract_id=contract, limit=limit + 1)
    more = len(items) > limit
    page = items[:limit]
    return EventList(events=page, next_after=page[-1].sequence if more and page else None)


@endpoints_router.post("", status_code=201, summary="Register a webhook endpoint",
                       response_model=EndpointCreated, dependencies=_ops,
                       responses=problem_responses(401, 403, 409, 422, 503))
async def create_endpoint(body: EndpointIn, deps: Deps) -> EndpointCreated:
    """Events from now on are POSTed to `url`, signed as Standard Webhooks
    (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with the secret in this
    answer, which is shown only once. At least once, in order; a receiver that does not
    answer 2xx gets the event again with exponential backoff for three days, then the
    endpoint is disabled (a replay re-enables it). Scope: `ops`."""
    endpoint_id = f"we_{secrets.token_hex(8)}"
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    async with deps.engine.begin() as conn:
        # Every event committed before this request is before the endpoint's cursor.
        await sequence_events(conn, wait=True)
        row = (await conn.execute(text(
            "INSERT INTO webhook_endpoints (id, url, description, event_types, secret, status, "
            "cursor_seq) VALUES (:id, :url, :d, CAST(:t AS jsonb), :s, 'enabled', "
            "(SELECT coalesce(max(seq), 0) FROM event_outbox)) RETURNING *"),
            {"id": endpoint_id, "url": body.url, "d": body.description,
             "t": json.dumps(body.event_types), "s": secret})).one()
    try:
        await _start(deps, endpoint_id, body.url, changes=False)
    except BaseException:
        # Nothing half-written: an endpoint without its workflow would never be
        # delivered, and its secret was never shown.
        async with deps.engine.begin() as conn:
            await conn.execute(text("DELETE FROM webhook_endpoints WHERE id = :id"),
                               {"id": endpoint_id})
        raise
    return EndpointCreated.model_validate({**_out(row), "secret": secret})


async def _start(deps: AppDeps, endpoint_id: str, url: str, changes: bool = True) -> None:
    client = await temporal_client(deps)
    async with temporal_errors("start webhook delivery", changes=changes):
        await start_endpoint_workflow(client, deps.task_queue, endpoint_id, url,
                                      deps.delivery_options)


async def _row(deps: AppDeps, endpoint_id: str) -> Any:
    async with deps.engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM webhook_endpoints WHERE id = :id"),
                                  {"id": endpoint_id})).one_or_none()
    if row is None:
        raise not_found("Webhook endpoint", f"no webhook endpoint {endpoint_id!r}",
                        "path.endpoint_id")
    return row


@endpoints_router.get("", summary="List webhook endpoints", response_model=EndpointList,
                      dependencies=_ops, responses=problem_responses(401, 403))
async def list_endpoints(deps: Deps) -> EndpointList:
    """Registered endpoints with where their delivery stands (never the secrets).
    Scope: `ops`."""
    async with deps.engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT * FROM webhook_endpoints ORDER BY created_at, id"))).all()
    return EndpointList(endpoints=[EndpointOut.model_validate(_out(r)) for r in rows])


@endpoints_router.get("/{endpoint_id}", summary="A webhook endpoint", response_model=EndpointOut,
                      dependencies=_ops, responses=problem_responses(401, 403, 404))
async def get_endpoint(endpoint_id: str, deps: Deps) -> EndpointOut:
    """Status, cursor, deliveries and the last error. Scope: `ops`."""
    return EndpointOut.model_validate(_out(await _row(deps, endpoint_id)))


@endpoints_router.delete("/{endpoint_id}", summary="Delete a webhook endpoint",
                         response_model=EndpointOut, dependencies=_ops,
                         responses=problem_responses(401, 403, 404))
async def delete_endpoint(endpoint_id: str, deps: Deps) -> EndpointOut:
    """No more deliveries (its workflow ends); the row is kept as `deleted`. Scope: `ops`."""
    await _row(deps, endpoint_id)
    async with deps.engine.begin() as conn:
        row = (await conn.execute(text(
            "UPDATE webhook_endpoints SET status = 'deleted' WHERE id = :id RETURNING *"),
            {"id": endpoint_id})).one()
    return EndpointOut.model_validate(_out(row))


@endpoints_router.post("/{endpoint_id}/replay", summary="Re-send events from a point",
                       response_model=EndpointOut, dependencies=_ops,
                       responses=problem_responses(401, 403, 404, 409, 422, 503))
async def replay(endpoint_id: str, body: ReplayIn, deps: Deps) -> EndpointOut:
    """Every event after `after` (that the endpoint's filter takes) is sent again, in
    order, and a disabled endpoint is enabled again. Scope: `ops`."""
    row = await _row(deps, endpoint_id)
    if row.status == "deleted":
        raise validation_problem([("path.endpoint_id", "the endpoint is deleted")])
    async with deps.engine.begin() as conn:
        cursor = await _cursor(conn, body.after, "after")
        row = (await conn.execute(text(
            "UPDATE webhook_endpoints SET cursor_seq = :c, status = 'enabled', "
            "disabled_reason = NULL, failing_since = NULL WHERE id = :id RETURNING *"),
            {"c": cursor, "id": endpoint_id})).one()
    await _start(deps, endpoint_id, row.url)
    return EndpointOut.model_validate(_out(row))
