"""``Idempotency-Key`` on every mutating request (SPEC.md section 10).

A retry with the same key and the same request answers as the first time (the
stored first response, marked ``Idempotent-Replayed: true``); the same key
with another request is a **409** and changes nothing. Keys are scoped to the
API key that sent them and to the route (method and path), stored in
``idempotency_keys`` (`activities.idempotency`).

Only known outcomes are stored: a 2xx, or a 4xx that will not change by
itself (422, 409, ...). A 5xx, 503/504 (the outcome is not known yet), a 404
(the resource may appear) or 429 is not: the claim is released and the retry
runs the request again — safe, because every mutation is also idempotent on
its business id (contract id, amendment id, payment id, event ids, catalog
digest).

While the first request runs, a concurrent one with the same key waits for
its answer (up to the API's workflow deadline, then 503 + Retry-After). The
running request renews its claim every third of a short lease
(``AppDeps.idempotency_lease_seconds``), so if its API process dies, a retry
through another process takes over within one lease instead of waiting out
the longest a request may take.

Runs as ASGI middleware inside authentication and the body limit: it needs
the API key and the buffered body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activities.api_keys import ApiKeyInfo
from activities.idempotency import (
    Claimed,
    Completed,
    InProgress,
    Mismatch,
    claim_key,
    complete_key,
    release_key,
    renew_key,
)
from api.deps import AppDeps
from api.problems import problem_response
from api.security import replaying
from api.workflow_calls import RETRY_AFTER

log = logging.getLogger("billow.api")

HEADER = "idempotency-key"
REPLAYED = "idempotent-replayed"
MAX_KEY_LENGTH = 200  # as long as a payment_id, which defaults to it
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII, no spaces
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UNSETTLED = frozenset({404, 408, 425, 429})  # 4xx a retry may answer differently
_POLL_SECONDS = 0.1

IdempotencyKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=MAX_KEY_LENGTH,
    description="Makes a retry safe: the same key with the same request answers as the "
    "first time; the same key with another request is a 409. Up to 200 visible ASCII "
    "characters, scoped to your API key and this route.",
)]


def settled(status: int) -> bool:
    """Whether a response is a known outcome worth answering every retry with."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in _UNSETTLED)


def request_hash(scope: Scope, body: bytes) -> str:
    """What makes two requests "the same": method, path, query and the JSON body.

    The body is compared as JSON (key order and whitespace do not matter);
    a body that is not JSON is compared byte for byte.
    """
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode() if body else b""
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(),
                 bytes(scope.get("query_string", b""))):
        digest.update(part + b"\0")
    digest.update(canonical)
    return digest.hexdigest()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _applies(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] not in _MUTATING:
        return False
    path = str(scope["path"])
    return path.startswith("/v1/") and not path.startswith("/v1/webhooks/")


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, deps: AppDeps) -> None:
        self.app = app
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope, HEADER.encode()) if _applies(scope) else None
        info: Any = scope.get("state", {}).get("api_key")
        if key is None or not isinstance(info, ApiKeyInfo):
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        if not _KEY.fullmatch(key):
            reason = f"1 to {MAX_KEY_LENGTH} visible ASCII characters, no spaces"
            await problem_response(
                422, "validation", "Invalid request", f"Idempotency-Key: {reason}",
                [("header.idempotency-key", reason)], path)(scope, receive, send)
            return
        body, replay = await _read_body(receive)
        route = f"{scope['method']} {path}"
        digest = request_hash(scope, body)
        deps = self.deps
        # A short claim, renewed while the request runs (`_renew`): if this process
        # dies holding it, a retry takes over once it lapses.
        lease = timedelta(seconds=deps.idempotency_lease_seconds)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deps.workflow_timeout_seconds
        while True:
            try:
                async with deps.engine.begin() as conn:
                    claim = await claim_key(conn, info.key_id, route, key, digest, lease)
            except Exception:
                log.exception("idempotency key lookup failed")
                await _unavailable(path, "the database is unavailable; nothing was done: "
                                   "retry with the same Idempotency-Key")(scope, receive, send)
                return
            if not isinstance(claim, InProgress) or loop.time() >= give_up:
                break
            await asyncio.sleep(_POLL_SECONDS)
        if isinstance(claim, Mismatch):
            await problem_response(
                409, "idempotency-key-reused", "Idempotency-Key reused",
                "this Idempotency-Key was already used for a different request on this "
                "route; nothing was changed. Use a new key for a new request",
                [("header.idempotency-key", "already used with a different request")],
                path)(scope, receive, send)
            return
        if isinstance(claim, Completed):
            await _replay_stored(claim, send)
            return
        if isinstance(claim, InProgress):
            await _unavailable(
                path, "a request with this Idempotency-Key is still being processed; "
                "retry with the same key to get its answer")(scope, receive, send)
            return
        await self._run(scope, replay, send, claim)

    async def _run(self, scope: Scope, receive: Receive, send: Send, claim: Claimed) -> None:
        """Run the request, store a known outcome before answering, else release."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        renewing = asyncio.create_task(self._renew(claim))
        try:
            await self.app(scope, receive, capture)
        except BaseException:
            await _stop(renewing)
            await self._release(claim)
            raise
        await _stop(renewing)
        if start is None:  # nothing was answered (the client went away)
            await self._release(claim)
            return
        status = int(start["status"])
        body = b"".join(chunks)
        if settled(status):
            content_type = next((bytes(v).decode("latin-1") for k, v in start.get("headers", [])
                                 if k == b"content-type"), None)
            try:
                async with self.deps.engine.begin() as conn:
                    await complete_key(conn, claim, status, content_type, body)
            except Exception:  # the answer stands; a retry runs again (idempotent ids)
                log.exception("could not store the response of an idempotent request")
        else:
            await self._release(claim)
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _renew(self, claim: Claimed) -> None:
        """Keep this request's claim alive until cancelled (or lost to a retry)."""
        lease = timedelta(seconds=self.deps.idempotency_lease_seconds)
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                async with self.deps.engine.begin() as conn:
                    if not await renew_key(conn, claim, lease):
                        return  # lapsed and taken over: the retry runs it (idempotent ids)
            except Exception:  # the database is away: the claim may lapse, which is safe
                log.warning("could not renew an idempotency key claim", exc_info=True)

    async def _release(self, claim: Claimed) -> None:
        try:
            async with self.deps.engine.begin() as conn:
                await release_key(conn, claim)
        except Exception:  # the claim expires by itself
            log.exception("could not release an idempotency key claim")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a ``receive`` that hands it to the app again."""
    chunks: list[bytes] = []
    disconnect: Message | None = None
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnect = message
            break
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replay = replaying(body, disconnect, receive)

    return body, replay


async def _replay_stored(stored: Completed, send: Send) -> None:
    headers = [(b"content-length", str(len(stored.body)).encode()), (REPLAYED.encode(), b"true")]
    if stored.content_type:
        headers.append((b"content-type", stored.content_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})


def _unavailable(path: str, detail: str) -> JSONResponse:
    return problem_response(503, "unavailable", "Service Unavailable", detail, (), path,
                            {"Retry-After": RETRY_AFTER})
