"""Rating: aggregated usage -> priced invoice lines; recurring fee lines.

Invariants:
- Events count in ``[start, end)``; an event exactly at a boundary belongs to
  the period that starts there. Events are deduplicated by ``id`` (first wins).
- Line order: meters in plan order; within a meter, parts chronologically;
  within a part, groups by first event time, then dimension values.
- Each line amount is exact until it is rounded half up to the currency's
  minor unit, once per line; invoice totals are sums of rounded lines.
- Tier/package counters reset each period and span all groups of the meter
  (all of its priced quantity, in line order, across parts), or each group on
  its own with ``tiers_per_group``. Apportioning a cross-group tier cost:
  lines fill the shared counter in line order, so graduated/package lines pay
  for the counter positions they occupy; volume lines all pay the tier of the
  meter's period total and the tier's flat fee goes to the first non-empty
  line. Line amounts therefore always add up to the price of the total.
- Late usage continues the period's counters from what finalized invoices
  billed (`BilledUsage`): graduated and package lines price the counter
  positions after it; volume late lines bill the price of the new total
  minus what was billed (billed units move to the new tier, a changed flat
  fee is billed), never less than zero.
- A group with no price is returned as `UnpricedGroup`, never priced at zero.
- A meter's period is split where an override that can affect it starts or
  ends inside the period; each part is rated with the prices in force at
  its start (constant within the part by construction).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from models.catalog import (
    Aggregation,
    Meter,
    PackagePrice,
    TieredPrice,
    TierMode,
    TierStep,
    UnitPrice,
)
from models.contract import ContractTerms
from models.errors import BusinessError
from models.invoices import FeeLine, LateUsageLine, UsageLine
from models.money import DecimalStr, round_money
from models.periods import Period
from models.pricing import (
    graduated_amount,
    package_amount,
    resolve_price,
    unit_amount,
    volume_late_amounts,
    volume_line_amount,
)
from models.pricing.precision import exact, wide
from models.pricing.resolve import ResolvedPrice, relevant_overrides
from models.proration import prorate
from models.usage import UsageEvent, dedupe_events

__all__ = [
    "BilledUsage",
    "RatingResult",
    "UnpricedGroup",
    "UsageAggregate",
    "UsagePart",
    "aggregate",
    "billed_counter",
    "fee_lines",
    "rate_events",
    "rate_period",
    "split_points",
    "usage_windows",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class UsageAggregate(BaseModel):
    """One group's aggregated quantity for one meter over one window."""

    model_config = _FROZEN
    meter: str
    dimensions: dict[str, str]
    quantity: DecimalStr
    first_seen: AwareDatetime


class UsagePart(BaseModel):
    """Aggregates over ``[start, end)``; several meters may share a part."""

    model_config = _FROZEN
    start: AwareDatetime
    end: AwareDatetime
    aggregates: list[UsageAggregate] = Field(default_factory=list)


class BilledUsage(BaseModel):
    """What finalized invoices billed for one group of a period's part (its
    usage line and late_usage lines): where late usage continues from."""

    model_config = _FROZEN
    meter: str
    dimensions: dict[str, str]
    part_start: AwareDatetime  # the period start for an unsplit period
    quantity: DecimalStr
    amount: DecimalStr


class UnpricedGroup(BaseModel):
    model_config = _FROZEN
    meter: str
    dimensions: dict[str, str]
    quantity: DecimalStr
    part_start: AwareDatetime
    part_end: AwareDatetime


class RatingResult(BaseModel):
    model_config = _FROZEN
    lines: list[UsageLine | LateUsageLine]
    unpriced: list[UnpricedGroup] = Field(default_factory=list)

    @property
    def usage_total(self) -> Decimal:
        with wide():
            return sum((ln.amount for ln in self.lines), Decimal(0))

    def raise_if_unpriced(self) -> None:
        if self.unpriced:
            groups = ", ".join(f"{u.meter} {u.dimensions}" for u in self.unpriced)
            raise BusinessError("unpriced_usage", f"no price for {groups}")


# --- reference aggregation (production does this in SQL) -------------------------------


def aggregate(
    meter: Meter,
    events: Iterable[UsageEvent],
    start: datetime,
    end: datetime,
    *,
    customer: str | None = None,
) -> list[UsageAggregate]:
    """Aggregate ``meter``'s events in ``[start, end)`` by its ``group_by``.

    ``sum``: sum of quantities; ``count``: number of events; ``max``: largest
    quantity; ``unique_count``: distinct values of dimension ``unique_by``
    (events without it do not count); ``latest``: quantity of the latest
    event (ties: the later in input order). A missing group_by dimension is
    left out of the group's dimensions (only a rate-card entry that does not
    name it can price the group).
    """
    groups: dict[tuple[tuple[str, str], ...], list[UsageEvent]] = {}
    for e in dedupe_events(events):
        if e.meter != meter.key or not start <= e.timestamp < end:
            continue
        if customer is not None and e.customer != customer:
            continue
        key = tuple((k, e.dimensions[k]) for k in meter.group_by if k in e.dimensions)
        groups.setdefault(key, []).append(e)
    out: list[UsageAggregate] = []
    for key, evs in groups.items():
        out.append(
            UsageAggregate(
                meter=meter.key,
                dimensions=dict(key),
                quantity=_aggregate_quantity(meter, evs),
                first_seen=min(e.timestamp for e in evs),
            )
        )
    return sorted(out, key=_group_order)


def _aggregate_quantity(meter: Meter, evs: list[UsageEvent]) -> Decimal:
    agg = meter.aggregation
    if agg is Aggregation.SUM:
        return sum((e.quantity for e in evs), Decimal(0))
    if agg is Aggregation.COUNT:
        return Decimal(len(evs))
    if agg is Aggregation.MAX:
        return max(e.quantity for e in evs)
    if agg is Aggregation.UNIQUE_COUNT:
        dim = meter.unique_by or ""
        return Decimal(len({e.dimensions[dim] for e in evs if dim in e.dimensions}))
    latest = evs[0]
    for e in evs[1:]:
        if e.timestamp >= latest.timestamp:
            latest = e
    return latest.quantity


def _group_order(a: UsageAggregate) -> tuple[datetime, list[tuple[str, str]]]:
    return (a.first_seen, sorted(a.dimensions.items()))


# --- splitting ---------------------------------------------------------------------------


def split_points(
    terms: ContractTerms, period: Period, meter_key: str | None = None
) -> list[datetime]:
    """Instants strictly inside the period where prices of ``meter_key`` (or of
    any meter, if ``None``) may change: override ``effective``/``until``. A
    spend-limit override changes no price and splits nothing (SPEC 12)."""
    overrides = (
        [(i, o) for i, o in enumerate(terms.rate_overrides) if not o.is_limit]
        if meter_key is None
        else relevant_overrides(terms.rate_overrides, meter_key)
    )
    points: set[datetime] = set()
    for _, o in overrides:
        for t in (o.effective, o.until):
            if t is not None and period.start < t < period.end:
                points.add(t)
    return sorted(points)


def usage_windows(
    terms: ContractTerms, period: Period
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Per meter, the windows to aggregate (one unless the period is split)."""
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for m in terms.meters:
        pts = [period.start, *split_points(terms, period, m.key), period.end]
        out[m.key] = list(itertools.pairwise(pts))
    return out


# --- rating ------------------------------------------------------------------------------


class _Item:
    __slots__ = ("agg", "end", "price", "start")

    def __init__(
        self, start: datetime, end: datetime, agg: UsageAggregate, price: ResolvedPrice | None
    ) -> None:
        self.start, self.end, self.agg, self.price = start, end, agg, price


def _counter_key(meter: Meter, agg: UsageAggregate) -> str:
    if meter.tiers_per_group:
        return repr(sorted(agg.dimensions.items()))
    return ""


def billed_counter(meter: Meter, dimensions: Mapping[str, str]) -> str:
    """The key of `rate_period`'s ``already`` under which a billed line of
    ``meter`` with ``dimensions`` counts: the meter (one shared tier counter)
    or, with ``tiers_per_group``, the meter and the group."""
    if meter.tiers_per_group:
        return f"{meter.key} {sorted(dimensions.items())!r}"
    return meter.key


@exact
def rate_period(
    terms: ContractTerms,
    period: Period,
    parts: Sequence[UsagePart],
    *,
    late: bool = False,
    already: Mapping[str, Decimal] | None = None,
    billed: Sequence[BilledUsage] = (),
) -> RatingResult:
    """Price the period's aggregates into usage lines.

    ``parts`` must not straddle a price change of a meter they hold
    aggregates for (use `usage_windows`). With ``late=True`` the lines are
    ``late_usage`` lines naming ``period``, and tier counters continue where
    the finalized invoices left them: ``billed`` says what they billed for
    the period per part and group. ``already`` (quantity per tier counter,
    keys from `billed_counter`) is derived from it when not given; given
    alone (no ``billed``), volume counters assume the billed units carried
    the late line's price and were billed at the tier of their total.
    """
    lines: list[UsageLine | LateUsageLine] = []
    unpriced: list[UnpricedGroup] = []
    base = dict(already) if already is not None else _billed_counters(terms, billed)
    for meter in terms.meters:
        items: list[_Item] = []
        for part in sorted(parts, key=lambda p: p.start):
            aggs = sorted((a for a in part.aggregates if a.meter == meter.key), key=_group_order)
            if not aggs:
                continue
            points = split_points(terms, period, meter.key)
            inside = [t for t in points if part.start < t < part.end]
            if inside:
                raise ValueError(
                    f"part [{part.start}, {part.end}) of meter {meter.key!r} spans a price "
                    f"change at {inside[0]}; aggregate per usage_windows()"
                )
            for a in aggs:
                price = resolve_price(meter, terms.rate_overrides, a.dimensions, part.start)
                items.append(_Item(part.start, part.end, a, price))

        # quantity billed before (late usage): each tier counter continues
        starts = {
            _counter_key(meter, it.agg): base.get(
                billed_counter(meter, it.agg.dimensions), Decimal(0)
            )
            for it in items
        }
        counters: dict[str, Decimal] = {}
        totals: dict[str, Decimal] = {}
        for it in items:
            if it.price is not None:
                k = _counter_key(meter, it.agg)
                totals[k] = totals.get(k, starts[k]) + it.agg.quantity
        flat_charged: set[tuple[str, str]] = set()
        split = any((it.start, it.end) != (period.start, period.end) for it in items)
        # late volume lines per counter: (index into lines, steps, quantity)
        late_volume: dict[str, list[tuple[int, Sequence[TierStep], Decimal]]] = {}

        for it in items:
            q = it.agg.quantity
            if it.price is None:
                unpriced.append(
                    UnpricedGroup(
                        meter=meter.key,
                        dimensions=it.agg.dimensions,
                        quantity=q,
                        part_start=it.start,
                        part_end=it.end,
                    )
                )
                continue
            k = _counter_key(meter, it.agg)
            done = counters.get(k, starts[k])
            p = it.price.price
            if isinstance(p, UnitPrice):
                exact = unit_amount(q, p.unit_price)
            elif isinstance(p, PackagePrice):
                exact = package_amount(p.size, p.price, q, done)
            elif isinstance(p, TieredPrice) and p.mode is TierMode.GRADUATED:
                exact = graduated_amount(p.steps, q, done)
            elif late:
                late_volume.setdefault(k, []).append((len(lines), p.steps, q))
                exact = Decimal(0)  # set below, once the counter's late lines are known
            else:
                flat_key = (k, p.model_dump_json())
                # flat fee once per period: the first non-empty line
                charge = q > 0 and flat_key not in flat_charged
                if charge:
                    flat_charged.add(flat_key)
                exact = volume_line_amount(p.steps, q, totals[k], charge)
            counters[k] = done + q
            amount = round_money(exact, terms.currency)
            part_start = it.start if split else None
            part_end = it.end if split else None
            if late:
                lines.append(
                    LateUsageLine(
                        meter=meter.key,
                        dimensions=it.agg.dimensions,
                        quantity=q,
                        unit_price=it.price.unit_price_shown,
                        amount=amount,
                        period_start=period.start_date,
                        period_end=period.end_date,
                        part_start=part_start,
                        part_end=part_end,
                    )
                )
            else:
                lines.append(
                    UsageLine(
                        meter=meter.key,
                        dimensions=it.agg.dimensions,
                        quantity=q,
                        unit_price=it.price.unit_price_shown,
                        amount=amount,
                        part_start=part_start,
                        part_end=part_end,
                    )
                )
        for k, late_lines in late_volume.items():
            done_lines, done_amount = _billed_volume(
                terms, meter, billed, k, starts[k], late_lines[0][1]
            )
            exacts = volume_late_amounts(
                done_lines, done_amount, [(st, q) for _, st, q in late_lines], totals[k]
            )
            for (index, _, _), exact in zip(late_lines, exacts, strict=True):
                lines[index] = lines[index].model_copy(
                    update={"amount": round_money(exact, terms.currency)}
                )
    return RatingResult(lines=lines, unpriced=unpriced)


def _billed_counters(terms: ContractTerms, billed: Sequence[BilledUsage]) -> dict[str, Decimal]:
    """Quantity billed per tier counter (`billed_counter` keys)."""
    meters = {m.key: m for m in terms.meters}
    out: dict[str, Decimal] = {}
    for b in billed:
        meter = meters.get(b.meter)
        if meter is not None:  # a meter the plan no longer has: nothing to continue
            key = billed_counter(meter, b.dimensions)
            out[key] = out.get(key, Decimal(0)) + b.quantity
    return out


def _billed_volume(
    terms: ContractTerms,
    meter: Meter,
    billed: Sequence[BilledUsage],
    counter: str,
    quantity: Decimal,
    fallback: Sequence[TierStep],
) -> tuple[list[tuple[Sequence[TierStep], Decimal]], Decimal]:
    """The volume-priced lines billed on ``counter`` (each with its price's
    steps, resolved at its part's start) and their billed amount. Without
    ``billed``, the ``quantity`` billed is taken as one line at ``fallback``
    billed at the tier of its total."""
    if not billed:
        if quantity <= 0:
            return [], Decimal(0)
        return [(fallback, quantity)], volume_line_amount(fallback, quantity, quantity, True)
    lines: list[tuple[Sequence[TierStep], Decimal]] = []
    amount = Decimal(0)
    for b in billed:
        if b.meter != meter.key:
            continue
        agg = UsageAggregate(meter=b.meter, dimensions=b.dimensions, quantity=b.quantity,
                             first_seen=b.part_start)
        if _counter_key(meter, agg) != counter:
            continue
        price = resolve_price(meter, terms.rate_overrides, b.dimensions, b.part_start)
        p = price.price if price is not None else None
        if isinstance(p, TieredPrice) and p.mode is TierMode.VOLUME:
            lines.append((p.steps, b.quantity))
            amount += b.amount
    return lines, amount


def rate_events(terms: ContractTerms, period: Period, events: Iterable[UsageEvent]) -> RatingResult:
    """Reference path: aggregate in memory (`usage_windows` + `aggregate`), then rate."""
    evs = dedupe_events(events)
    parts: list[UsagePart] = []
    for meter in terms.meters:
        for s, e in usage_windows(terms, period)[meter.key]:
            aggs = aggregate(meter, evs, s, e, customer=terms.customer.id)
            if aggs:
                parts.append(UsagePart(start=s, end=e, aggregates=aggs))
    return rate_period(terms, period, parts)


@exact
def fee_lines(terms: ContractTerms, period: Period) -> list[FeeLine]:
    """Recurring fees in arrears: ``monthly_amount x months`` of the full cycle
    period, prorated by days for a partial period (SPEC 2)."""
    out: list[FeeLine] = []
    for fee in terms.recurring_fees:
        full = fee.monthly_amount * period.full_months
        amount = (
            prorate(full, period.days, period.full_days, terms.currency)
            if period.is_partial
            else round_money(full, terms.currency)
        )
        out.append(FeeLine(fee=fee.key, amount=amount))
    return out
