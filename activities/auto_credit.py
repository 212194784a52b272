"""Automatic credit notes for a fall in late usage (SPEC.md sections 3 and 11).

When late events lower the figure of a ``max``, ``unique_count`` or ``latest``
meter below what finalized invoices billed for its period (a ``latest``
value that went down), the usage invoice that finds it credits the
difference with a ``billing_error`` credit note dated its own day:

- the amount: what was billed for the group minus the group's figure now,
  rated at the period's prices;
- against the lines that billed the group (the period's usage line, late
  rises on later invoices), the latest first, one note per credited
  invoice, allocated like any note (credits, then the amount owed, then a
  refund);
- each note line records the quantity taken back, so the next comparison
  for the period starts from the figure now and nothing is credited twice.

Runs inside the close's transaction (`activities.ledger.close_period`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.corrections import answer_of, apply_correction
from activities.late_usage import LateFall
from models.corrections import (
    CorrectCredit,
    Correction,
    CorrectionOutcome,
    CorrectionRequest,
    CreditLine,
)
from models.operations import ClosePeriodRequest
from models.periods import Period
from models.rating import UsageAggregate, UsagePart, rate_period

__all__ = ["credit_falls", "credits_made_by"]


def _now_amount(req: ClosePeriodRequest, period: Period, fall: LateFall) -> Decimal:
    """The group's figure now, rated at the period's prices."""
    r = fall.now
    part = UsagePart(start=r.part_start, end=r.part_end, aggregates=[UsageAggregate(
        meter=r.meter, dimensions=r.dimensions, quantity=r.quantity, first_seen=r.first_seen)])
    rated = rate_period(req.terms, period, [part])
    return sum((ln.amount for ln in rated.lines if ln.meter == r.meter), Decimal(0))


async def _lines_of(conn: AsyncConnection, cid: str, period: Period, fall: LateFall
                    ) -> list[Any]:
    """The lines that billed the fall's group, latest invoice first, with what is
    still uncredited on each."""
    rows = (
        await conn.execute(
            text(
                """
                SELECT i.key, l.position + 1 AS line, l.dimensions,
                       l.document ->> 'part_start' AS part_start,
                       l.amount - coalesce((SELECT sum(cl.amount) FROM credit_note_lines cl
                           JOIN credit_notes n ON n.id = cl.credit_note_id
                           WHERE n.invoice_id = i.id AND cl.invoice_line = l.position + 1), 0)
                           AS uncredited
                FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
                WHERE i.contract_id = :cid AND i.number IS NOT NULL AND i.status <> 'void'
                  AND l.meter = :meter
                  AND ((l.kind = 'usage' AND i.kind = 'usage' AND i.period_start = :start)
                       OR (l.kind = 'late_usage' AND l.line_period_start = :start))
                ORDER BY i.id DESC, l.position
                """
            ),
            {"cid": cid, "meter": fall.now.meter, "start": period.start_date},
        )
    ).all()

    def part(r: Any) -> datetime:
        return datetime.fromisoformat(r.part_start) if r.part_start else period.start

    return [r for r in rows if (r.dimensions or {}) == fall.now.dimensions
            and part(r) == fall.now.part_start and r.uncredited > 0]


async def credit_falls(
    conn: AsyncConnection, req: ClosePeriodRequest, finding_key: str,
    falls: Sequence[LateFall], earlier: Sequence[Period],
) -> list[CorrectionOutcome]:
    """Issue the notes for ``falls``; returns their outcomes (numbered)."""
    cid = req.terms.contract_id
    per_invoice: dict[str, dict[int, tuple[Decimal, Decimal]]] = {}  # line -> amount, qty
    for fall in falls:
        period = earlier[fall.period_index]
        owed_back = fall.billed_amount - _now_amount(req, period, fall)
        quantity = fall.billed_quantity - fall.now.quantity
        for r in await _lines_of(conn, cid, period, fall):
            if owed_back <= 0:
                break
            take = min(owed_back, r.uncredited)
            lines = per_invoice.setdefault(r.key, {})
            amount, qty = lines.get(r.line, (Decimal(0), Decimal(0)))
            lines[r.line] = (amount + take, qty + quantity)
            quantity = Decimal(0)  # the whole quantity goes with the first line
            owed_back -= take
    out: list[CorrectionOutcome] = []
    for key, lines in per_invoice.items():
        correction = CorrectCredit(
            id=f"auto:{finding_key}:{key}", invoice=key, reason="billing_error",
            lines=[CreditLine(line=n, amount=a) for n, (a, _) in sorted(lines.items())],
        )
        request = CorrectionRequest(
            contract_id=cid, correction=correction, at=req.period.end, on=req.issued_on,
            terms=req.terms, invoiced_periods=list(earlier),
        )
        out.append(await apply_correction(
            conn, request, automatic={n: q for n, (_, q) in lines.items()}))
    return out


_CORRECTION: TypeAdapter[Correction] = TypeAdapter(Correction)


async def credits_made_by(conn: AsyncConnection, req: ClosePeriodRequest,
                          finding_key: str) -> list[CorrectionOutcome]:
    """The automatic notes a close already made, answered again (a retried close
    whose first answer was lost must tell the workflow what it credited and the
    refunds it owes, as the first answer did)."""
    cid = req.terms.contract_id
    rows = (
        await conn.execute(
            text("SELECT document, result FROM corrections WHERE contract_id = :cid "
                 "AND starts_with(correction_id, :prefix) ORDER BY correction_id"),
            {"cid": cid, "prefix": f"auto:{finding_key}:"},
        )
    ).all()
    out = []
    for row in rows:
        request = CorrectionRequest(
            contract_id=cid, correction=_CORRECTION.validate_python(row.document),
            at=req.period.end, on=req.issued_on, terms=req.terms)
        out.append(await answer_of(conn, request, row.result, duplicate=True))
    return out
