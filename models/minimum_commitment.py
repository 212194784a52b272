"""Minimum commitments and their true-up (SPEC 12).

``minimum_commitment: {amount, per: term | billing_period,
prorate_on_termination}`` is a postpaid promise to spend at least ``amount``
on usage.

Invariants:
- Spend is the usage-kind lines (usage, late_usage, minimum, maximum) of
  finalized usage invoices that are not void, before credits: usage paid with
  prepaid credits counts; true-up lines and fees do not; credit notes do not
  change it.
- ``billing_period``: each usage invoice's own spend is compared with the
  minimum in force at its period's start, prorated by days like a fee for a
  partial period (``round_half_up(amount x days / full days)``); a shortfall
  is billed on that invoice as one ``true_up`` line.
- ``term``: only the final usage invoice gets a ``true_up`` line, for the
  shortfall of the whole term's spend (earlier invoices plus its own),
  computed once, then, with the minimum in force at the final period's start.
  After an early termination the minimum is prorated by days run over days
  contracted only with ``prorate_on_termination``.
- A true-up is never negative, is a whole minor unit, comes last (after
  fees), is not paid with credits and is usage revenue when invoiced.
- Changes (``set_minimum_commitment``) take effect at a boundary; the
  schedule in `ContractTerms.minimum_commitments` keeps what was in force
  before, so a closed period keeps the minimum of its start.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from models.contract import ContractTerms
from models.invoices import TrueUpLine
from models.minimum_terms import CommitmentPer, MinimumCommitment
from models.money import DecimalStr, round_money
from models.periods import Period, term_end_date
from models.proration import prorate

__all__ = [
    "CommitmentProgress",
    "commitment_progress",
    "contracted_end",
    "months_left",
    "period_minimum",
    "progress_text",
    "term_minimum",
    "true_up_lines",
]

_ZERO = Decimal(0)


class CommitmentProgress(BaseModel):
    """Spend against the minimum commitment, as of one usage invoice.

    ``minimum`` is what the spend is measured against: the period's (prorated)
    minimum, or the term's (prorated after a termination when asked);
    ``spend``: this invoice's spend (``billing_period``) or the term's spend so
    far including this invoice (``term``); ``true_up``: what this invoice bills
    for the shortfall (0 for a term minimum before the final invoice).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    per: CommitmentPer
    minimum: DecimalStr
    spend: DecimalStr
    shortfall: DecimalStr
    true_up: DecimalStr
    period_start: date
    period_end: date
    final: bool = False


def contracted_end(terms: ContractTerms) -> date:
    """The term end as contracted (with extensions), before any termination."""
    return term_end_date(terms.starts_on, terms.term_months)


def period_minimum(mc: MinimumCommitment, period: Period, currency: str) -> Decimal:
    """A ``billing_period`` minimum for ``period``: prorated by days if partial."""
    if period.is_partial:
        return prorate(mc.amount, period.days, period.full_days, currency)
    return round_money(mc.amount, currency)


def term_minimum(mc: MinimumCommitment, terms: ContractTerms) -> Decimal:
    """A ``term`` minimum at the final invoice: after an early termination
    prorated by days run / days contracted, only if ``prorate_on_termination``."""
    contracted = contracted_end(terms)
    if mc.prorate_on_termination and terms.term_end < contracted:
        run = max((terms.term_end - terms.starts_on).days, 0)
        return prorate(mc.amount, run, (contracted - terms.starts_on).days, terms.currency)
    return round_money(mc.amount, terms.currency)


def commitment_progress(
    terms: ContractTerms,
    period: Period,
    invoice_spend: Decimal,
    spend_before: Decimal,
    *,
    is_final: bool,
) -> CommitmentProgress | None:
    """Where the period's usage invoice stands against the minimum in force
    at the period's start (None: no minimum then).

    ``invoice_spend``: the invoice's usage-kind lines; ``spend_before``: those
    of the term's earlier finalized, non-void usage invoices.
    """
    mc = terms.minimum_commitment_at(period.start)
    if mc is None:
        return None
    if mc.per is CommitmentPer.BILLING_PERIOD:
        minimum, spend = period_minimum(mc, period, terms.currency), invoice_spend
        shortfall = max(minimum - spend, _ZERO)
        billed = shortfall
    else:
        minimum = (term_minimum(mc, terms) if is_final
                   else round_money(mc.amount, terms.currency))
        spend = spend_before + invoice_spend
        shortfall = max(minimum - spend, _ZERO)
        billed = shortfall if is_final else _ZERO
    cur = terms.currency  # every figure in minor units: "0.00", not "0"
    return CommitmentProgress(
        per=mc.per, minimum=minimum, spend=round_money(spend, cur),
        shortfall=round_money(shortfall, cur), true_up=round_money(billed, cur),
        period_start=period.start_date, period_end=period.end_date, final=is_final,
    )


def true_up_lines(progress: CommitmentProgress | None) -> list[TrueUpLine]:
    """The invoice's ``true_up`` line, if it bills one."""
    if progress is None or progress.true_up <= 0:
        return []
    return [TrueUpLine(amount=progress.true_up)]


def months_left(from_date: date, term_end: date) -> int:
    """Whole calendar months from ``from_date`` to the term end (0 once it is reached)."""
    months = (term_end.year - from_date.year) * 12 + term_end.month - from_date.month
    if term_end.day < from_date.day:
        months -= 1
    return max(months, 0)


def progress_text(p: CommitmentProgress, currency: str, left: int | None = None) -> str:
    """One line for people: ``spent 180,000.00 of 250,000.00 USD, 3 months left``.

    Plain decimal formatting: this runs in workflow code too (no locale data)."""
    spent = f"spent {p.spend:,} of {p.minimum:,} {currency}"
    if p.per is CommitmentPer.BILLING_PERIOD:
        text = f"{p.period_start.isoformat()}..{p.period_end.isoformat()}: {spent}"
        return f"{text}, true-up {p.true_up:,}" if p.true_up else text
    if p.final:
        return f"{spent}, true-up {p.true_up:,}" if p.true_up else f"{spent}: met"
    if left is None:
        return spent
    return f"{spent}, {left} month{'' if left == 1 else 's'} left"
