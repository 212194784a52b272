"""Simulation timelines (SPEC 8): ``pay``, ``amend``, ``void`` and ``credit`` actions at instants.

Invariants:
- Each action's ``at`` is an aware instant (normalized to UTC).
- Loaders return actions sorted by ``at``; the sort is stable, so actions at
  the same instant keep file order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from models._loading import Format, parse_text, read_file, validate_with
from models.amendments import Amendment
from models.bounds import BoundedPositive, Id, Instant, InvoiceKey
from models.corrections import CorrectCredit, CorrectVoid, CreditLine, Reason

__all__ = [
    "AmendAction",
    "CreditAction",
    "PayAction",
    "TimelineAction",
    "VoidAction",
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


class VoidAction(BaseModel):
    """Void an invoice (SPEC.md section 11); ``reissue`` rates its period again."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    at: Instant
    action: Literal["void"]
    id: Id
    invoice: InvoiceKey
    reissue: bool = False

    def correction(self) -> CorrectVoid:
        return CorrectVoid(id=self.id, invoice=self.invoice, reissue=self.reissue)


class CreditAction(BaseModel):
    """Issue a credit note (SPEC.md section 11): ``lines`` or one ``amount``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    at: Instant
    action: Literal["credit"]
    id: Id
    invoice: InvoiceKey
    reason: Reason
    lines: list[CreditLine] | None = None
    amount: BoundedPositive | None = None
    remainder: Literal["refund", "credit"] = "refund"

    @model_validator(mode="after")
    def _valid(self) -> CreditAction:
        self.correction()  # the same rules as the API's
        return self

    def correction(self) -> CorrectCredit:
        return CorrectCredit(id=self.id, invoice=self.invoice, reason=self.reason,
                             lines=self.lines, amount=self.amount, remainder=self.remainder)


TimelineAction = Annotated[PayAction | AmendAction | VoidAction | CreditAction,
                           Field(discriminator="action")]
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
