"""Per-meter minimum and maximum spend per billing period (SPEC 12).

A plan (``meter_limits``) or a contract's rate override for one meter
(``{meter, minimum_amount?, maximum_amount?}``) may set a floor and a cap on
what one meter bills per period.

Invariants:
- The limits of a period are those in force at its start (`models.limits`),
  for the whole period. A limit override splits no period.
- A partial period prorates each limit by days like a fee:
  ``round_half_up(limit x days / days of its full period)``; rounding is
  monotonic, so ``minimum <= maximum`` survives proration.
- The meter's *gross* for a period is the sum of its rounded usage and
  late_usage lines of that period, all parts and groups together; what it
  bills net is ``clamp(gross) = min(max(gross, minimum), maximum)``.
- On the period's own invoice, a ``minimum`` line of ``minimum - gross``
  (also at zero usage) or a negative ``maximum`` line of ``maximum - gross``
  comes right after the meter's lines; at most one of the two.
- Late usage of the period (a later invoice) gets adjustment lines naming
  the period, so that after every invoice the period's net billed equals
  ``clamp(gross so far)``: each of the two kinds moves by the change of its
  share, so late usage under the minimum lowers the minimum line first
  (negative ``minimum``) and a period at its maximum bills no late usage
  (negative ``maximum`` of the same amount).
- Every amount is a difference of whole minor units: no rounding happens here
  beyond the proration of the limits themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from models.invoices import LateUsageLine, Line, MaximumLine, MinimumLine, UsageLine
from models.limits import limits_at
from models.periods import Period
from models.proration import prorate

if TYPE_CHECKING:
    from models.contract import ContractTerms

__all__ = [
    "BilledMeter",
    "PeriodLimits",
    "late_limit_lines",
    "limit_split",
    "period_limits",
    "with_limit_lines",
]

_ZERO = Decimal(0)


class PeriodLimits(BaseModel):
    """A meter's limits for one period (prorated for a partial one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    meter: str
    minimum: Decimal | None = None
    maximum: Decimal | None = None


class BilledMeter(BaseModel):
    """What finalized invoices billed for one meter of one period: its usage
    and late_usage lines (``gross``) and its minimum and maximum lines."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gross: Decimal = _ZERO
    minimum: Decimal = _ZERO
    maximum: Decimal = _ZERO


def period_limits(terms: ContractTerms, period: Period) -> dict[str, PeriodLimits]:
    """Limits of every limited meter for ``period``, prorated if it is partial."""
    out: dict[str, PeriodLimits] = {}
    for m in terms.meters:
        lo, hi = limits_at(terms.meter_limits, terms.rate_overrides, m.key, period.start)
        if lo is None and hi is None:
            continue
        if period.is_partial:
            lo = None if lo is None else prorate(lo, period.days, period.full_days, terms.currency)
            hi = None if hi is None else prorate(hi, period.days, period.full_days, terms.currency)
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"meter {m.key!r}: minimum {lo} above maximum {hi}")
        out[m.key] = PeriodLimits(meter=m.key, minimum=lo, maximum=hi)
    return out


def limit_split(gross: Decimal, limits: PeriodLimits) -> tuple[Decimal, Decimal]:
    """``(minimum part, maximum part)`` that bring ``gross`` to its clamp:
    ``gross + minimum part + maximum part == clamp(gross)``."""
    lo, hi = limits.minimum, limits.maximum
    below = lo - gross if lo is not None and gross < lo else _ZERO
    above = hi - gross if hi is not None and gross > hi else _ZERO
    return below, above


def _by_meter(terms: ContractTerms, lines: Sequence[Line]) -> list[tuple[str | None, list[Line]]]:
    """``lines`` grouped by meter, meters in plan order (the rating order);
    lines of a meter the plan does not have stay last, in their order."""
    groups: dict[str, list[Line]] = {m.key: [] for m in terms.meters}
    rest: list[Line] = []
    for ln in lines:
        meter = getattr(ln, "meter", None)
        if meter in groups:
            groups[meter].append(ln)
        else:
            rest.append(ln)
    return [*groups.items(), (None, rest)]


def with_limit_lines(
    terms: ContractTerms, period: Period, lines: Sequence[UsageLine | LateUsageLine]
) -> list[Line]:
    """The period's usage lines with each limited meter's minimum or maximum
    line after that meter's lines (SPEC 12)."""
    limits = period_limits(terms, period)
    out: list[Line] = []
    for meter, group in _by_meter(terms, lines):
        out += group
        if meter is None or meter not in limits:
            continue
        below, above = limit_split(sum((ln.amount for ln in group), _ZERO), limits[meter])
        if below:
            out.append(MinimumLine(meter=meter, amount=below))
        if above:
            out.append(MaximumLine(meter=meter, amount=above))
    return out


def late_limit_lines(
    terms: ContractTerms,
    period: Period,
    late_lines: Sequence[LateUsageLine],
    billed: Mapping[str, BilledMeter],
) -> list[Line]:
    """Late usage lines of ``period`` with, after each limited meter's, the
    adjustments that keep the period's net at ``clamp(gross)``.

    ``billed``: per meter, what finalized invoices billed for the period.
    """
    limits = period_limits(terms, period)
    out: list[Line] = []
    for meter, group in _by_meter(terms, late_lines):
        out += group
        if meter is None or meter not in limits or not group:
            continue
        before = billed.get(meter, BilledMeter())
        gross = before.gross + sum((ln.amount for ln in group), _ZERO)
        below, above = limit_split(gross, limits[meter])
        dates = {"period_start": period.start_date, "period_end": period.end_date}
        if below != before.minimum:
            out.append(MinimumLine(meter=meter, amount=below - before.minimum, **dates))
        if above != before.maximum:
            out.append(MaximumLine(meter=meter, amount=above - before.maximum, **dates))
    return out
