"""Usage events (SPEC 3 and 8).

Invariants:
- Timestamps must carry an offset; they are normalized to UTC.
- ``quantity`` is an exact, non-negative decimal (default 1) below 10^18
  with at most 12 decimal places (SPEC 6); ``dimensions`` are strings.
- ``id``, ``customer``, ``meter`` and every dimension key and value hold at
  most `MAX_TEXT` (256) characters and no NUL character: a longer one could
  exceed what a b-tree entry holds, and PostgreSQL text cannot hold NUL (nor
  lone surrogates, which are not UTF-8; pydantic refuses those), either of
  which would fail a whole batch's INSERT. They are refused per event.
- `parse_usage_jsonl` never raises for a bad line: it returns the good events
  and one ``(line number, problem)`` per bad line, with the field path.
- `dedupe_events` keeps the first event of each ``id`` (events are
  deduplicated by id for all time; a resent event is billed once).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from models._loading import validate_model
from models.bounds import MAX_ID_LENGTH, check_magnitude
from models.contract import UtcDatetime
from models.errors import BillowValidationError
from models.money import NonNegativeDecimal

__all__ = [
    "MAX_TEXT",
    "UsageEvent",
    "UsageLineError",
    "dedupe_events",
    "parse_usage_jsonl",
]

MAX_TEXT: Final = MAX_ID_LENGTH  # ids, names and dimension keys and values


def _no_nul(s: str) -> str:
    if "\x00" in s:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return s


_Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_no_nul)]
_Name = Annotated[str, Field(min_length=1, max_length=MAX_TEXT), AfterValidator(_no_nul)]
Quantity = Annotated[NonNegativeDecimal, AfterValidator(check_magnitude)]


class UsageEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: _Name
    customer: _Name
    meter: _Name
    timestamp: UtcDatetime
    quantity: Quantity = Decimal(1)  # corrections are credit notes, not negative usage
    dimensions: dict[_Text, _Text] = Field(default_factory=dict)


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
