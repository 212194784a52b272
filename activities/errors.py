"""Business errors versus transient failures in ledger activities.

A ledger activity that fails on a deterministic error (a missing row, a
constraint the request violates, arithmetic that cannot be done) fails the
same way on every retry; retrying it forever wedges the contract. Such errors
leave the activity as a non-retryable ``ApplicationError`` with a type, and
the contract workflow turns them into ``needs_attention`` (or refuses the
update that caused them). Failures of the infrastructure (the database is
restarting, a connection dropped, a serialization conflict) are retried:
they pass once the infrastructure is back, and an invoice must not be lost to
an outage.

Invariants:
- ``business_errors`` never swallows an exception: it re-raises, classified.
- An exception that is neither known-transient nor known-business is retried
  a few times (it may be a bug that a deploy fixes, or a rare race), then
  given up as a business error, so nothing is retried forever.
"""

from __future__ import annotations

import decimal
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import sqlalchemy.exc
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.errors import BillowValidationError

__all__ = [
    "UNCLASSIFIED_ATTEMPTS",
    "BusinessError",
    "business_errors",
]

P = ParamSpec("P")
R = TypeVar("R")

# Attempts an unclassified error gets before it is treated as deterministic.
UNCLASSIFIED_ATTEMPTS = 3

# SQLSTATE classes that are the request's fault, not the server's: data
# exceptions (22), integrity constraint violations (23), invalid text
# representation and friends. 40001/40P01 (serialization, deadlock) and
# class 08 (connection) are transient.
_BUSINESS_SQLSTATE_CLASSES = ("22", "23", "42")


class BusinessError(Exception):
    """Raised by ledger code for a request that can never succeed as sent."""

    def __init__(self, message: str, *, type: str = "LedgerRefused") -> None:
        super().__init__(message)
        self.type = type


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def classify(exc: BaseException) -> str | None:
    """The business error type of ``exc``, or None if it may be transient."""
    if isinstance(exc, ApplicationError):
        return exc.type if exc.non_retryable else None
    if isinstance(exc, BusinessError):
        return exc.type
    if isinstance(exc, BillowValidationError):
        return "InvalidRequest"
    if isinstance(exc, LookupError):
        return "NotFound"
    if isinstance(exc, ValueError | ArithmeticError | decimal.DecimalException | TypeError):
        return type(exc).__name__
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return None
    code = _sqlstate(exc)  # SQLAlchemy's wrapper or asyncpg's own exception
    if code is not None and code[:2] in _BUSINESS_SQLSTATE_CLASSES:
        return "LedgerConstraint"
    return None


def business_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate a ledger activity: deterministic errors become non-retryable."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            kind = classify(exc)
            if kind is None and isinstance(exc, Exception) and _unclassified_exhausted(exc):
                kind = "Unexpected"
            if kind is None or (isinstance(exc, ApplicationError) and exc.non_retryable):
                raise
            # billow's own refusals read "field: reason"; others keep their class name.
            ours = isinstance(exc, BusinessError | BillowValidationError)
            message = str(exc) if ours else f"{type(exc).__name__}: {exc}"
            raise ApplicationError(message, type=kind, non_retryable=True) from exc

    return wrapper


def _unclassified_exhausted(exc: Exception) -> bool:
    if isinstance(exc, OSError | TimeoutError | sqlalchemy.exc.DBAPIError) or _sqlstate(exc):
        return False  # infrastructure: retried until it is back
    try:
        attempt = activity.info().attempt
    except RuntimeError:  # called outside an activity (tests of the plain function)
        return False
    return attempt >= UNCLASSIFIED_ATTEMPTS
