"""Request guards: body size limits and API-key authentication.

Both run as ASGI middleware, before FastAPI parses anything, so an oversized
or unauthenticated request is refused with a problem document whatever its
body holds (a malformed body without a key is a 401, not a 422).
Authentication runs first and reads only the headers: a request without a
valid key is answered before any of its body is read, so an unauthenticated
client costs neither memory nor bandwidth (the body limit reads and drains
bodies only for authenticated requests, and for the signed webhook).

- Body limits: ``POST /v1/usage`` up to 5 MB (a full batch of 10,000
  events), everything else 1 MB; a larger body is a 413. The limit is checked
  on ``Content-Length`` and on the bytes actually received (chunked bodies).
- API keys: every ``/v1/...`` path except the CRM webhook (which is signed
  instead) needs ``Authorization: Bearer <key>``; a missing, malformed,
  unknown or revoked key is a 401. ``/healthz``, ``/docs``, ``/redoc`` and
  ``/openapi.json`` stay open. Each route then checks the key's scopes
  (`require_scope`): outside them is a 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activities.api_keys import ApiKeyInfo
from activities.api_keys import Scope as KeyScope
from activities.api_keys import authenticate as lookup_key
from api.deps import AppDeps
from api.problems import ProblemError, problem_response

WEBHOOK_PREFIX = "/v1/webhooks/"
_DRAIN_FACTOR = 8  # read (and discard) at most this many times the limit before refusing


def _body_limit(deps: AppDeps, method: str, path: str) -> int:
    if path.rstrip("/") == "/v1/usage" and method == "POST":
        return deps.usage_body_limit
    return deps.body_limit


class BodyLimitMiddleware:
    """Buffer the request body up to its limit; answer 413 beyond it."""

    def __init__(self, app: ASGIApp, deps: AppDeps) -> None:
        self.app = app
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _body_limit(self.deps, scope["method"], scope["path"])
        declared = _content_length(scope)
        too_large = declared is not None and declared > limit
        chunks: list[bytes] = []
        size = 0
        more = True
        disconnect: Message | None = None
        # Read the whole body (the client is sending it anyway: answering
        # before reading it would reset the connection under the client),
        # keeping it only while it is within the limit.
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnect = message
                break
            body = message.get("body", b"")
            size += len(body)
            more = bool(message.get("more_body", False))
            if size > limit:
                too_large = True
                chunks = []
                if size > limit * _DRAIN_FACTOR:
                    break
            elif not too_large:
                chunks.append(body)
        if too_large:
            what = "usage batch" if limit == self.deps.usage_body_limit else "request body"
            response = problem_response(
                413, "payload-too-large", "Content Too Large",
                f"the {what} exceeds the limit of {limit} bytes",
                [("", f"body larger than {limit} bytes")], scope["path"],
            )
            await response(scope, receive, send)
            return
        await self.app(scope, replaying(b"".join(chunks), disconnect, receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
            return None
    return None


def _needs_key(path: str) -> bool:
    return path.startswith("/v1/") and not path.startswith(WEBHOOK_PREFIX)


class ApiKeyMiddleware:
    """Authenticate ``/v1`` requests by API key; the key's info goes to request state."""

    def __init__(self, app: ASGIApp, deps: AppDeps) -> None:
        self.app = app
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _needs_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="billow"'}
        token = _bearer(scope)
        if token is None:
            response = problem_response(
                401, "unauthorized", "Unauthorized",
                "missing API key: send 'Authorization: Bearer <key>'",
                [("header.authorization", "missing or not a Bearer token")],
                scope["path"], challenge,
            )
            await response(scope, receive, send)
            return
        try:
            async with self.deps.engine.connect() as conn:
                info = await lookup_key(conn, token)
        except Exception:
            response = problem_response(
                503, "unavailable", "Service Unavailable",
                "the database is unavailable; nothing was done: try again", (), scope["path"],
                {"Retry-After": "5"},
            )
            await response(scope, receive, send)
            return
        if info is None:
            response = problem_response(
                401, "unauthorized", "Unauthorized", "invalid or revoked API key",
                [("header.authorization", "unknown or revoked API key")],
                scope["path"], challenge,
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = info
        await self.app(scope, receive, send)


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="bk_<key id>_<secret>",
    description=(
        "An API key created with `billow apikey create --scope crm|usage|ops`. "
        "Scopes: `crm` (contracts, amendments, reading invoices), `usage` (sending usage), "
        "`ops` (everything)."
    ),
)


def require_scope(*accepted: KeyScope) -> Callable[..., Awaitable[ApiKeyInfo]]:
    """A dependency: the request's key must hold ``ops`` or one of ``accepted``."""
    names = " or ".join(s.value for s in (*accepted, KeyScope.OPS))

    async def check(
        request: Request,
        _credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),  # noqa: B008
    ) -> ApiKeyInfo:
        info: Any = getattr(request.state, "api_key", None)
        if not isinstance(info, ApiKeyInfo):
            raise ProblemError(401, "unauthorized", "Unauthorized", "missing API key",
                               [("header.authorization", "missing")],
                               {"WWW-Authenticate": 'Bearer realm="billow"'})
        if not info.allows(*accepted):
            held = ", ".join(sorted(s.value for s in info.scopes))
            raise ProblemError(
                403, "forbidden", "Forbidden",
                f"this operation needs scope {names}; the key {info.key_id} has {held}",
                [("header.authorization", f"scope {names} required")],
            )
        return info

    return check


def replaying(body: bytes, disconnect: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read (or the client's
    disconnect), once, then passes through to the real one."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            if disconnect is not None:
                return disconnect
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
