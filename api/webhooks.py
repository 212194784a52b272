"""``POST /v1/webhooks/crm``: the CRM's signed "deal closed-won" webhook.

Authentication is by signature, not API key:

- ``X-Billow-Timestamp``: the sending time, Unix seconds;
- ``X-Billow-Signature: v1=<hex>``: HMAC-SHA256 with the shared secret
  (``BILLOW_WEBHOOK_SECRET``) over ``<timestamp> + "." + <raw body bytes>``.
  Several comma-separated ``v1=`` values are accepted (secret rotation);
- ``X-Billow-Delivery`` (optional, or the payload's ``id``): the delivery id.

A request is refused (401) when a header is missing, the signature does not
match, or the timestamp is more than ``BILLOW_WEBHOOK_TOLERANCE_SECONDS``
(default 300) away from now. A delivery is accepted once: its signature (and
delivery id) are stored under unique constraints in ``webhook_deliveries`` in
the same transaction as the contract's creation, so a replay is a 409 and a
delivery that failed (e.g. 422) can be sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.contracts import create_contract
from api.deps import AppDeps, get_deps
from api.problem_examples import WEBHOOK_REPLAYED, WEBHOOK_SIGNATURE
from api.problems import ProblemError, problem_responses, request_problems, validation_problem
from api.schemas import WEBHOOK_EXAMPLE, CrmWebhookPayload, WebhookAccepted

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Deps = Annotated[AppDeps, Depends(get_deps)]

CLOSED_WON = "deal.closed_won"
SOURCE = "crm"


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-Billow-Signature`` value for a body (for senders and tests)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def _unauthorized(slug: str, detail: str, field: str) -> ProblemError:
    return ProblemError(401, slug, "Unauthorized", detail, [(field, detail)])


def verify(
    secret: str, timestamp: str | None, signature: str | None, body: bytes,
    tolerance: int, now: float,
) -> tuple[int, str]:
    """Check a delivery's signature; returns (timestamp, matching signature hex)."""
    if not timestamp:
        raise _unauthorized("invalid-signature", "missing X-Billow-Timestamp",
                            "header.x-billow-timestamp")
    if not signature:
        raise _unauthorized("invalid-signature", "missing X-Billow-Signature",
                            "header.x-billow-signature")
    try:
        ts = int(timestamp.strip())
    except ValueError:
        raise _unauthorized("invalid-signature", "X-Billow-Timestamp must be Unix seconds",
                            "header.x-billow-timestamp") from None
    if abs(now - ts) > tolerance:
        raise _unauthorized(
            "stale-timestamp",
            f"timestamp is {int(now - ts)} s from now; at most {tolerance} s allowed",
            "header.x-billow-timestamp")
    expected = sign(secret, ts, body).removeprefix("v1=")
    for part in signature.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == "v1" and hmac.compare_digest(value.strip().lower(), expected):
            return ts, expected
    raise _unauthorized("invalid-signature", "signature does not match the body",
                        "header.x-billow-signature")


async def _claim(
    conn: AsyncConnection, signature: str, delivery_id: str | None, event: str, ts: int,
    contract_id: str | None,
) -> bool:
    claimed = await conn.scalar(
        text(
            "INSERT INTO webhook_deliveries (source, signature, delivery_id, event, signed_at, "
            "contract_id) VALUES (:src, :sig, :did, :event, to_timestamp(:ts), :cid) "
            "ON CONFLICT DO NOTHING RETURNING id"
        ),
        {"src": SOURCE, "sig": signature, "did": delivery_id, "event": event, "ts": ts,
         "cid": contract_id},
    )
    return claimed is not None


def _replayed(delivery_id: str | None) -> ProblemError:
    what = f"delivery {delivery_id!r}" if delivery_id else "this signed delivery"
    return ProblemError(409, "replayed-delivery", "Delivery replayed",
                        f"{what} was already accepted; a delivery is processed once",
                        [("header.x-billow-signature", "already used")])


_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/CrmWebhookPayload"},
            "example": WEBHOOK_EXAMPLE,
        }},
    }
}


@router.post(
    "/crm",
    summary="CRM webhook: deal closed-won creates its contract",
    response_model=WebhookAccepted,
    status_code=201,
    openapi_extra=_BODY_DOC,
    responses={200: {"description": "Contract already existed, or event ignored",
                     "model": WebhookAccepted,
                     "content": {"application/json": {"example": {
                         "status": "exists", "event": "deal.closed_won",
                         "contract_id": "acme-2027", "workflow_id": "contract:acme-2027",
                         "temporal_ui_url": "http://localhost:8233/namespaces/default/"
                                            "workflows/contract:acme-2027"}}}},
               **problem_responses(401, 409, 413, 422, 503, examples={
                   401: WEBHOOK_SIGNATURE, 409: WEBHOOK_REPLAYED})},
)
async def crm_webhook(
    request: Request,
    response: Response,
    deps: Deps,
    x_billow_timestamp: Annotated[str | None, Header(
        description="Unix seconds when the delivery was signed.")] = None,
    x_billow_signature: Annotated[str | None, Header(
        description='"v1=" + hex HMAC-SHA256(secret, timestamp + "." + body).')] = None,
    x_billow_delivery: Annotated[str | None, Header(
        description="Delivery id (optional; else the payload's `id`).")] = None,
) -> WebhookAccepted:
    """Verify the signature, then map `deal` to a contract and create it exactly like
    `POST /v1/contracts` (idempotent on the contract id: **201** created, **200** it
    already existed with the same terms, **409** different terms).

    The deal carries the contract fields of docs/file-formats.md (`customer`, `plan`,
    `starts_on`, `term_months`, `billing_cycle`, `commitment`, ...); `deal.id` is the
    CRM's deal id and becomes the contract id unless `deal.contract_id` is given.
    Events other than `deal.closed_won` are acknowledged (200, `status: ignored`).
    Signature: see the `webhooks` tag.
    """
    secret = deps.webhook_secret
    if not secret:
        raise ProblemError(503, "webhook-disabled", "Webhook not configured",
                           "set BILLOW_WEBHOOK_SECRET to accept CRM webhooks")
    body = await request.body()
    ts, signature = verify(secret, x_billow_timestamp, x_billow_signature, body,
                           deps.webhook_tolerance_seconds, time.time())
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise validation_problem([("", f"malformed JSON: {exc}")]) from exc
    event = raw.get("event") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and isinstance(event, str) and event != CLOSED_WON:
        delivery = x_billow_delivery or (raw.get("id") if isinstance(raw.get("id"), str)
                                         else None)
        async with deps.engine.begin() as conn:
            if not await _claim(conn, signature, delivery, event, ts, None):
                raise _replayed(delivery)
        response.status_code = 200
        return WebhookAccepted(status="ignored", event=event)
    try:
        payload = CrmWebhookPayload.model_validate(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise validation_problem(request_problems(errors)) from exc
    contract = payload.deal.to_contract()
    delivery = x_billow_delivery or payload.id
    async with deps.engine.begin() as conn:
        # The claim stays uncommitted until the contract is created: a concurrent
        # replay waits on the unique index, then finds it taken; a failure rolls
        # the claim back so the CRM can resend.
        if not await _claim(conn, signature, delivery, payload.event, ts, contract.id):
            raise _replayed(delivery)
        created, is_new = await create_contract(deps, contract, None)
    response.status_code = 201 if is_new else 200
    return WebhookAccepted(
        status="created" if is_new else "exists", event=payload.event,
        contract_id=created.contract_id, workflow_id=created.workflow_id,
        temporal_ui_url=created.temporal_ui_url,
    )
