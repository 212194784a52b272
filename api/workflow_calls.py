"""Talking to contract workflows from request handlers, errors as problems."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AppDeps
from api.problems import ProblemError

__all__ = ["reasons_from_message", "temporal_client", "temporal_errors", "workflow_status"]


def unavailable(detail: str) -> ProblemError:
    return ProblemError(503, "unavailable", "Service Unavailable", detail,
                        headers={"Retry-After": "5"})


async def temporal_client(deps: AppDeps) -> Client:
    try:
        return await deps.temporal()
    except Exception as exc:
        deps.client = None
        raise unavailable(f"cannot reach Temporal: {exc.__class__.__name__}") from exc


@asynccontextmanager
async def temporal_errors(what: str) -> AsyncIterator[None]:
    """Map Temporal transport failures and timeouts to 503 / 504 problems."""
    try:
        yield
    except TimeoutError as exc:
        raise ProblemError(
            504, "timeout", "Gateway Timeout",
            f"{what}: the contract workflow did not answer in time; it may still apply the "
            "request — resend it with the same id to find out",
        ) from exc
    except RPCError as exc:
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise unavailable(f"{what}: Temporal is unavailable ({exc.message})") from exc
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
