"""An HTTP client that keeps billow's retry promise, and remembers every answer.

billow promises (SPEC.md section 10) that a retry with the same
``Idempotency-Key`` is always safe and that an outcome it cannot tell yet is a
503 or 504 with ``Retry-After``. So this client:

* retries 503/504 *with* ``Retry-After`` (counted, never a violation);
* retries a refused connection (the API is down: fine) and a reset or a
  timeout of a request in flight (the API was killed under it: counted);
* retries a 500 or a 5xx without ``Retry-After`` too, to see how it ends,
  but records it as a violation of the bar;
* never retries a 4xx or a 2xx: that is the answer.

Every attempt's outcome is tallied by request kind.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRY_AFTER_CAP_S = 2.0  # honour Retry-After, but no longer than this (keeps runs short)
# A request still answered 503/504 (or not at all) after this long is given up
# on, as a client would: recorded as a violation, and the run goes on.
GIVE_UP_S = 90.0


@dataclass
class Answer:
    status: int
    body: Any
    attempts: int
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Violation:
    """Something the client saw that billow promises never to show."""

    what: str  # e.g. "500", "503 without Retry-After", "valid request refused (422)"
    request: str  # the request's label
    detail: str
    at_s: float


@dataclass
class Tally:
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status" -> attempts
    refused: int = 0  # connection refused (API down): retried
    resets: int = 0  # connection lost mid-request (API killed): retried
    timeouts: int = 0
    retried_5xx: int = 0  # 503/504 with Retry-After: retried
    violations: list[Violation] = field(default_factory=list)


class Client:
    """One API key, one base URL; ``deadline`` bounds every retry loop."""

    def __init__(self, base_url: str, api_key: str, deadline: float, started: float) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.deadline = deadline
        self.started = started
        self.tally = Tally()
        self.inflight = 0  # mutating requests on the wire now (the fault injector reads it)
        self.inflight_kinds: Counter[str] = Counter()
        self.busy = asyncio.Event()  # set while a mutating request is on the wire
        self._http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(60.0, connect=3),
                                       limits=httpx.Limits(max_connections=32),
                                       trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    def _at(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def violation(self, what: str, request: str, detail: str) -> None:
        self.tally.violations.append(Violation(what, request, detail[:500], self._at()))

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Answer:
        return await self._send("GET", path, None, None, "read", label=f"GET {path}",
                                params=params)

    async def send(self, method: str, path: str, body: Any, key: str | None, kind: str,
                   label: str) -> Answer:
        """A mutating request with its ``Idempotency-Key``, retried until it has an answer."""
        return await self._send(method, path, body, key, kind, label)

    async def _send(self, method: str, path: str, body: Any, key: str | None, kind: str,
                    label: str, params: dict[str, Any] | None = None) -> Answer:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        content = None if body is None else json.dumps(body).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"
        attempts = 0
        mutating = method != "GET"
        give_up = min(time.monotonic() + GIVE_UP_S, self.deadline)
        last: Answer | None = None
        while True:
            attempts += 1
            if time.monotonic() > give_up:
                if last is None:
                    raise TimeoutError(f"{label}: no answer in {GIVE_UP_S:.0f} s")
                self.violation(f"still {last.status} after {GIVE_UP_S:.0f} s", label,
                               str(last.body))
                return last
            if mutating:
                self.inflight += 1
                self.inflight_kinds[kind] += 1
                self.busy.set()
            try:
                resp = await self._http.request(method, path, content=content, headers=headers,
                                                params=params)
            except httpx.ConnectError:
                self.tally.refused += 1
                await asyncio.sleep(0.3)
                continue
            except httpx.TimeoutException:
                self.tally.timeouts += 1
                await asyncio.sleep(0.5)
                continue
            except httpx.TransportError:
                # Read/write error or a remote close mid-request: the API was killed.
                self.tally.resets += 1
                await asyncio.sleep(0.3)
                continue
            finally:
                if mutating:
                    self.inflight -= 1
                    self.inflight_kinds[kind] -= 1
                    if self.inflight == 0:
                        self.busy.clear()
            status = resp.status_code
            self.tally.statuses[f"{kind} {status}"] += 1
            last = Answer(status=status, body=_json(resp), attempts=attempts)
            if status >= 500:
                retry_after = resp.headers.get("retry-after")
                if status in (503, 504) and retry_after is not None:
                    self.tally.retried_5xx += 1
                    await asyncio.sleep(min(_seconds(retry_after), RETRY_AFTER_CAP_S))
                    continue
                what = str(status) if status == 500 else f"{status} without Retry-After"
                self.violation(what, label, resp.text)
                await asyncio.sleep(1.0)
                continue
            return Answer(status=status, body=_json(resp), attempts=attempts,
                          replayed=resp.headers.get("idempotent-replayed") == "true")


def _seconds(value: str) -> float:
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text
