"""What finalized invoices billed, for spend limits and minimum commitments (SPEC 12).

Reads only; the callers own the transaction. Spend counts the usage-kind
lines (usage, late_usage, minimum, maximum) of finalized usage invoices that
are not void, before credits (`models.minimum_commitment`).
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from models.contract import ContractTerms
from models.invoices import MaximumLine, MinimumLine
from models.minimum_commitment import CommitmentProgress, commitment_progress
from models.periods import Period, billing_periods
from models.spend_limits import BilledMeter

__all__ = ["billed_meters", "invoice_spend", "last_progress", "limit_lines_of", "progress_of",
           "term_spend"]

_USAGE_KINDS = "('usage', 'late_usage', 'minimum', 'maximum')"
_FINALIZED_USAGE = (
    "i.contract_id = :cid AND i.kind = 'usage' AND i.number IS NOT NULL AND i.status <> 'void'"
)


async def term_spend(conn: AsyncConnection, cid: str) -> Decimal:
    """The spend of every finalized, non-void usage invoice of the contract."""
    spent = await conn.scalar(
        text(
            f"""
            SELECT coalesce(sum(l.amount), 0) FROM invoice_lines l
            JOIN invoices i ON i.id = l.invoice_id
            WHERE {_FINALIZED_USAGE} AND l.kind IN {_USAGE_KINDS}
            """
        ),
        {"cid": cid},
    )
    return Decimal(spent or 0)


async def invoice_spend(conn: AsyncConnection, cid: str, key: str) -> tuple[Decimal, Decimal]:
    """``(spend, true-up)`` of one stored invoice."""
    row = (
        await conn.execute(
            text(
                f"""
                SELECT coalesce(sum(l.amount) FILTER (WHERE l.kind IN {_USAGE_KINDS}), 0)
                           AS spent,
                       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'true_up'), 0) AS trued_up
                FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
                WHERE i.contract_id = :cid AND i.key = :key
                """
            ),
            {"cid": cid, "key": key},
        )
    ).one()
    return Decimal(row.spent), Decimal(row.trued_up)


async def billed_meters(
    conn: AsyncConnection, cid: str, period: Period
) -> dict[str, BilledMeter]:
    """Per meter, what finalized invoices billed for ``period``: its own invoice's
    lines and the late lines (and their adjustments) naming it on later ones."""
    rows = await conn.execute(
        text(
            f"""
            SELECT l.meter,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('usage', 'late_usage')), 0)
                       AS gross,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind = 'minimum'), 0) AS minimum,
                   coalesce(sum(l.amount) FILTER (WHERE l.kind = 'maximum'), 0) AS maximum
            FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
            WHERE {_FINALIZED_USAGE} AND l.meter IS NOT NULL AND l.kind IN {_USAGE_KINDS}
              AND ((i.period_start = :start AND l.line_period_start IS NULL
                    AND l.kind IN ('usage', 'minimum', 'maximum'))
                   OR (l.line_period_start = :start AND l.kind <> 'usage'))
            GROUP BY l.meter
            """
        ),
        {"cid": cid, "start": period.start_date},
    )
    return {
        r.meter: BilledMeter(gross=r.gross, minimum=r.minimum, maximum=r.maximum) for r in rows
    }


async def progress_of(
    conn: AsyncConnection, terms: ContractTerms, period: Period, key: str, is_final: bool
) -> CommitmentProgress | None:
    """The commitment progress of a period's stored invoice (a retried close)."""
    spend, _ = await invoice_spend(conn, terms.contract_id, key)
    before = await term_spend(conn, terms.contract_id) - spend
    return commitment_progress(terms, period, spend, before, is_final=is_final)


async def last_progress(
    conn: AsyncConnection, terms: ContractTerms, *, ended: bool
) -> CommitmentProgress | None:
    """The progress as of the contract's last finalized usage invoice, read from
    the ledger (the contract view once its workflow has closed). None when that
    period is not on the current schedule (a cycle change moved it)."""
    row = (
        await conn.execute(
            text(
                "SELECT i.key, i.period_start FROM invoices i "
                f"WHERE {_FINALIZED_USAGE} ORDER BY i.period_start DESC, i.id DESC LIMIT 1"
            ),
            {"cid": terms.contract_id},
        )
    ).one_or_none()
    if row is None or terms.term_end <= terms.starts_on:
        return None
    periods = billing_periods(terms.starts_on, terms.term_end, terms.billing_cycle,
                              terms.billing_anchor, terms.timezone,
                              cycle_anchor=terms.cycle_anchor)
    period = next((p for p in periods if p.start_date == row.period_start), None)
    if period is None:
        return None
    final = ended and period.end_date == terms.term_end
    return await progress_of(conn, terms, period, row.key, final)


async def limit_lines_of(
    conn: AsyncConnection, cid: str, key: str
) -> list[MinimumLine | MaximumLine]:
    """The minimum and maximum lines of one stored invoice, in line order."""
    rows = await conn.execute(
        text(
            "SELECT l.kind, l.document FROM invoice_lines l JOIN invoices i "
            "ON i.id = l.invoice_id WHERE i.contract_id = :cid AND i.key = :key "
            "AND l.kind IN ('minimum', 'maximum') ORDER BY l.position"
        ),
        {"cid": cid, "key": key},
    )
    return [MinimumLine.model_validate(r.document) if r.kind == "minimum"
            else MaximumLine.model_validate(r.document) for r in rows]
