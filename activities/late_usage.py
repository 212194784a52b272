"""Late usage of non-additive meters (max, unique_count, latest): re-rate the period.

A late event of a ``sum`` or ``count`` meter adds its own quantity to its
period, so its aggregate alone is the billable delta. For ``max``,
``unique_count`` and ``latest`` it is not: a late event can raise the
period's maximum, add a user already counted, or become the latest value.
The period's figure is computed again (all events below the new watermark)
and compared with what finalized invoices billed for it, per part and group.

Invariants:

- a positive difference is returned as the period's late quantity, billed
  once as a ``late_usage`` line naming the period; the next comparison for
  the period includes that line, so nothing is billed twice;
- a negative difference (a ``latest`` value that went down) is not billed:
  it is returned as a `LateFall`, and the close that finds it issues a credit
  note for it (`activities.auto_credit`), whose quantity later comparisons
  subtract from what was billed;
- only periods that received a late event of such a meter are recomputed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.usage_query import (
    AggregateRow,
    LateAggregateRow,
    MeterSpec,
    aggregate_late_usage,
    aggregate_usage,
)
from models.catalog import Meter
from models.contract import ContractTerms
from models.periods import Period
from models.rating import BilledUsage, split_points

__all__ = ["NON_ADDITIVE", "LateFall", "billed_groups", "billed_usage", "late_rows",
           "non_additive_late_rows"]

NON_ADDITIVE = frozenset({"max", "unique_count", "latest"})

log = logging.getLogger("billow.ledger")

_GroupKey = tuple[str, datetime, tuple[tuple[str, str], ...]]


def _key(meter: str, part_start: datetime, dims: dict[str, str]) -> _GroupKey:
    return meter, part_start, tuple(sorted(dims.items()))


async def billed_usage(conn: AsyncConnection, cid: str, period: Period) -> list[Any]:
    """What finalized invoices billed for ``period`` (its usage invoice, or the
    reissue that replaced it, and late_usage lines naming it; a void invoice
    billed nothing; what automatic credit notes took back is netted): rows of
    meter, dimensions, part_start (ISO text, None for an unsplit period),
    quantity ``q`` and ``amount``."""
    rows = await conn.execute(
        text(
            """
            SELECT l.meter, l.dimensions, l.document ->> 'part_start' AS part_start,
                   sum(l.quantity) - coalesce(sum(c.q), 0) AS q,
                   sum(l.amount) - coalesce(sum(c.a), 0) AS amount
            FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
            LEFT JOIN LATERAL (
                -- what automatic credit notes took back of the line (a fall)
                SELECT sum(cl.quantity) AS q, sum(cl.amount) AS a
                FROM credit_note_lines cl JOIN credit_notes n ON n.id = cl.credit_note_id
                WHERE n.invoice_id = l.invoice_id AND cl.invoice_line = l.position + 1
                  AND cl.quantity IS NOT NULL
            ) c ON true
            WHERE i.contract_id = :cid AND i.number IS NOT NULL AND l.meter IS NOT NULL
              AND i.status <> 'void'
              AND ((l.kind = 'usage' AND i.kind = 'usage' AND i.period_start = :start)
                   OR (l.kind = 'late_usage' AND l.line_period_start = :start))
            GROUP BY 1, 2, 3
            """
        ),
        {"cid": cid, "start": period.start_date},
    )
    return list(rows)


async def billed_groups(
    conn: AsyncConnection, terms: ContractTerms, period: Period
) -> list[BilledUsage]:
    """`billed_usage` as `models.rating.BilledUsage`, what late usage of the
    period continues from (`rate_period(late=True, billed=...)`)."""
    return [
        BilledUsage(
            meter=r.meter,
            dimensions=r.dimensions or {},
            # a line of an unsplit period names no part: its part starts with the period
            part_start=datetime.fromisoformat(r.part_start) if r.part_start else period.start,
            quantity=r.q,
            amount=r.amount,
        )
        for r in await billed_usage(conn, terms.contract_id, period)
    ]


async def late_rows(
    raw: Any,
    terms: ContractTerms,
    meters: Sequence[Meter],
    earlier: Sequence[Period],
    previous_watermark: int,
    watermark: int,
) -> list[LateAggregateRow]:
    """Aggregates of the events of ``meters`` that arrived between the two
    watermarks for the ``earlier`` periods; rows name their period."""
    specs = [
        MeterSpec.of(m, sorted({t for p in earlier for t in split_points(terms, p, m.key)}))
        for m in meters
    ]
    # One statement for every earlier period.
    return await aggregate_late_usage(
        raw, customer_id=terms.customer.id, meters=specs,
        periods=[p.start for p in earlier] + [earlier[-1].end],
        previous_watermark=previous_watermark, watermark=watermark,
    )


async def _billed_by_group(
    conn: AsyncConnection, cid: str, period: Period, meters: list[str]
) -> dict[_GroupKey, tuple[Decimal, Decimal]]:
    """What finalized invoices billed for ``period``, per meter, part and group:
    (quantity, amount)."""
    billed: dict[_GroupKey, tuple[Decimal, Decimal]] = {}
    for r in await billed_usage(conn, cid, period):
        if r.meter not in meters:
            continue
        # a line of an unsplit period names no part: its part starts with the period
        part_start = datetime.fromisoformat(r.part_start) if r.part_start else period.start
        billed[_key(r.meter, part_start, r.dimensions or {})] = (r.q, r.amount)
    return billed


@dataclass(frozen=True)
class LateFall:
    """A group of a non-additive meter whose figure is now below what was billed."""

    period_index: int  # into the earlier periods
    now: AggregateRow  # the group's aggregate now
    billed_quantity: Decimal
    billed_amount: Decimal


async def non_additive_late_rows(
    conn: AsyncConnection,
    raw: Any,
    terms: ContractTerms,
    earlier: Sequence[Period],
    previous_watermark: int,
    watermark: int,
) -> tuple[dict[int, list[AggregateRow]], list[LateFall]]:
    """Per index into ``earlier``: the quantities still to bill for its
    non-additive meters, as aggregate rows (quantity = the positive delta);
    and the groups whose figure fell below what was billed, which a credit
    note credits (SPEC.md sections 3 and 11)."""
    meters = [m for m in terms.meters if str(m.aggregation) in NON_ADDITIVE]
    if not meters or not earlier:
        return {}, []
    late = await late_rows(raw, terms, meters, earlier, previous_watermark, watermark)
    out: dict[int, list[AggregateRow]] = {}
    falls: list[LateFall] = []
    for index in sorted({r.period_index for r in late}):
        period = earlier[index]
        now = await aggregate_usage(
            raw,
            customer_id=terms.customer.id,
            meters=[MeterSpec.of(m, split_points(terms, period, m.key)) for m in meters],
            start=period.start,
            end=period.end,
            watermark=watermark,
        )
        billed = await _billed_by_group(
            conn, terms.contract_id, period, [m.key for m in meters]
        )
        rows = []
        for r in now:
            quantity, amount = billed.get(_key(r.meter, r.part_start, r.dimensions),
                                          (Decimal(0), Decimal(0)))
            delta = r.quantity - quantity
            if delta > 0:
                rows.append(dataclasses.replace(r, quantity=delta))
            elif delta < 0:
                log.info("contract %s: late usage lowers %s %s for %s by %s: credited",
                         terms.contract_id, r.meter, r.dimensions, period.start_date, -delta)
                falls.append(LateFall(index, r, quantity, amount))
        if rows:
            out[index] = rows
    return out, falls
