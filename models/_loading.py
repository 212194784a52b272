"""Shared YAML/JSON parsing and error translation for the loaders.

Invariants:
- YAML timestamps are NOT resolved by PyYAML: ``2027-01-01`` stays a string so
  pydantic parses dates and instants the same way for YAML and JSON, and a
  bad date (``2027-02-30``) is a field error instead of a parser crash.
- Every failure leaves as `BillowValidationError` with ``path: reason`` items;
  pydantic locations are rendered as ``a[0].b`` and nested
  `BillowValidationError`s raised by model validators are expanded under the
  path of the model that raised them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from models.errors import BillowValidationError, Problem, join_path

Format = Literal["yaml", "json"]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class _NoTimestampLoader(yaml.SafeLoader):
    """SafeLoader that leaves timestamps as strings (see module docstring)."""


_NoTimestampLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_text(text: str, fmt: Format = "yaml") -> Any:
    """Parse YAML or JSON text into plain Python data."""
    try:
        if fmt == "json":
            return json.loads(text)
        return yaml.load(text, Loader=_NoTimestampLoader)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise BillowValidationError([("", f"cannot parse {fmt}: {exc}")]) from exc


def format_for(path: Path) -> Format:
    return "json" if path.suffix.lower() == ".json" else "yaml"


def read_file(path: str | Path) -> tuple[str, Format]:
    p = Path(path)
    return p.read_text(encoding="utf-8"), format_for(p)


def loc_to_path(
    loc: Iterable[int | str], drop: Callable[[tuple[int | str, ...], str], bool]
) -> str:
    path = ""
    seen: tuple[int | str, ...] = ()
    for part in loc:
        if isinstance(part, str) and drop(seen, part):
            seen = (*seen, part)
            continue
        seen = (*seen, part)
        path = join_path(path, f"[{part}]" if isinstance(part, int) else part)
    return path


# Tags of discriminated unions appear in pydantic locations; they are not fields.
_UNION_TAGS = frozenset(
    {
        "rate_override",
        "grant_credits",
        "change_billing_cycle",
        "change_payment_terms",
        "set_auto_pay",
        "extend_term",
        "terminate",
        "set_minimum_commitment",
        "pay",
        "amend",
        "unit",
        "tiered",
        "package",
        "usage",
        "late_usage",
        "minimum",
        "maximum",
        "true_up",
        "fee",
        "commitment",
        "top_up",
    }
)


def _tag_dropper(top_tagged: bool) -> Callable[[tuple[int | str, ...], str], bool]:
    def drop(seen: tuple[int | str, ...], part: str) -> bool:
        if part not in _UNION_TAGS:
            return False
        if top_tagged and (not seen or (len(seen) == 1 and isinstance(seen[0], int))):
            return True  # the document (or each item of a top-level list) is a tagged union
        if seen and seen[-1] in ("amendment", "price"):
            return True
        return len(seen) >= 2 and isinstance(seen[-1], int) and seen[-2] == "lines"

    return drop


def problems_from_pydantic(
    exc: ValidationError, prefix: str = "", *, top_tagged: bool = False
) -> list[Problem]:
    out: list[Problem] = []
    drop = _tag_dropper(top_tagged)
    for err in exc.errors():
        path = join_path(prefix, loc_to_path(err["loc"], drop))
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, BillowValidationError):
            out.extend((join_path(path, p), r) for p, r in inner.problems)
            continue
        msg = err["msg"]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = join_path(path, str(ctx.get("discriminator", "")).strip("'"))
        if inner is not None and msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append((path, msg))
    return out


def validate_model(model: type[M], data: Any, prefix: str = "") -> M:
    """``model.model_validate`` with errors as `BillowValidationError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BillowValidationError(problems_from_pydantic(exc, prefix)) from None


def validate_with(adapter: TypeAdapter[T], data: Any, prefix: str = "") -> T:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise BillowValidationError(problems_from_pydantic(exc, prefix, top_tagged=True)) from None
