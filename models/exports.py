"""Finance exports: journal totals and the deferred-revenue roll-forward (SPEC.md 13).

Pure functions over journal entries as the ledger stores them (each with its
``booked_on`` date, ``kind`` and lines). No I/O.

Invariants:
- `journal_totals` is the sum of the lines it is given: per account and in
  all, debits equal credits when every entry balances.
- `deferred_rollforward` moves deferred revenue month by month:
  ``closing = opening + invoiced - recognized - breakage - credited``, and
  the last month's closing is the contract's deferred balance (the sum of
  every deferred_revenue line up to it), to the cent. ``invoiced`` is what
  commitment and top-up invoices deferred, ``recognized`` what usage paid
  with credits recognized, ``breakage`` what expiry recognized, and
  ``credited`` every other movement (corrections: a credit note removing
  credits lowers deferred revenue, credits returned to a grant raise it, so
  ``credited`` can be negative).
- Months are calendar months of ``booked_on`` (the contract's local date).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from models.money import DecimalStr

__all__ = ["AccountTotal", "RollForwardMonth", "deferred_rollforward", "journal_totals",
           "month_of", "months_between"]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
DEFERRED = "deferred_revenue"
_INVOICED = ("commitment_invoiced", "top_up_invoiced")


class AccountTotal(BaseModel):
    model_config = _FROZEN
    account: str
    debit: DecimalStr
    credit: DecimalStr


class RollForwardMonth(BaseModel):
    model_config = _FROZEN
    month: str  # "2027-01"
    opening: DecimalStr
    invoiced: DecimalStr
    recognized: DecimalStr
    breakage: DecimalStr
    credited: DecimalStr
    closing: DecimalStr


def _d(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def journal_totals(lines: Iterable[Mapping[str, Any]]) -> list[AccountTotal]:
    """Debits and credits per account (sorted by account), from journal lines."""
    debit: dict[str, Decimal] = {}
    credit: dict[str, Decimal] = {}
    for ln in lines:
        account = str(ln["account"])
        debit[account] = debit.get(account, Decimal(0)) + _d(ln["debit"])
        credit[account] = credit.get(account, Decimal(0)) + _d(ln["credit"])
    return [AccountTotal(account=a, debit=debit[a], credit=credit[a]) for a in sorted(debit)]


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def months_between(first: str, last: str) -> list[str]:
    """Every month from ``first`` to ``last`` inclusive ("YYYY-MM")."""
    y, m = (int(p) for p in first.split("-"))
    out = []
    while f"{y:04d}-{m:02d}" <= last:
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _deferred_net(entry: Mapping[str, Any]) -> Decimal:
    """Credit minus debit on deferred revenue (positive: more is deferred)."""
    return sum((_d(ln["credit"]) - _d(ln["debit"]) for ln in entry["lines"]
                if ln["account"] == DEFERRED), Decimal(0))


def deferred_rollforward(
    entries: Sequence[Mapping[str, Any]],
    first: str | None = None,
    last: str | None = None,
) -> list[RollForwardMonth]:
    """One row per month from ``first`` to ``last`` (default: the first and last
    month with a deferred movement). Movements before ``first`` make its opening."""
    moving = [(month_of(e["booked_on"]), str(e["kind"]), _deferred_net(e)) for e in entries]
    moving = [m for m in moving if m[2] != 0]
    if not moving and (first is None or last is None):
        return []
    first = first or min(m[0] for m in moving)
    last = last or max(m[0] for m in moving)
    balance = sum((net for month, _, net in moving if month < first), Decimal(0))
    out = []
    for month in months_between(first, last):
        invoiced = recognized = brk = credited = Decimal(0)
        for m, kind, net in moving:
            if m != month:
                continue
            if kind in _INVOICED:
                invoiced += net
            elif kind == "usage_from_credits":
                recognized -= net
            elif kind == "breakage":
                brk -= net
            else:
                credited -= net
        closing = balance + invoiced - recognized - brk - credited
        out.append(RollForwardMonth(month=month, opening=balance, invoiced=invoiced,
                                    recognized=recognized, breakage=brk, credited=credited,
                                    closing=closing))
        balance = closing
    return out
