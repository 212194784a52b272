"""Talking to contract workflows from request handlers, errors as problems."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AppDeps
from api.problems import ProblemError

__all__ = [
    "RETRY_AFTER",
    "outcome_unknown",
    "reasons_from_message",
    "temporal_client",
    "temporal_errors",
    "unavailable",
    "workflow_status",
]


# Seconds a client should wait before retrying a 503/504 (the `Retry-After` header).
RETRY_AFTER = "5"


def unavailable(detail: str) -> ProblemError:
    return ProblemError(503, "unavailable", "Service Unavailable", detail,
                        headers={"Retry-After": RETRY_AFTER})


def outcome_unknown(status: int, what: str, why: str, changes: bool) -> ProblemError:
    """A 503/504 for a call whose outcome billow cannot tell (SPEC.md section 10)."""
    detail = f"{what}: {why}"
    if changes:
        detail += ("; the change may still apply: retry with the same Idempotency-Key "
                   "(or the same id) to learn its outcome")
    return ProblemError(
        status, "outcome-unknown" if changes else ("timeout" if status == 504 else "unavailable"),
        "Gateway Timeout" if status == 504 else "Service Unavailable", detail,
        headers={"Retry-After": RETRY_AFTER},
    )


async def temporal_client(deps: AppDeps) -> Client:
    try:
        return await deps.temporal()
    except Exception as exc:
        deps.client = None
        raise unavailable(f"cannot reach Temporal: {exc.__class__.__name__}") from exc


# Statuses after which a retry may succeed; NOT_FOUND (no such workflow) and
# definitive refusals are left to the caller.
_TRANSIENT = frozenset({
    RPCStatusCode.UNAVAILABLE, RPCStatusCode.CANCELLED, RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED, RPCStatusCode.INTERNAL, RPCStatusCode.UNKNOWN,
})


async def _stalled(handle: WorkflowHandle[Any, Any]) -> int | None:
    """The failed attempts of the workflow's current workflow task, if it is failing."""
    try:
        async with asyncio.timeout(2):
            desc = await handle.describe()
    except Exception:  # only a diagnosis: a timeout stays a timeout
        return None
    raw = desc.raw_description
    if not raw.HasField("pending_workflow_task"):
        return None
    attempt = raw.pending_workflow_task.attempt
    return attempt if attempt > 1 else None


@asynccontextmanager
async def temporal_errors(
    what: str, changes: bool = True, handle: WorkflowHandle[Any, Any] | None = None,
) -> AsyncIterator[None]:
    """Map Temporal transport failures and timeouts to 503 / 504 problems.

    ``changes``: the call may change the contract, so an unknown outcome says
    the change may still apply (it never says nothing changed).

    - the API's deadline, the update RPC's timeout or cancellation, an RPC
      ``DEADLINE_EXCEEDED``: 504;
    - ``FAILED_PRECONDITION`` (the workflow's task is failing or timing out,
      e.g. a stalled contract), unavailable, aborted, internal: 503.
    Both carry ``Retry-After``. With ``handle``, a timeout is diagnosed: a
    workflow whose workflow task keeps failing (a stalled contract) is a 503.
    """
    try:
        yield
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        attempts = None if handle is None else await _stalled(handle)
        if attempts is not None:
            raise outcome_unknown(
                503, what, "the contract workflow is stalled (its workflow task has failed "
                f"{attempts - 1} times and is being retried)", changes) from exc
        raise outcome_unknown(504, what, "the contract workflow did not answer in time",
                              changes) from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
            raise outcome_unknown(504, what, f"Temporal did not answer in time ({exc.message})",
                                  changes) from exc
        if exc.status == RPCStatusCode.FAILED_PRECONDITION:
            raise outcome_unknown(
                503, what, "the contract workflow is not processing requests right now (its "
                f"workflow task is failing or timing out: {exc.message})", changes) from exc
        if exc.status in _TRANSIENT:
            raise outcome_unknown(503, what, f"Temporal is unavailable ({exc.message})",
                                  changes) from exc
        raise


async def workflow_status(
    handle: WorkflowHandle[Any, Any],
) -> WorkflowExecutionStatus | None:
    """Status of the workflow's latest run; None if Temporal does not know it."""
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc.status


_PATH = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.+)$")


def reasons_from_message(message: str) -> list[tuple[str, str]]:
    """``(field, reason)`` pairs from a `BillowValidationError` message.

    Validators in the workflow raise ``ApplicationError(str(exc))``; the
    message lists ``path: reason`` lines (``N problems:`` first when several).
    """
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if len(lines) > 1 and re.fullmatch(r"\d+ problems:", lines[0]):
        lines = lines[1:]
    out: list[tuple[str, str]] = []
    for line in lines:
        m = _PATH.match(line)
        out.append((m.group(1), m.group(2)) if m else ("", line))
    return out or [("", message)]
