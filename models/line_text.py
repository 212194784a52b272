"""What each invoice line is, in words: the meter's or fee's name beside its
key, what a commitment or top-up bought.

Lines are stored in the SPEC.md section 6 shape, which names meters and fees
by key only (``tokens``) and says nothing of the credits a ``top_up`` line
sold. People read names ("LLM tokens (thousands)") and need to see what they
pay for. Pure: the terms and the grant come from the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from models.contract import ContractTerms
from models.formatting import money_code


class SoldGrant(BaseModel):
    """The credit grant a commitment or top-up invoice sold."""

    grant_id: str
    credits: Decimal
    effective: date
    expires: date


def _dims(line: Mapping[str, Any]) -> str:
    dims = line.get("dimensions") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(dims.items()))


def describe_line(line: Mapping[str, Any], terms: ContractTerms, grant: SoldGrant | None) -> str:
    kind = line.get("kind")
    if kind in ("usage", "late_usage"):
        key = str(line.get("meter"))
        name = next((m.name for m in terms.meters if m.key == key), None)
        text = f"{key} · {name}" if name and name != key else key
        if dims := _dims(line):
            text += f" ({dims})"
        if kind == "late_usage":
            text += f"; late usage of {line.get('period_start')} to {line.get('period_end')}"
        return text
    if kind in ("minimum", "maximum"):  # a meter's spend limit (SPEC 12)
        key = str(line.get("meter"))
        name = next((m.name for m in terms.meters if m.key == key), None)
        label = f"{key} · {name}" if name and name != key else key
        text = f"{kind} spend of {label}"
        if line.get("period_start"):
            text += f", for {line.get('period_start')} to {line.get('period_end')}"
        return text
    if kind == "true_up":
        return "minimum commitment true-up (shortfall of spend against the minimum)"
    if kind == "fee":
        key = str(line.get("fee"))
        name = next((f.name for f in terms.recurring_fees if f.key == key), None)
        return f"{key} · {name}" if name and name != key else key
    if kind in ("commitment", "top_up"):
        what = "prepaid commitment" if kind == "commitment" else "credits top-up"
        if grant is None:
            return what
        credits = money_code(grant.credits, terms.currency)
        return (f"{what}: {credits} of credits (grant {grant.grant_id}), usable from "
                f"{grant.effective} until {grant.expires}")
    return str(kind)


def describe_lines(
    lines: Sequence[Mapping[str, Any]], terms: ContractTerms, grant: SoldGrant | None
) -> list[str]:
    """One description per line, in order."""
    return [describe_line(ln, terms, grant) for ln in lines]
