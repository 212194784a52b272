"""Errors as ``application/problem+json`` (RFC 9457).

Every error the API returns — its own, FastAPI's request validation (422),
routing (404/405), body limits (413), authentication (401/403), Temporal
being unreachable (503) and unexpected failures (500) — has the same shape::

    {"type": "urn:billow:problem:validation", "title": "Invalid request",
     "status": 422, "detail": "...", "instance": "/v1/contracts",
     "errors": [{"field": "customer.id", "reason": "Field required"}]}

``errors`` names each offending field with the path notation of the file
loaders (``rate_overrides[0].meter``; empty = the document itself). Query,
path and header parameters are named ``query.<name>``, ``path.<name>``,
``header.<name>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any, get_args

import asyncpg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.exceptions import ApplicationError

from models.amendments import Amendment
from models.errors import BillowValidationError, join_path

log = logging.getLogger("billow.api")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:billow:problem:"


class FieldError(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"field": "customer.id", "reason": "Field required"}}
    )
    field: str = Field(description="Path of the offending field ('' = the whole document).")
    reason: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "type": "urn:billow:problem:validation",
                "title": "Invalid request",
                "status": 422,
                "detail": "1 field is invalid",
                "instance": "/v1/contracts",
                "errors": [{"field": "term_months", "reason": "Input should be greater than 0"}],
            }
        }
    )
    type: str = Field(description="URN identifying the problem type.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = Field(default_factory=list)


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        errors: Iterable[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers
        self.extra = extra or {}


def problem_body(
    status: int, slug: str, title: str, detail: str,
    errors: Iterable[tuple[str, str]] = (), instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail,
        "instance": instance,
        "errors": [{"field": f, "reason": r} for f, r in errors],
    }
    if extra:
        body.update(extra)
    return body


def problem_response(
    status: int, slug: str, title: str, detail: str,
    errors: Iterable[tuple[str, str]] = (), instance: str | None = None,
    headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, slug, title, detail, errors, instance, extra),
        status_code=status, media_type=PROBLEM_JSON, headers=headers,
    )


def validation_problem(
    problems: Sequence[tuple[str, str]], detail: str | None = None
) -> ProblemError:
    n = len(problems)
    return ProblemError(
        422, "validation", "Invalid request",
        detail or (f"{n} field is invalid" if n == 1 else f"{n} fields are invalid"),
        problems,
    )


def from_billow_error(exc: BillowValidationError, prefix: str = "") -> ProblemError:
    return validation_problem([(join_path(prefix, p), r) for p, r in exc.problems])


# The ledger's field names in a PaymentConflict, as the payment request names them.
_PAYMENT_FIELDS = {"invoice": "path.number", "amount": "amount"}


def payment_conflict(exc: BaseException | None) -> ProblemError | None:
    """A 409 for a ledger ``PaymentConflict`` (a payment id sent again with
    another invoice or amount) anywhere in ``exc``'s cause chain: the
    workflow's ``pay`` update wraps the activity's failure."""
    while exc is not None:
        if isinstance(exc, ApplicationError) and exc.type == "PaymentConflict":
            errors = []
            for part in exc.message.split("; "):
                field, _, reason = part.partition(": ")
                errors.append((_PAYMENT_FIELDS.get(field, field), reason))
            return ProblemError(409, "payment-conflict", "Payment id already used",
                                exc.message, errors)
        exc = exc.__cause__ or getattr(exc, "cause", None)
    return None


def not_found(what: str, detail: str, field: str = "") -> ProblemError:
    return ProblemError(404, "not-found", f"{what} not found", detail,
                        [(field, detail)] if field else [])


# --- request validation errors -> field paths ---------------------------------

# Discriminator tags of the amendment union show up in pydantic locations
# (``('body', 'rate_override', 'override', 'meter')``); they are not fields.
_AMENDMENT_KINDS = frozenset(
    get_args(member.model_fields["kind"].annotation)[0]
    for member in get_args(get_args(Amendment)[0])
)


def _render(parts: Sequence[int | str]) -> str:
    path = ""
    for part in parts:
        path = join_path(path, f"[{part}]" if isinstance(part, int) else str(part))
    return path


_VALUE_ERROR = re.compile(r"^(Value|Assertion) error, ")


def request_problems(errors: Sequence[Any]) -> list[tuple[str, str]]:
    """FastAPI/pydantic error dicts as ``(field, reason)`` pairs."""
    out: list[tuple[str, str]] = []
    for err in errors:
        loc = tuple(err.get("loc") or ())
        where = str(loc[0]) if loc else "body"
        rest: tuple[int | str, ...] = loc[1:]
        ctx = err.get("ctx") or {}
        kind = err.get("type", "")
        if kind == "json_invalid":
            pos = f" at character {rest[0]}" if rest else ""
            out.append(("", f"malformed JSON{pos}: {ctx.get('error', 'cannot decode')}"))
            continue
        if where == "body" and rest and isinstance(rest[0], str) and rest[0] in _AMENDMENT_KINDS:
            rest = rest[1:]
        path = _render(rest)
        if where != "body":
            path = join_path(where, path)
        inner = ctx.get("error")
        if isinstance(inner, BillowValidationError):
            out.extend((join_path(path, p), r) for p, r in inner.problems)
            continue
        msg = str(err.get("msg", "invalid"))
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            path = join_path(path, str(ctx.get("discriminator", "")).strip("'"))
            if kind == "union_tag_not_found":
                msg = "Field required"
        elif kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "missing" and where == "body" and not rest:
            msg = "a JSON request body is required"
        elif where == "body" and not rest and isinstance(err.get("input"), bytes | bytearray):
            msg = "the body must be JSON, sent with Content-Type: application/json"
        msg = _VALUE_ERROR.sub("", msg)
        out.append((path, msg))
    return out


# --- handlers -------------------------------------------------------------------


def _instance(request: Request) -> str:
    return request.url.path


async def _problem_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.slug, exc.title, exc.detail, exc.errors,
                            _instance(request), exc.headers, exc.extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = request_problems(exc.errors())
    err = validation_problem(problems)
    return problem_response(err.status, err.slug, err.title, err.detail, err.errors,
                            _instance(request))


_HTTP_SLUGS = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
    405: "method-not-allowed", 406: "not-acceptable", 409: "conflict",
    413: "payload-too-large", 415: "unsupported-media-type", 422: "validation",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else ""
    if not detail:
        if status == 404:
            detail = f"no resource at {request.method} {request.url.path}"
        elif status == 405:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
            detail = f"{request.method} is not allowed on {request.url.path}" + (
                f"; allowed: {allowed}" if allowed else "")
        else:
            detail = title
    return problem_response(status, _HTTP_SLUGS.get(status, f"http-{status}"), title, detail,
                            (), _instance(request), dict(exc.headers or {}) or None)


# Failures of the database connection: the request may be retried (a commit
# that failed may or may not have happened, so the answer never says which).
_DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError,
    asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
)


def db_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _DB_UNAVAILABLE)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    changes = request.method not in ("GET", "HEAD", "OPTIONS")
    may_apply = (" The request may or may not have taken effect: retry it with the same "
                 "Idempotency-Key (or id) to find out." if changes else "")
    if db_unavailable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(503, "unavailable", "Service Unavailable",
                                "the database is unavailable." + may_apply, (),
                                _instance(request), {"Retry-After": "5"})
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal", "Internal Server Error",
                            "an unexpected error occurred." + may_apply, (), _instance(request))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(
    *statuses: int, examples: dict[int, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json errors, each with an
    example of its own status (``examples`` overrides the defaults per status)."""
    from api.problem_examples import DEFAULT, RETRY_AFTER_HEADER

    descriptions = {
        400: "Bad request", 401: "Missing or invalid API key",
        403: "The API key lacks the required scope", 404: "Not found",
        409: "Conflict with the current state", 413: "Body or batch too large",
        422: "Invalid input; `errors` names each field",
        503: "Unavailable (Temporal or the database): retry after `Retry-After`",
        504: "The contract workflow did not answer in time; the change may still apply",
    }
    chosen = {**DEFAULT, **(examples or {})}
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        entry: dict[str, Any] = {
            "description": descriptions.get(s, HTTPStatus(s).phrase),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"},
                                       **({"example": chosen[s]} if s in chosen else {})}},
        }
        if s in (503, 504):
            entry["headers"] = RETRY_AFTER_HEADER
        out[s] = entry
    return out


def add_problem_schemas(schema: dict[str, Any]) -> None:
    """Put `Problem` and `FieldError` into an OpenAPI document's components."""
    generated = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(generated.pop("$defs", {}))
    components["Problem"] = generated
