"""Simulation timelines (SPEC 8): ``pay`` and ``amend`` actions at instants.

Invariants:
- Each action's ``at`` is an aware instant (normalized to UTC).
- Loaders return actions sorted by ``at``; the sort is stable, so actions at
  the same instant keep file order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models._loading import Format, parse_text, read_file, validate_with
from models.amendments import Amendment
from models.bounds import BoundedPositive, Instant, InvoiceKey

__all__ = [
    "AmendAction",
    "PayAction",
    "TimelineAction",
    "load_timeline",
    "load_timeline_file",
    "parse_timeline_text",
]


class PayAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    at: Instant
    action: Literal["pay"]
    invoice: InvoiceKey  # invoice key, e.g. usage:2027-01-01
    amount: BoundedPositive


class AmendAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    at: Instant
    action: Literal["amend"]
    amendment: Amendment


TimelineAction = Annotated[PayAction | AmendAction, Field(discriminator="action")]
_ADAPTER: TypeAdapter[list[TimelineAction]] = TypeAdapter(list[TimelineAction])


def load_timeline(data: Any) -> list[TimelineAction]:
    """Validate parsed data (a mapping/list); a `Path` is read as a file."""
    if isinstance(data, Path):
        return load_timeline_file(data)
    actions = validate_with(_ADAPTER, [] if data is None else data)
    return sorted(actions, key=lambda a: a.at)


def parse_timeline_text(text: str, fmt: Format = "yaml") -> list[TimelineAction]:
    return load_timeline(parse_text(text, fmt))


def load_timeline_file(path: str | Path) -> list[TimelineAction]:
    text, fmt = read_file(path)
    return parse_timeline_text(text, fmt)
