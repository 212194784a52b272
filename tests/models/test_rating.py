"""Aggregation, rating and fees (SPEC 2 and 3)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from billing_fixtures import D, catalog_with, event, terms_for, utc
from hypothesis import given, settings
from hypothesis import strategies as st

from models.catalog import Meter
from models.contract import RateOverride, add_rate_override
from models.errors import BusinessError
from models.invoices import LateUsageLine
from models.periods import Period, billing_periods
from models.pricing.precision import wide
from models.rating import (
    UsageAggregate,
    UsagePart,
    aggregate,
    billed_counter,
    fee_lines,
    rate_events,
    rate_period,
    split_points,
    usage_windows,
)


def _meter(**kw: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "key": "m",
        "name": "M",
        "aggregation": "sum",
        "group_by": ["g"],
        "rate_card": [{"match": {}, "unit_price": "1"}],
    }
    m.update(kw)
    return m


START, END = utc(2027, 1, 1), utc(2027, 2, 1)


# --- aggregation ----------------------------------------------------------------------

EVENTS = [
    event("m", utc(2027, 1, 1), "5", g="a", user="u1", id="1"),  # exactly at start: in
    event("m", utc(2027, 1, 10), "2", g="a", user="u2", id="2"),
    event("m", utc(2027, 1, 10), "2", g="a", user="u2", id="2"),  # duplicate id: once
    event("m", utc(2027, 1, 5), "7", g="b", user="u1", id="3"),
    event("m", utc(2027, 1, 20), "1", g="a", user="u1", id="4"),
    event("m", utc(2027, 2, 1), "100", g="a", user="u9", id="5"),  # exactly at end: out
    event("m", utc(2026, 12, 31, 23, 59, 59), "100", g="a", id="6"),  # before: out
    event("x", utc(2027, 1, 2), "100", g="a", id="7"),  # another meter
    event("m", utc(2027, 1, 2), "100", g="a", customer="other", id="8"),
]


@pytest.mark.parametrize(
    ("aggregation", "extra", "a", "b"),
    [
        ("sum", {}, "8", "7"),
        ("count", {}, "3", "1"),
        ("max", {}, "5", "7"),
        ("unique_count", {"unique_by": "user"}, "2", "1"),
        ("latest", {}, "1", "7"),
    ],
)
def test_aggregations(aggregation: str, extra: dict[str, str], a: str, b: str) -> None:
    meter = Meter.model_validate(_meter(aggregation=aggregation, **extra))
    aggs = aggregate(meter, EVENTS, START, END, customer="cust")
    assert [(x.dimensions, x.quantity) for x in aggs] == [({"g": "a"}, D(a)), ({"g": "b"}, D(b))]
    assert aggs[0].first_seen == utc(2027, 1, 1)


def test_aggregate_missing_dimension_and_no_group_by() -> None:
    meter = Meter.model_validate(_meter(group_by=[]))
    assert [x.quantity for x in aggregate(meter, EVENTS, START, END, customer="cust")] == [D(15)]
    grouped = Meter.model_validate(_meter())
    aggs = aggregate(grouped, [event("m", utc(2027, 1, 3), "4")], START, END)
    assert aggs[0].dimensions == {}


def test_latest_ties_take_last_in_input_order() -> None:
    meter = Meter.model_validate(_meter(aggregation="latest"))
    t = utc(2027, 1, 3)
    aggs = aggregate(meter, [event("m", t, "4", g="a"), event("m", t, "9", g="a")], START, END)
    assert aggs[0].quantity == 9


# --- rating ---------------------------------------------------------------------------


def _period(start: datetime = START, end: datetime = END) -> Period:
    return Period(
        start=start,
        end=end,
        start_date=start.date(),
        end_date=end.date(),
        full_start_date=start.date(),
        full_end_date=end.date(),
    )


def test_line_order_meters_in_plan_order_groups_by_first_seen() -> None:
    cat = catalog_with([_meter(key="z"), _meter(key="a")])
    terms = terms_for(cat)
    evs = [
        event("a", utc(2027, 1, 2), g="x"),
        event("z", utc(2027, 1, 9), g="late"),
        event("z", utc(2027, 1, 3), g="early"),
        event("z", utc(2027, 1, 3), g="b-same"),
        event("z", utc(2027, 1, 3), g="a-same"),
    ]
    lines = rate_events(terms, _period(), evs).lines
    assert [(ln.meter, ln.dimensions["g"]) for ln in lines] == [
        ("z", "a-same"),
        ("z", "b-same"),
        ("z", "early"),
        ("z", "late"),
        ("a", "x"),
    ]


def test_rounding_per_line_half_up_jpy() -> None:
    cat = catalog_with([_meter(rate_card=[{"unit_price": "0.5"}])], currency="JPY")
    terms = terms_for(cat)
    evs = [event("m", utc(2027, 1, 2), "3", g="a"), event("m", utc(2027, 1, 2), "5", g="b")]
    lines = rate_events(terms, _period(), evs).lines
    assert [ln.amount for ln in lines] == [D(2), D(3)]  # 1.5 -> 2, 2.5 -> 3


def test_rounding_half_up_usd() -> None:
    cat = catalog_with([_meter(rate_card=[{"unit_price": "0.001"}])])
    terms = terms_for(cat)
    lines = rate_events(terms, _period(), [event("m", utc(2027, 1, 2), "5", g="a")]).lines
    assert lines[0].amount == D("0.01") and str(lines[0].amount) == "0.01"


def test_zero_usage_no_lines_and_zero_quantity_line() -> None:
    terms = terms_for(catalog_with([_meter()]))
    assert rate_events(terms, _period(), []).lines == []
    lines = rate_events(terms, _period(), [event("m", utc(2027, 1, 2), "0", g="a")]).lines
    assert [(ln.quantity, ln.amount) for ln in lines] == [(D(0), D("0.00"))]


def test_unpriced_group_is_reported_not_zero() -> None:
    terms = terms_for(catalog_with([_meter(rate_card=[{"match": {"g": "a"}, "unit_price": "1"}])]))
    res = rate_events(
        terms,
        _period(),
        [event("m", utc(2027, 1, 2), "3", g="a"), event("m", utc(2027, 1, 3), "4", g="zz")],
    )
    assert [ln.dimensions for ln in res.lines] == [{"g": "a"}]
    assert [(u.dimensions, u.quantity) for u in res.unpriced] == [({"g": "zz"}, D(4))]
    with pytest.raises(BusinessError, match="unpriced_usage"):
        res.raise_if_unpriced()


GRAD = {
    "tiers": {
        "mode": "graduated",
        "steps": [{"up_to": "100", "unit_price": "1", "flat_fee": "10"}, {"unit_price": "0.5"}],
    }
}
VOL = {
    "tiers": {
        "mode": "volume",
        "steps": [
            {"up_to": "100", "unit_price": "1", "flat_fee": "10"},
            {"unit_price": "0.5", "flat_fee": "20"},
        ],
    }
}
PKG = {"package": {"size": "100", "price": "8"}}
THREE = [
    event("m", utc(2027, 1, 2), "60", g="a"),
    event("m", utc(2027, 1, 3), "60", g="b"),
    event("m", utc(2027, 1, 4), "30", g="c"),
]


@pytest.mark.parametrize(
    ("price", "per_group", "amounts"),
    [
        # shared counter filled in line order: a=1..60, b=61..120, c=121..150
        (GRAD, False, ["70.00", "50.00", "15.00"]),
        (GRAD, True, ["70.00", "70.00", "40.00"]),
        # tier by the meter total (150 -> 0.5), flat fee on the first line
        (VOL, False, ["50.00", "30.00", "15.00"]),
        (VOL, True, ["70.00", "70.00", "40.00"]),
        # blocks: a starts 1, b starts 1 (101..), c none
        (PKG, False, ["8.00", "8.00", "0.00"]),
        (PKG, True, ["8.00", "8.00", "8.00"]),
    ],
)
def test_cross_group_tiers(price: dict[str, Any], per_group: bool, amounts: list[str]) -> None:
    terms = terms_for(catalog_with([_meter(rate_card=[price], tiers_per_group=per_group)]))
    lines = rate_events(terms, _period(), THREE).lines
    assert [ln.amount for ln in lines] == [D(a) for a in amounts]
    assert all(ln.unit_price is None for ln in lines)


def test_tier_counter_resets_each_period() -> None:
    terms = terms_for(catalog_with([_meter(rate_card=[GRAD])]))
    ps = billing_periods(
        terms.starts_on, terms.term_end, terms.billing_cycle, terms.billing_anchor, terms.timezone
    )
    evs = [event("m", utc(2027, 1, 2), "150", g="a"), event("m", utc(2027, 2, 2), "150", g="a")]
    assert [rate_events(terms, p, evs).lines[0].amount for p in ps[:2]] == [D(135), D(135)]


def test_acme_style_discount_line() -> None:
    terms = terms_for(
        catalog_with([_meter(rate_card=[{"unit_price": "0.03"}])]),
        rate_overrides=[{"discount_percent": "50"}],
    )
    ln = rate_events(terms, _period(), [event("m", utc(2027, 1, 2), "1000000", g="a")]).lines[0]
    assert (ln.unit_price, ln.amount) == (D("0.015"), D("15000.00"))


# --- split periods --------------------------------------------------------------------

MID = utc(2027, 1, 15, 12)


def _split_terms() -> Any:
    cat = catalog_with(
        [
            _meter(key="m", rate_card=[{"unit_price": "1"}]),
            _meter(key="n", rate_card=[{"unit_price": "2"}]),
        ]
    )
    terms = terms_for(cat)
    o = RateOverride(meter="m", match={"g": "a"}, unit_price=D("0.5"))
    return add_rate_override(terms, o, MID)


def test_split_points_and_windows() -> None:
    terms = _split_terms()
    p = _period()
    assert split_points(terms, p) == [MID]
    assert split_points(terms, p, "n") == []
    w = usage_windows(terms, p)
    assert w["m"] == [(START, MID), (MID, END)] and w["n"] == [(START, END)]


def test_period_split_at_override_instant() -> None:
    terms = _split_terms()
    evs = [
        event("m", utc(2027, 1, 2), "10", g="a"),
        event("m", MID, "10", g="a"),
        event("m", utc(2027, 1, 20), "10", g="b"),
        event("n", utc(2027, 1, 20), "1", g="a"),
    ]
    lines = rate_events(terms, _period(), evs).lines
    got = [
        (ln.meter, ln.dimensions["g"], ln.quantity, ln.unit_price, ln.amount, ln.part_start)
        for ln in lines
    ]
    assert got == [
        ("m", "a", D(10), D(1), D("10.00"), START),
        ("m", "a", D(10), D("0.5"), D("5.00"), MID),  # event exactly at the split: new price
        ("m", "b", D(10), D(1), D("10.00"), MID),
        ("n", "a", D(1), D(2), D("2.00"), None),  # meter n is not split
    ]


def test_replacing_override_closes_previous() -> None:
    terms = _split_terms()
    later = utc(2027, 1, 25)
    terms = add_rate_override(
        terms, RateOverride(meter="m", match={"g": "a"}, unit_price=D("0.25")), later
    )
    assert [(o.effective, o.until) for o in terms.rate_overrides] == [(MID, later), (later, None)]
    evs = [event("m", utc(2027, 1, 20), "4", g="a"), event("m", utc(2027, 1, 26), "4", g="a")]
    assert [ln.amount for ln in rate_events(terms, _period(), evs).lines] == [D(2), D(1)]


def test_parts_straddling_a_price_change_are_rejected() -> None:
    terms = _split_terms()
    agg = UsageAggregate(meter="m", dimensions={"g": "a"}, quantity=D(1), first_seen=START)
    with pytest.raises(ValueError, match="spans a price change"):
        rate_period(terms, _period(), [UsagePart(start=START, end=END, aggregates=[agg])])


def test_late_usage_lines_name_their_period() -> None:
    terms = terms_for(catalog_with([_meter(rate_card=[GRAD])]))
    agg = UsageAggregate(meter="m", dimensions={"g": "a"}, quantity=D(10), first_seen=START)
    res = rate_period(
        terms,
        _period(),
        [UsagePart(start=START, end=END, aggregates=[agg])],
        late=True,
        already={"m": D(95)},
    )
    ln = res.lines[0]
    assert isinstance(ln, LateUsageLine)
    assert (ln.period_start, ln.period_end) == (date(2027, 1, 1), date(2027, 2, 1))
    # the counter continues at 95: 5 x 1 + 5 x 0.5; tier 1's flat fee was billed already
    assert ln.amount == D("7.50")


def test_late_usage_continues_each_groups_counter_with_tiers_per_group() -> None:
    terms = terms_for(catalog_with([_meter(rate_card=[GRAD], tiers_per_group=True)]))
    meter = terms.meters[0]
    late = [
        UsageAggregate(meter="m", dimensions={"g": g}, quantity=D(10), first_seen=START)
        for g in ("a", "b")
    ]
    res = rate_period(
        terms,
        _period(),
        [UsagePart(start=START, end=END, aggregates=late)],
        late=True,
        # the finalized invoice billed 95 for group a, nothing for group b
        already={billed_counter(meter, {"g": "a"}): D(95)},
    )
    amounts = {ln.dimensions["g"]: ln.amount for ln in res.lines}
    # a: the counter continues at 95 (5 x 1 + 5 x 0.5); b: a fresh counter,
    # with tier 1's flat fee (10 + 10 x 1)
    assert amounts == {"a": D("7.50"), "b": D(20)}


@settings(max_examples=100, deadline=None)
@given(
    quantities=st.lists(
        st.tuples(
            st.integers(0, 30 * 24 * 60 - 1),
            st.decimals(min_value=0, max_value=10**6, places=3),
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=12,
    ),
    cut=st.integers(1, 30 * 24 - 1),
    price=st.decimals(min_value=0, max_value=10, places=4),
)
def test_split_equals_whole_for_unit_prices(
    quantities: list[tuple[int, Decimal, str]], cut: int, price: Decimal
) -> None:
    terms = terms_for(catalog_with([_meter(rate_card=[{"unit_price": str(price)}])]))
    at = START + timedelta(hours=cut)
    # an override that changes nothing but splits the period
    split = add_rate_override(terms, RateOverride(meter="m", unit_price=price), at)
    evs = [event("m", START + timedelta(minutes=m), q, g=g) for m, q, g in quantities]
    whole = rate_events(terms, _period(), evs)
    parts = rate_events(split, _period(), evs)
    exact = sum((q * price for _, q, _ in quantities), Decimal(0))
    # per line rounding: totals agree to within half a cent per line
    assert abs(whole.usage_total - parts.usage_total) <= D("0.005") * (len(parts.lines) + 3)
    assert abs(whole.usage_total - exact) <= D("0.005") * len(whole.lines)
    q_whole = sum((ln.quantity for ln in whole.lines), Decimal(0))
    q_parts = sum((ln.quantity for ln in parts.lines), Decimal(0))
    assert q_whole == q_parts


@settings(max_examples=100, deadline=None)
@given(
    quantities=st.lists(
        st.tuples(st.integers(0, 30 * 24 - 1), st.integers(0, 10**6), st.sampled_from(["a", "b"])),
        max_size=10,
    ),
    cut=st.integers(1, 30 * 24 - 1),
    cents=st.integers(0, 1000),
)
def test_split_equals_whole_exactly_when_lines_are_whole_cents(
    quantities: list[tuple[int, int, str]], cut: int, cents: int
) -> None:
    price = Decimal(cents) / 100
    terms = terms_for(catalog_with([_meter(rate_card=[{"unit_price": str(price)}])]))
    split = add_rate_override(
        terms, RateOverride(meter="m", unit_price=price), START + timedelta(hours=cut)
    )
    evs = [event("m", START + timedelta(hours=h), q, g=g) for h, q, g in quantities]
    assert (
        rate_events(terms, _period(), evs).usage_total
        == rate_events(split, _period(), evs).usage_total
    )


# --- fees -----------------------------------------------------------------------------

FEE = [{"key": "platform", "name": "Platform", "monthly_amount": "500.00"}]


def test_full_period_fee_is_monthly_times_months() -> None:
    terms = terms_for(catalog_with([_meter()], fees=FEE), billing_cycle="quarterly")
    ps = billing_periods(
        terms.starts_on, terms.term_end, terms.billing_cycle, terms.billing_anchor, terms.timezone
    )
    assert [f.amount for p in ps for f in fee_lines(terms, p)] == [D("1500.00")] * 4


def test_calendar_anchor_prorates_partial_fees() -> None:
    terms = terms_for(
        catalog_with([_meter()], fees=FEE),
        starts_on="2027-01-15",
        term_months=2,
        billing_anchor="calendar",
    )
    ps = billing_periods(
        terms.starts_on, terms.term_end, terms.billing_cycle, terms.billing_anchor, terms.timezone
    )
    got = [(p.start_date.isoformat(), fee_lines(terms, p)[0].amount) for p in ps]
    assert got == [
        ("2027-01-15", D("274.19")),  # 500 x 17/31 = 274.193...
        ("2027-02-01", D("500.00")),
        ("2027-03-01", D("225.81")),  # 500 x 14/31 = 225.806...
    ]


def test_quarterly_calendar_partial_fee_uses_full_quarter() -> None:
    terms = terms_for(
        catalog_with([_meter()], fees=FEE),
        starts_on="2027-02-01",
        term_months=12,
        billing_anchor="calendar",
        billing_cycle="quarterly",
    )
    first = billing_periods(
        terms.starts_on, terms.term_end, terms.billing_cycle, terms.billing_anchor, terms.timezone
    )[0]
    # full quarter Jan 1 - Apr 1 = 90 days, 1500; the part Feb 1 - Apr 1 = 59 days
    assert fee_lines(terms, first)[0].amount == D("983.33")


def test_fee_in_jpy_rounds_to_yen() -> None:
    terms = terms_for(
        catalog_with(
            [_meter()], currency="JPY", fees=[{"key": "f", "name": "F", "monthly_amount": "1000"}]
        ),
        starts_on="2027-01-15",
        term_months=1,
        billing_anchor="calendar",
    )
    first = billing_periods(
        terms.starts_on, terms.term_end, terms.billing_cycle, terms.billing_anchor, terms.timezone
    )[0]
    assert str(fee_lines(terms, first)[0].amount) == "548"  # 1000 x 17/31 = 548.38


# --- late usage on volume tiers: the price of the new total minus what was billed ------

VOL_UP = {"match": {"g": "a"}, "tiers": {"mode": "volume", "steps": [
    {"up_to": "100", "unit_price": "1"}, {"unit_price": "0.9", "flat_fee": "30"}]}}
VOL_UP_B = {"match": {"g": "b"}, "tiers": {"mode": "volume", "steps": [
    {"up_to": "100", "unit_price": "2"}, {"unit_price": "1.5", "flat_fee": "40"}]}}
VOL_DOWN = {"match": {}, "tiers": {"mode": "volume", "steps": [
    {"up_to": "100", "unit_price": "1", "flat_fee": "10"},
    {"unit_price": "0.5", "flat_fee": "20"}]}}


def _billed(g: str, quantity: str, amount: str) -> Any:
    from models.rating import BilledUsage

    return BilledUsage(meter="m", dimensions={"g": g}, part_start=START, quantity=D(quantity),
                       amount=D(amount))


@pytest.mark.parametrize(
    ("cards", "billed", "late", "amounts"),
    [
        # 90 billed at tier 1 (90.00); 20 late: all 110 at 0.9 + 30 = 129.00, so 39.00
        ([VOL_UP], [("a", "90", "90.00")], [("a", "20")], ["39.00"]),
        # exactly at the boundary, then one unit more: 101 x 0.9 + 30 - 100
        ([VOL_UP], [("a", "100", "100.00")], [("a", "1")], ["20.90"]),
        # nothing billed yet: the tier of the late units alone, no flat fee in tier 1
        ([VOL_UP], [], [("a", "50")], ["50.00"]),
        # within the same tier: just the late units
        ([VOL_UP], [("a", "150", "165.00")], [("a", "10")], ["9.00"]),
        # two late lines: each its units at the new tier, the first the re-pricing
        # and the flat fee (one price: charged once)
        ([VOL_UP], [("a", "90", "90.00")], [("a", "10"), ("b", "10")], ["30.00", "9.00"]),
        # groups with their own tier tables share the counter: a 80 x 0.9 + b 30 x 1.5
        # + both flat fees (30 + 40) = 187, 120 billed
        ([VOL_UP, VOL_UP_B], [("a", "60", "60.00"), ("b", "30", "60.00")], [("a", "20")],
         ["67.00"]),
        # a volume discount reached late: 120 x 0.5 + 20 = 80 < 90 billed: nothing billed
        ([VOL_DOWN], [("a", "80", "90.00")], [("a", "40")], ["0.00"]),
        # billed more than the tiers say (a discount reached before was not
        # credited): 170 x 0.9 + 30 - 170 = 13, taken off the late lines in order
        ([VOL_UP], [("a", "150", "170.00")], [("a", "10"), ("b", "10")], ["4.00", "9.00"]),
        # what was billed counts, not what the tiers say: 5 were underbilled before
        ([VOL_UP], [("a", "90", "85.00")], [("a", "20")], ["44.00"]),
    ],
)
def test_late_volume_usage_bills_the_new_totals_price_minus_what_was_billed(
    cards: list[dict[str, Any]], billed: list[tuple[str, str, str]],
    late: list[tuple[str, str]], amounts: list[str],
) -> None:
    if cards == [VOL_UP]:  # group b priced like a
        cards = [VOL_UP, {**VOL_UP, "match": {"g": "b"}}]
    terms = terms_for(catalog_with([_meter(rate_card=cards)]))
    aggs = [UsageAggregate(meter="m", dimensions={"g": g}, quantity=D(q), first_seen=START)
            for g, q in late]
    res = rate_period(terms, _period(), [UsagePart(start=START, end=END, aggregates=aggs)],
                      late=True, billed=[_billed(*b) for b in billed])
    assert [ln.amount for ln in res.lines] == [D(a) for a in amounts]


def test_late_volume_usage_with_quantities_alone_assumes_one_price() -> None:
    """Callers that pass only ``already``: billed at the tier of its total."""
    terms = terms_for(catalog_with([_meter(rate_card=[{**VOL_UP, "match": {}}])]))
    agg = UsageAggregate(meter="m", dimensions={"g": "a"}, quantity=D(20), first_seen=START)
    res = rate_period(terms, _period(), [UsagePart(start=START, end=END, aggregates=[agg])],
                      late=True, already={"m": D(90)})
    assert [ln.amount for ln in res.lines] == [D("39.00")]


NEAR = "999999999999999999.999999999999"  # the largest quantity billow accepts


@pytest.mark.parametrize(
    ("price", "quantities", "amounts"),
    [
        # the tier total of the two groups is exactly the boundary: the first tier
        ({"tiers": {"mode": "volume", "steps": [{"up_to": NEAR, "unit_price": "1"},
                                                 {"unit_price": "2"}]}},
         ["0.000000000001", "999999999999999999.999999999998"],
         ["0.00", "1000000000000000000.00"]),
        # ~10^28 per line: every cent is kept
        ({"unit_price": "10000000000.000000000001"}, [NEAR, "1"],
         ["10000000000000000000000999999.99", "10000000000.00"]),
        ({"unit_price": "0.000000000001"}, [NEAR, NEAR], ["1000000.00", "1000000.00"]),
    ],
)
def test_lines_near_the_quantity_bound_are_priced_exactly(
    price: dict[str, Any], quantities: list[str], amounts: list[str]
) -> None:
    terms = terms_for(catalog_with([_meter(rate_card=[price])]))
    aggs = [UsageAggregate(meter="m", dimensions={"g": g}, quantity=D(q), first_seen=START)
            for g, q in zip("ab", quantities, strict=True)]
    res = rate_period(terms, _period(), [UsagePart(start=START, end=END, aggregates=aggs)])
    assert [ln.amount for ln in res.lines] == [D(a) for a in amounts]
    with wide():  # the test's own sum, exact
        total = sum((D(a) for a in amounts), D(0))
    assert res.usage_total == total
