"""What one random-lifecycle run records, and the instruments that record it.

`Outcome` is everything the checks judge: what billow answered to each
action, every activity attempt, the workflow's histories, its final status
and state, and the ledger. The activity interceptor counts attempts: ledger
activities are local activities, whose retries leave no history events (one
marker at the end), so history alone cannot tell "retried forever".
`FailingGateway` is a card gateway that is down (known case 9 of issue 11).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.payments import GatewayResult, SimulatedCardGateway
from tests.support.lifecycle_gen import Lifecycle
from tests.support.lifecycle_ledger import LedgerSnapshot

FAILED_ATTEMPTS_LIMIT = 4  # 4 failed attempts = 3 retries done and a 4th coming


@dataclass
class Answer:
    """What billow answered to one action."""

    index: int
    at: str
    do: str
    status: str  # ok | refused | error | skipped
    result: Any = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # (field, reason)
    message: str | None = None
    sent: Any = None  # what was actually sent (payments resolved against the state)


@dataclass
class ActivityRecord:
    run_id: str
    activity_id: str
    activity_type: str
    is_local: bool
    attempts: int = 0
    failures: list[str] = field(default_factory=list)
    retryable_failures: int = 0


@dataclass
class HistoryRun:
    run_id: str
    events: list[tuple[str, str]]  # (event type, detail: failure message, timer id ...)


@dataclass
class Outcome:
    lifecycle: Lifecycle
    created: bool = False
    creation: Answer | None = None
    answers: list[Answer] = field(default_factory=list)
    activities: list[ActivityRecord] = field(default_factory=list)
    histories: list[HistoryRun] = field(default_factory=list)
    status: str | None = None  # the latest run's WorkflowExecutionStatus name
    view: dict[str, Any] | None = None
    query_error: str | None = None
    ledger: LedgerSnapshot | None = None
    aborted: str | None = None  # why the example was stopped early
    horizon: datetime | None = None
    horizon_capped: bool = False
    started_at: datetime | None = None  # server time the contract was created
    wall_s: float = 0.0


def ledger_corrected(o: Outcome) -> set[str]:
    """Invoices a correction changed in the ledger alone, after the workflow had
    completed (SPEC.md section 11): the workflow's final state no longer follows
    them. A resend of an id answered before changes nothing and is not counted."""
    keys: set[str] = set()
    answered: set[str] = set()
    for a in o.answers:
        if a.do != "correct" or a.status != "ok" or not isinstance(a.result, dict):
            continue
        cid = str(a.result.get("correction_id"))
        if a.result.get("recorded_via") == "ledger" and cid not in answered:
            keys.add(str(a.result.get("invoice")))
            if isinstance(a.result.get("reissued"), dict):
                keys.add(str(a.result["reissued"]["key"]))
        answered.add(cid)
    return keys


class Recorder:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], ActivityRecord] = {}
        self.stuck = asyncio.Event()
        self.why: str | None = None

    def attempt(self) -> ActivityRecord:
        info = activity.info()
        key = (info.workflow_run_id or "", info.activity_id)
        rec = self.records.setdefault(key, ActivityRecord(
            run_id=key[0], activity_id=info.activity_id, activity_type=info.activity_type,
            is_local=info.is_local))
        rec.attempts = max(rec.attempts, info.attempt)
        return rec

    def failed(self, rec: ActivityRecord, exc: BaseException) -> None:
        rec.failures.append(f"{type(exc).__name__}: {exc}"[:400])
        non_retryable = isinstance(exc, ApplicationError) and exc.non_retryable
        if isinstance(exc, asyncio.CancelledError) or non_retryable:
            return
        rec.retryable_failures += 1
        if rec.retryable_failures >= FAILED_ATTEMPTS_LIMIT and self.why is None:
            self.why = (f"activity {rec.activity_type} failed {rec.retryable_failures} times "
                        f"and is retried again: {rec.failures[-1]}")
            self.stuck.set()


class CountAttempts(Interceptor):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _AttemptsInbound(next, self.recorder)


class _AttemptsInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, recorder: Recorder) -> None:
        super().__init__(next)
        self.recorder = recorder

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        rec = self.recorder.attempt()
        try:
            return await super().execute_activity(input)
        except BaseException as exc:
            self.recorder.failed(rec, exc)
            raise


@dataclass
class FailingGateway:
    """A card gateway that is down for its first ``failures`` calls (known case 9)."""

    failures: int
    inner: SimulatedCardGateway
    name: str = "simulated_card"

    async def charge(self, *, customer_id: str, amount: Decimal, currency: str,
                     idempotency_key: str) -> GatewayResult:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("gateway unreachable")
        return await self.inner.charge(customer_id=customer_id, amount=amount,
                                       currency=currency, idempotency_key=idempotency_key)

    async def refund(self, *, customer_id: str, amount: Decimal, currency: str,
                     idempotency_key: str) -> GatewayResult:
        # A credit note's refund goes through the same gateway (SPEC.md section 11).
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("gateway unreachable")
        return await self.inner.refund(customer_id=customer_id, amount=amount,
                                       currency=currency, idempotency_key=idempotency_key)


# --- the run ---------------------------------------------------------------------
