"""Finance exports: the journal by date range, the deferred-revenue roll-forward,
and a contract's credit ledger (SPEC.md section 13). JSON, or CSV with
``format=csv`` (or ``Accept: text/csv``) for the two tables accountants load."""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from activities.api_keys import Scope
from activities.exports import journal_entries
from api.deps import AppDeps, get_deps
from api.problems import problem_responses, validation_problem
from api.security import require_scope
from models.exports import AccountTotal, RollForwardMonth, deferred_rollforward, journal_totals
from models.money import plain

router = APIRouter(tags=["exports"])
Deps = Annotated[AppDeps, Depends(get_deps)]
_ops = [Depends(require_scope(Scope.OPS))]
_read = [Depends(require_scope(Scope.CRM))]
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_CSV: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/csv": {"schema": {"type": "string"}}},
    "description": "JSON, or CSV (`format=csv` or `Accept: text/csv`)"}}


class JournalLineOut(BaseModel):
    account: str
    debit: str
    credit: str


class JournalEntryOut(BaseModel):
    id: int
    entry_key: str
    contract_id: str
    currency: str
    kind: str
    invoice_key: str | None
    grant_id: str | None
    booked_on: date
    lines: list[JournalLineOut]


class JournalExport(BaseModel):
    start: date | None = Field(alias="from", serialization_alias="from")
    end: date | None = Field(alias="to", serialization_alias="to")
    entries: list[JournalEntryOut]
    totals: list[AccountTotal] = Field(description="Debits and credits per account: the sums "
                                                   "of the entries' lines.")
    debit: str
    credit: str


class RollForwardRow(RollForwardMonth):
    contract_id: str
    currency: str


class DeferredRevenue(BaseModel):
    months: list[RollForwardRow]
    deferred_balance: dict[str, str] = Field(
        description="Per contract, deferred revenue after every movement booked (the last "
                    "month's closing when the range reaches it).")


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise validation_problem([("query.format", "must be json or csv")])
        return fmt == "csv"
    return "text/csv" in (request.headers.get("accept") or "")


def _csv(header: list[str], rows: list[list[Any]], name: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _text(value: Any) -> str:
    return plain(value) if hasattr(value, "as_tuple") else "" if value is None else str(value)


@router.get("/v1/journal", summary="Export the journal", response_model=JournalExport,
            response_model_by_alias=True, dependencies=_ops,
            responses={**_CSV, **problem_responses(401, 403, 422)})
async def export_journal(
    request: Request, deps: Deps,
    start: Annotated[date | None, Query(alias="from", description="First booking date "
                                                                  "(inclusive).")] = None,
    end: Annotated[date | None, Query(alias="to", description="Last booking date "
                                                              "(inclusive).")] = None,
    contract: Annotated[str | None, Query(description="Only this contract.")] = None,
    format: Annotated[str | None, Query(description="json (default) or csv")] = None,
) -> Any:
    """Every balanced journal entry booked in the range (dates are the contracts' local
    booking dates), with per-account totals that are the sums of the lines. CSV: one row
    per line. Scope: `ops`."""
    if start and end and end < start:
        raise validation_problem([("query.to", "must not be before from")])
    async with deps.engine.connect() as conn:
        entries = await journal_entries(conn, start=start, end=end, contract_id=contract)
    lines = [ln for e in entries for ln in e["lines"]]
    if _wants_csv(request, format):
        return _csv(
            ["entry_id", "booked_on", "contract_id", "currency", "kind", "entry_key",
             "invoice_key", "grant_id", "account", "debit", "credit"],
            [[e["id"], e["booked_on"], e["contract_id"], e["currency"], e["kind"],
              e["entry_key"], e["invoice_key"] or "", e["grant_id"] or "", ln["account"],
              _text(ln["debit"]), _text(ln["credit"])] for e in entries for ln in e["lines"]],
            f"journal-{start or 'start'}-{end or 'end'}.csv")
    totals = journal_totals(lines)
    return JournalExport.model_validate({
        "from": start, "to": end, "totals": totals,
        "entries": [{**e, "lines": [{k: _text(v) for k, v in ln.items()} for ln in e["lines"]]}
                    for e in entries],
        "debit": plain(sum((t.debit for t in totals), start=Decimal(0))),
        "credit": plain(sum((t.credit for t in totals), start=Decimal(0))),
    })


def _month(value: str | None, field: str) -> str | None:
    if value is not None and not _MONTH.match(value):
        raise validation_problem([(field, "must be a month, YYYY-MM")])
    return value


@router.get("/v1/deferred-revenue", summary="Deferred-revenue roll-forward",
            response_model=DeferredRevenue, dependencies=_ops,
            responses={**_CSV, **problem_responses(401, 403, 422)})
async def deferred_revenue(
    request: Request, deps: Deps,
    start: Annotated[str | None, Query(alias="from", description="First month, YYYY-MM "
                                                                 "(default: each contract's "
                                                                 "first movement).")] = None,
    end: Annotated[str | None, Query(alias="to", description="Last month, YYYY-MM.")] = None,
    contract: Annotated[str | None, Query(description="Only this contract.")] = None,
    format: Annotated[str | None, Query(description="json (default) or csv")] = None,
) -> Any:
    """Per contract and month: opening, invoiced (commitments and top-ups), recognized
    (usage paid with credits), breakage, credited (corrections) and closing deferred
    revenue. The last closing is the contract's deferred balance, to the cent; the
    movements are the journal's. Scope: `ops`."""
    first, last = _month(start, "query.from"), _month(end, "query.to")
    if first and last and last < first:
        raise validation_problem([("query.to", "must not be before from")])
    async with deps.engine.connect() as conn:
        entries = await journal_entries(conn, contract_id=contract)
    by_contract: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_contract.setdefault(e["contract_id"], []).append(e)
    rows: list[RollForwardRow] = []
    balances: dict[str, str] = {}
    for cid, items in sorted(by_contract.items()):
        currency = items[0]["currency"]
        months = deferred_rollforward(items, first, last)
        rows += [RollForwardRow(contract_id=cid, currency=currency, **m.model_dump())
                 for m in months]
        balances[cid] = plain(sum((ln["credit"] - ln["debit"] for e in items for ln in e["lines"]
                                   if ln["account"] == "deferred_revenue"), start=Decimal(0)))
    if _wants_csv(request, format):
        fields = ["contract_id", "currency", "month", "opening", "invoiced", "recognized",
                  "breakage", "credited", "closing"]
        return _csv(fields, [[_text(getattr(r, f)) for f in fields] for r in rows],
                    "deferred-revenue.csv")
    return DeferredRevenue(months=rows, deferred_balance=balances)
