"""The periods a contract's usage invoices billed, read from the ledger.

A close rates late usage against every earlier period of the term, and a
reissue rates a voided period again; both need each period as the first
close saw it: the span billed and the full cycle period its fees and
minimums were prorated over. Since migration 0010 a usage invoice stores
both, so requests no longer carry the term's periods (issue 13: the 12th
close of a year sent 3.2 KB of them, the longest term allowed about 190 KB).

Invariants:
- one period per span billed, in start order, whether its invoice is open,
  paid, void or reissued (a reissue bills its voided invoice's span);
- only finalized (numbered) invoices count: a draft or a held invoice has
  billed nothing;
- an invoice from before migration 0010 has no full period stored: it is
  computed from the terms (`full_period`), which is exact unless the
  contract's billing cycle changed after that period. A request that still
  carries the periods (a contract whose workflow started before 0010)
  writes their full periods onto those invoices first (`backfill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.contract import ContractTerms
from models.periods import Period, full_period_containing, local_midnight_utc

__all__ = ["InvoicedPeriods", "backfill", "full_period", "invoiced_periods", "period_of_row"]


@dataclass(frozen=True)
class InvoicedPeriods:
    periods: list[Period]  # one per span billed, in start order
    watermark: int | None  # the highest usage watermark any of them was rated to


async def invoiced_periods(conn: AsyncConnection, terms: ContractTerms) -> InvoicedPeriods:
    """Every span the contract's finalized usage invoices billed (one statement)."""
    rows = (
        await conn.execute(
            text(
                "SELECT period_start, period_end, full_period_start, full_period_end, "
                "usage_watermark FROM invoices WHERE contract_id = :cid AND kind = 'usage' "
                "AND number IS NOT NULL ORDER BY period_start, id"
            ),
            {"cid": terms.contract_id},
        )
    ).all()
    periods: dict[date, Period] = {}
    for row in rows:
        periods.setdefault(row.period_start, period_of_row(terms, row))
    marks = [r.usage_watermark for r in rows if r.usage_watermark is not None]
    return InvoicedPeriods(list(periods.values()), max(marks, default=None))


def period_of_row(terms: ContractTerms, row: Any) -> Period:
    """The period an invoice row billed (``period_start``/``period_end`` and the
    full period, stored or computed)."""
    start, end = row.period_start, row.period_end
    if row.full_period_start is not None and row.full_period_end is not None:
        full = (row.full_period_start, row.full_period_end)
    else:
        full = full_period(terms, start, end)
    return Period(
        start=local_midnight_utc(start, terms.timezone),
        end=local_midnight_utc(end, terms.timezone),
        start_date=start, end_date=end, full_start_date=full[0], full_end_date=full[1],
    )


def full_period(terms: ContractTerms, start: date, end: date) -> tuple[date, date]:
    """The full cycle period an invoiced span belongs to, as the close prorated it
    (a first calendar period, or one shortened by a termination or the term end),
    for an invoice that does not store it.

    Spans from before a mid-term cycle change lie on a grid the final terms no
    longer describe: they are taken as they are (their own full period)."""
    if start < terms.cycle_anchor:
        return start, end
    full = full_period_containing(terms.cycle_anchor, terms.billing_cycle, terms.billing_anchor,
                                  start, terms.starts_on.day)
    return full if full[0] <= start and end <= full[1] else (start, end)


async def backfill(conn: AsyncConnection, contract_id: str, periods: Sequence[Period]) -> None:
    """Store the full periods a request still carries on the invoices that lack
    them (invoices finalized before migration 0010), in one statement."""
    if not periods:
        return
    await conn.execute(
        text(
            """
            UPDATE invoices i SET full_period_start = p.fs, full_period_end = p.fe
            FROM unnest(CAST(:starts AS date[]), CAST(:fulls AS date[]), CAST(:fulle AS date[]))
                AS p(ps, fs, fe)
            WHERE i.contract_id = :cid AND i.kind = 'usage' AND i.period_start = p.ps
              AND i.full_period_start IS NULL
            """
        ),
        {"cid": contract_id, "starts": [p.start_date for p in periods],
         "fulls": [p.full_start_date for p in periods],
         "fulle": [p.full_end_date for p in periods]},
    )
