"""A period's usage invoice computed from what the database holds now.

Rating, late usage (at the prices of its own instant), spend limits, fees,
credits and a minimum commitment's true-up: pure math from ``models`` on rows
read in the caller's transaction. Nothing is written here: the close
finalizes what this returns (`activities.ledger.LedgerActivities.close_period`)
and the API's draft preview shows it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from activities.invoiced_periods import backfill, invoiced_periods
from activities.late_usage import LateFall, billed_groups, late_rows, non_additive_late_rows
from activities.ledger_store import (
    load_credit_state,
)
from activities.spend import billed_meters, term_spend
from activities.usage_query import (
    MeterSpec,
    aggregate_usage,
    read_watermark,
)
from models.contract import ContractTerms
from models.credits import CreditApplication, CreditState
from models.invoices import (
    InvoiceDocument,
    InvoiceKind,
    InvoicePeriod,
    InvoiceStatus,
    LateUsageLine,
    Line,
    build_invoice,
    invoice_key_usage,
)
from models.minimum_commitment import CommitmentProgress, commitment_progress, true_up_lines
from models.periods import Period
from models.rating import (
    UnpricedGroup,
    UsageAggregate,
    UsagePart,
    fee_lines,
    rate_period,
    split_points,
)
from models.spend_limits import late_limit_lines, with_limit_lines

# Credits are in force until the instant they expire; a grant expiring exactly
# at a boundary still pays that boundary's invoice (models/credits.py).
_JUST_BEFORE = timedelta(microseconds=1)


@dataclass(frozen=True)
class ComputedInvoice:
    """A period's usage invoice as it would be finalized now (nothing written)."""

    document: InvoiceDocument | None  # None when held for attention
    attention: str | None
    watermark: int
    credits_before: CreditState
    state: CreditState  # credits after this invoice drew them down
    application: CreditApplication | None
    expired_before: bool
    # Spend against the minimum commitment in force (SPEC 12); None without one.
    commitment: CommitmentProgress | None = None
    # Groups of earlier periods whose non-additive figure fell (credited at close).
    falls: tuple[LateFall, ...] = ()
    # The term's periods invoiced before this one (``falls`` index into them).
    earlier: tuple[Period, ...] = ()


async def compute_usage_invoice(
    conn: AsyncConnection, terms: ContractTerms, period: Period,
    earlier_periods: Sequence[Period] | None, issued_on: date | None, *,
    is_final: bool = False,
) -> ComputedInvoice:
    """Rate the period (and late usage), apply spend limits, price fees, apply
    credits, true up a minimum commitment (``is_final``: the term's last
    invoice): pure math on what the database holds now. Finalizing stores it;
    a draft preview shows it.

    ``earlier_periods``: None reads them from the ledger (`invoiced_periods`);
    a workflow started before migration 0010 still sends them, and they are
    written to the ledger then (`backfill`)."""
    cid = terms.contract_id
    raw = await raw_connection(conn)
    watermark = await read_watermark(raw)
    invoiced = await invoiced_periods(conn, terms)
    previous = invoiced.watermark
    if earlier_periods is None:
        earlier_periods = [p for p in invoiced.periods if p.start_date < period.start_date]
    else:
        await backfill(conn, cid, earlier_periods)
    rating = rate_period(terms, period, await usage_parts(raw, terms, period, watermark))
    falls: list[LateFall] = []
    late_lines, late_unpriced = await late_usage_lines(
        conn, raw, terms, earlier_periods, previous, watermark, falls
    )
    credits_before = await load_credit_state(conn, cid)
    unpriced = [*rating.unpriced, *late_unpriced]
    if unpriced:
        reason = "unpriced usage: " + "; ".join(
            f"{u.meter} {json.dumps(u.dimensions, sort_keys=True)} ({u.quantity})"
            for u in unpriced
        )
        return ComputedInvoice(None, reason, watermark, credits_before, credits_before,
                               None, False)
    # Usage-kind lines (SPEC 12): the period's, each limited meter's minimum or
    # maximum after its lines, then late usage with its limit adjustments.
    usage_lines: list[Line] = [*with_limit_lines(terms, period, rating.lines), *late_lines]
    state, expired = credits_before.expire(period.end - _JUST_BEFORE)
    usage_amount = sum((ln.amount for ln in usage_lines), Decimal(0))
    state, application = state.apply(usage_amount, period.end)
    # The term's spend so far is read only under a minimum commitment (issue 13).
    spent = (await term_spend(conn, cid) if terms.minimum_commitment_at(period.start)
             else Decimal(0))
    progress = commitment_progress(terms, period, usage_amount, spent, is_final=is_final)
    doc = build_invoice(
        key=invoice_key_usage(period.start_date),
        kind=InvoiceKind.USAGE,
        currency=terms.currency,
        period=InvoicePeriod(start=period.start_date, end=period.end_date),
        lines=[*usage_lines, *fee_lines(terms, period), *true_up_lines(progress)],
        credits_applied=application.applied_total,
        issued_on=issued_on,
        status=InvoiceStatus.DRAFT,
    )
    return ComputedInvoice(doc, None, watermark, credits_before, state, application,
                           bool(expired), progress, tuple(falls), tuple(earlier_periods))


async def raw_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under SQLAlchemy's, in the same transaction."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _meter_specs(terms: ContractTerms, period: Period) -> list[MeterSpec]:
    return [MeterSpec.of(m, split_points(terms, period, m.key)) for m in terms.meters]


def _parts(rows: Sequence[Any]) -> list[UsagePart]:
    by_window: dict[tuple[Any, Any], list[UsageAggregate]] = {}
    for r in rows:
        by_window.setdefault((r.part_start, r.part_end), []).append(
            UsageAggregate(
                meter=r.meter, dimensions=r.dimensions, quantity=r.quantity, first_seen=r.first_seen
            )
        )
    return [UsagePart(start=s, end=e, aggregates=a) for (s, e), a in by_window.items()]


async def usage_parts(
    raw: Any, terms: ContractTerms, period: Period, watermark: int
) -> list[UsagePart]:
    rows = await aggregate_usage(
        raw,
        customer_id=terms.customer.id,
        meters=_meter_specs(terms, period),
        start=period.start,
        end=period.end,
        watermark=watermark,
    )
    return _parts(rows)


async def late_usage_lines(
    conn: AsyncConnection,
    raw: Any,
    terms: ContractTerms,
    earlier: Sequence[Period],
    previous_watermark: int | None,
    watermark: int,
    falls: list[LateFall] | None = None,
) -> tuple[list[Line], list[UnpricedGroup]]:
    """Events that arrived after their period's invoice: rated at the prices in
    force at their own time, billed once (watermarks never overlap). Late
    usage without a price is returned too: it holds the invoice like any.
    For max/unique_count/latest meters the late quantity is the rise of the
    period's figure over what was billed (`activities.late_usage`); a fall is
    appended to ``falls`` (the close credits it)."""
    if not earlier or previous_watermark is None:
        return [], []
    # Additive meters: the late events' own aggregate is the delta. The
    # others (max, unique_count, latest) re-rate the period (late_usage.py).
    additive = [m for m in terms.meters if str(m.aggregation) in ("sum", "count")]
    by_period: dict[int, list[Any]] = {}
    if additive:
        for row in await late_rows(raw, terms, additive, earlier, previous_watermark, watermark):
            by_period.setdefault(row.period_index, []).append(row)
    others, found = await non_additive_late_rows(
        conn, raw, terms, earlier, previous_watermark, watermark
    )
    if falls is not None:  # a fall is credited by the close that finds it
        falls.extend(found)
    for index, extra in others.items():
        by_period.setdefault(index, []).extend(extra)
    lines: list[Line] = []
    unpriced: list[UnpricedGroup] = []
    for index, period_rows in sorted(by_period.items()):
        period = earlier[index]
        billed = await billed_groups(conn, terms, period)
        result = rate_period(terms, period, _parts(period_rows), late=True, billed=billed)
        late = [ln for ln in result.lines if isinstance(ln, LateUsageLine)]
        # The period's spend limits hold for its late usage too (SPEC 12).
        lines += late_limit_lines(terms, period, late,
                                  await billed_meters(conn, terms.contract_id, period))
        unpriced += result.unpriced
    return lines, unpriced
