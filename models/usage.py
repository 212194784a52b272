"""Usage events (SPEC 3 and 8).

Invariants:
- Timestamps must carry an offset; they are normalized to UTC.
- ``quantity`` is an exact, non-negative decimal (default 1); ``dimensions``
  are strings.
- `parse_usage_jsonl` never raises for a bad line: it returns the good events
  and one ``(line number, problem)`` per bad line, with the field path.
- `dedupe_events` keeps the first event of each ``id`` (events are
  deduplicated by id for all time; a resent event is billed once).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from models._loading import validate_model
from models.contract import UtcDatetime
from models.errors import BillowValidationError
from models.money import NonNegativeDecimal

__all__ = ["UsageEvent", "UsageLineError", "dedupe_events", "parse_usage_jsonl"]


class UsageEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(min_length=1)]
    customer: Annotated[str, Field(min_length=1)]
    meter: Annotated[str, Field(min_length=1)]
    timestamp: UtcDatetime
    quantity: NonNegativeDecimal = Decimal(1)  # corrections are credit notes, not negative usage
    dimensions: dict[str, str] = Field(default_factory=dict)


class UsageLineError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    line: int  # 1-based
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f": {self.path}" if self.path else "")
        return f"{where}: {self.reason}"


def parse_usage_jsonl(text: str) -> tuple[list[UsageEvent], list[UsageLineError]]:
    """Parse JSON Lines; blank lines are skipped. Duplicates are kept (see `dedupe_events`)."""
    events: list[UsageEvent] = []
    errors: list[UsageLineError] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(UsageLineError(line=n, path="", reason=f"invalid JSON: {exc.msg}"))
            continue
        try:
            events.append(validate_model(UsageEvent, data))
        except BillowValidationError as exc:
            errors.extend(UsageLineError(line=n, path=p, reason=r) for p, r in exc.problems)
    return events, errors


def dedupe_events(events: Iterable[UsageEvent]) -> list[UsageEvent]:
    seen: set[str] = set()
    out: list[UsageEvent] = []
    for e in events:
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out
