"""Per-meter minimum and maximum spend per billing period (SPEC 12), pure."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from billing_fixtures import D, event, terms_for, utc

from models.amendments import parse_amendment
from models.catalog import Catalog, load_catalog
from models.contract import ContractTerms, RateOverride, add_rate_override
from models.errors import BillowValidationError
from models.invoices import LateUsageLine, MaximumLine, MinimumLine, UsageLine
from models.periods import Period, billing_periods
from models.rating import rate_events, split_points
from models.spend_limits import (
    BilledMeter,
    PeriodLimits,
    late_limit_lines,
    limit_split,
    period_limits,
    with_limit_lines,
)

METERS: list[dict[str, Any]] = [
    {"key": "storage", "name": "Storage", "aggregation": "sum", "group_by": ["region"],
     "rate_card": [{"match": {}, "unit_price": "1"}]},
    {"key": "support", "name": "Support", "aggregation": "sum",
     "rate_card": [{"match": {}, "unit_price": "100"}]},
    {"key": "tokens", "name": "Tokens", "aggregation": "sum", "group_by": ["model"],
     "rate_card": [{"match": {}, "tiers": {"mode": "graduated", "steps": [
         {"up_to": "1000", "unit_price": "2"}, {"unit_price": "1"}]}}]},
]


def catalog(limits: list[dict[str, Any]] | None = None, currency: str = "USD") -> Catalog:
    return load_catalog({"meters": METERS, "plans": [{
        "key": "p", "name": "P", "currency": currency,
        "meters": ["storage", "support", "tokens"],
        "meter_limits": limits or [],
    }]})


PLAN_LIMITS = [{"meter": "storage", "maximum_amount": "10000.00"},
               {"meter": "support", "minimum_amount": "2000.00"}]


def month(terms: ContractTerms, index: int = 0) -> Period:
    return billing_periods(terms.starts_on, terms.term_end, terms.billing_cycle,
                           terms.billing_anchor, terms.timezone)[index]


# --- the rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gross", "minimum", "maximum", "below", "above"),
    [
        ("0", "2000", None, "2000", "0"),  # a minimum applies with zero usage too
        ("1500.00", "2000.00", None, "500.00", "0"),
        ("2000.00", "2000.00", None, "0", "0"),  # exactly at the minimum: no line
        ("2500.00", "2000.00", None, "0", "0"),
        ("12000.00", None, "10000.00", "0", "-2000.00"),
        ("10000.00", None, "10000.00", "0", "0"),  # exactly at the cap: no line
        ("999.99", "1000.00", "2000.00", "0.01", "0"),
        ("2000.01", "1000.00", "2000.00", "0", "-0.01"),
        ("5.00", None, "0", "0", "-5.00"),  # a cap of zero: the meter is free
    ],
)
def test_limit_split(gross: str, minimum: str | None, maximum: str | None,
                     below: str, above: str) -> None:
    limits = PeriodLimits(meter="m", minimum=None if minimum is None else D(minimum),
                          maximum=None if maximum is None else D(maximum))
    assert limit_split(D(gross), limits) == (D(below), D(above))
    # gross + both parts is the clamp
    clamped = D(gross)
    if minimum is not None:
        clamped = max(clamped, D(minimum))
    if maximum is not None:
        clamped = min(clamped, D(maximum))
    assert D(gross) + D(below) + D(above) == clamped


# --- proration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("contract", "index", "storage_max", "support_min"),
    [
        ({}, 0, "10000.00", "2000.00"),  # a full month
        # calendar anchor from Jan 15: first period Jan 15 - Feb 1 = 17 of 31 days
        ({"starts_on": "2027-01-15", "billing_anchor": "calendar"}, 0, "5483.87", "1096.77"),
        # ... and the last period Jan 1 - Jan 15 2028 = 14 of 31 days
        ({"starts_on": "2027-01-15", "billing_anchor": "calendar"}, 12, "4516.13", "903.23"),
        # February 2028: 29 days, full
        ({"starts_on": "2028-02-01", "term_months": 1}, 0, "10000.00", "2000.00"),
        # a quarterly cycle: the limits are per billing period, not per month
        ({"billing_cycle": "quarterly"}, 0, "10000.00", "2000.00"),
    ],
)
def test_limits_are_prorated_by_days_for_partial_periods(
    contract: dict[str, Any], index: int, storage_max: str, support_min: str
) -> None:
    terms = terms_for(catalog(PLAN_LIMITS), **contract)
    limits = period_limits(terms, month(terms, index))
    assert limits["storage"] == PeriodLimits(meter="storage", maximum=D(storage_max))
    assert limits["support"] == PeriodLimits(meter="support", minimum=D(support_min))
    assert "tokens" not in limits


def test_a_terminated_last_period_is_prorated() -> None:
    terms = terms_for(catalog(PLAN_LIMITS))
    terms = terms.model_copy(update={"term_end": date(2027, 3, 11)})  # terminated Mar 11
    last = month(terms, 2)
    assert (last.days, last.full_days) == (10, 31)
    assert period_limits(terms, last)["support"].minimum == D("645.16")  # 2000 x 10/31


# --- precedence ------------------------------------------------------------------------


def test_a_contract_override_replaces_the_plan_fields_it_sets() -> None:
    terms = terms_for(catalog([{"meter": "storage", "minimum_amount": "100.00",
                                "maximum_amount": "10000.00"}]),
                      rate_overrides=[{"meter": "storage", "maximum_amount": "5000.00"}])
    assert period_limits(terms, month(terms))["storage"] == PeriodLimits(
        meter="storage", minimum=D("100.00"), maximum=D("5000.00"))


def test_limits_in_force_at_the_period_start_hold_for_the_whole_period() -> None:
    terms = terms_for(catalog(PLAN_LIMITS))
    jan, feb = month(terms, 0), month(terms, 1)
    ov = RateOverride.model_validate({"meter": "support", "minimum_amount": "500.00"})
    amended = add_rate_override(terms, ov, utc(2027, 1, 15))  # mid-January
    assert period_limits(amended, jan)["support"].minimum == D("2000.00")
    assert period_limits(amended, feb)["support"].minimum == D("500.00")
    # it splits no period: prices are unchanged inside January
    assert split_points(amended, jan) == [] and split_points(amended, jan, "support") == []
    # a second limit amendment replaces the first from its effective on
    again = add_rate_override(amended, ov.model_copy(update={"minimum_amount": D("700.00")}),
                              utc(2027, 2, 1))
    assert period_limits(again, feb)["support"].minimum == D("700.00")
    assert period_limits(again, jan)["support"].minimum == D("2000.00")


def test_a_limit_override_does_not_replace_a_price_override() -> None:
    terms = terms_for(catalog(), rate_overrides=[{"meter": "support", "unit_price": "50"}])
    limit = RateOverride.model_validate({"meter": "support", "maximum_amount": "10.00"})
    amended = add_rate_override(terms, limit, utc(2027, 1, 1))
    assert [o.until for o in amended.rate_overrides] == [None, None]
    lines = rate_events(amended, month(amended), [event("support", utc(2027, 1, 2), "1")]).lines
    assert [ln.amount for ln in lines] == [D("50.00")]  # the price override still prices it


# --- lines -----------------------------------------------------------------------------


def test_lines_after_each_meter_across_groups_and_zero_usage() -> None:
    terms = terms_for(catalog(PLAN_LIMITS))
    jan = month(terms)
    events = [
        event("storage", utc(2027, 1, 2), "7000", region="eu"),
        event("storage", utc(2027, 1, 3), "6000", region="us"),
        event("tokens", utc(2027, 1, 3), "10", model="a"),
    ]
    rated = rate_events(terms, jan, events).lines
    lines = with_limit_lines(terms, jan, rated)
    assert [(ln.kind, getattr(ln, "meter", None), ln.amount) for ln in lines] == [
        ("usage", "storage", D("7000.00")),
        ("usage", "storage", D("6000.00")),
        ("maximum", "storage", D("-3000.00")),  # both groups together, capped
        ("minimum", "support", D("2000.00")),  # no support usage at all
        ("usage", "tokens", D("20.00")),
    ]


def test_a_split_period_is_limited_across_its_parts() -> None:
    terms = terms_for(catalog(PLAN_LIMITS), rate_overrides=[
        {"meter": "storage", "unit_price": "2", "effective": "2027-01-16T00:00:00Z"}])
    jan = month(terms)
    events = [event("storage", utc(2027, 1, 2), "3000", region="eu"),
              event("storage", utc(2027, 1, 20), "4000", region="eu")]
    lines = with_limit_lines(terms, jan, rate_events(terms, jan, events).lines)
    assert [(ln.kind, ln.amount) for ln in lines if getattr(ln, "meter", "") == "storage"] == [
        ("usage", D("3000.00")), ("usage", D("8000.00")), ("maximum", D("-1000.00"))]


def test_tiers_under_a_cap() -> None:
    terms = terms_for(catalog([{"meter": "tokens", "maximum_amount": "2500.00"}]))
    jan = month(terms)
    # graduated across groups: 1000 x 2 + 600 x 1 + 400 x 1 = 3000, capped at 2500
    events = [event("tokens", utc(2027, 1, 2), "1600", model="a"),
              event("tokens", utc(2027, 1, 3), "400", model="b")]
    lines = with_limit_lines(terms, jan, rate_events(terms, jan, events).lines)
    assert [(ln.kind, ln.amount) for ln in lines] == [
        ("usage", D("2600.00")), ("usage", D("400.00")), ("maximum", D("-500.00"))]
    assert sum(ln.amount for ln in lines) == D("2500.00")


# --- late usage ------------------------------------------------------------------------


def _late(meter: str, amount: str) -> LateUsageLine:
    return LateUsageLine(meter=meter, dimensions={}, quantity=D(1), unit_price=None,
                         amount=D(amount), period_start=date(2027, 1, 1),
                         period_end=date(2027, 2, 1))


@pytest.mark.parametrize(
    ("meter", "billed", "late", "adjustments"),
    [
        # at its maximum already: the late usage bills nothing
        ("storage", BilledMeter(gross=D("12000.00"), maximum=D("-2000.00")), ["500.00"],
         [("maximum", "-500.00")]),
        # just under the cap: the part up to the cap is billed
        ("storage", BilledMeter(gross=D("9800.00")), ["500.00"], [("maximum", "-300.00")]),
        # under the cap: no adjustment
        ("storage", BilledMeter(gross=D("100.00")), ["500.00"], []),
        # under a minimum: the late usage fills the minimum first
        ("support", BilledMeter(gross=D("1500.00"), minimum=D("500.00")), ["300.00"],
         [("minimum", "-300.00")]),
        # ... and what passes the minimum is billed
        ("support", BilledMeter(gross=D("1500.00"), minimum=D("500.00")), ["400.00", "400.00"],
         [("minimum", "-500.00")]),
        # a period that billed only its minimum (zero usage)
        ("support", BilledMeter(minimum=D("2000.00")), ["100.00"], [("minimum", "-100.00")]),
    ],
)
def test_late_usage_respects_the_period_limits(
    meter: str, billed: BilledMeter, late: list[str], adjustments: list[tuple[str, str]]
) -> None:
    terms = terms_for(catalog(PLAN_LIMITS))
    jan = month(terms)
    late_lines = [_late(meter, a) for a in late]
    out = late_limit_lines(terms, jan, late_lines, {meter: billed})
    assert out[: len(late_lines)] == late_lines
    extra = out[len(late_lines):]
    assert [(ln.kind, str(ln.amount)) for ln in extra] == adjustments
    for ln in extra:
        assert isinstance(ln, MinimumLine | MaximumLine)
        assert (ln.period_start, ln.period_end) == (date(2027, 1, 1), date(2027, 2, 1))
    # after the late invoice the period's net is the clamp of its gross
    limits = period_limits(terms, jan)[meter]
    gross = billed.gross + sum(D(a) for a in late)
    net = gross + billed.minimum + billed.maximum + sum(ln.amount for ln in extra)
    clamped = max(gross, limits.minimum or Decimal(0))
    if limits.maximum is not None:
        clamped = min(clamped, limits.maximum)
    assert net == clamped


def test_late_usage_under_a_minimum_and_over_a_maximum_at_once() -> None:
    terms = terms_for(catalog([{"meter": "support", "minimum_amount": "1000.00",
                                "maximum_amount": "2000.00"}]))
    billed = {"support": BilledMeter(gross=D("500.00"), minimum=D("500.00"))}
    out = late_limit_lines(terms, month(terms), [_late("support", "2000.00")], billed)
    assert [(ln.kind, ln.amount) for ln in out] == [
        ("late_usage", D("2000.00")), ("minimum", D("-500.00")), ("maximum", D("-500.00"))]


def test_meters_without_limits_get_no_lines() -> None:
    terms = terms_for(catalog())
    jan = month(terms)
    rated = rate_events(terms, jan, [event("support", utc(2027, 1, 2), "1")]).lines
    assert with_limit_lines(terms, jan, rated) == rated
    assert all(isinstance(ln, UsageLine) for ln in rated)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan_limits", "field", "reason"),
    [
        ([{"meter": "storage", "minimum_amount": "20.00", "maximum_amount": "10.00"}],
         "plans[0].meter_limits[0].minimum_amount", "20.00 is above maximum_amount 10.00"),
        ([{"meter": "nope", "maximum_amount": "10.00"}],
         "plans[0].meter_limits[0].meter", "meter 'nope' is not in the plan"),
        ([{"meter": "storage"}], "plans[0].meter_limits[0]",
         "needs minimum_amount or maximum_amount"),
        ([{"meter": "storage", "maximum_amount": "-1"}],
         "plans[0].meter_limits[0].maximum_amount", None),
        ([{"meter": "storage", "maximum_amount": "1.005"}],
         "plans[0].meter_limits[0].maximum_amount", "more decimals than USD has (2)"),
        ([{"meter": "storage", "maximum_amount": "1"}, {"meter": "storage", "minimum_amount": "1"}],
         "plans[0].meter_limits[1].meter", "limits for 'storage' set twice"),
    ],
)
def test_bad_plan_limits_name_the_field(
    plan_limits: list[dict[str, Any]], field: str, reason: str | None
) -> None:
    with pytest.raises(BillowValidationError) as err:
        catalog(plan_limits)
    fields = {p: r for p, r in err.value.problems}
    assert field in fields, err.value.problems
    if reason is not None:
        assert fields[field] == reason


@pytest.mark.parametrize(
    ("override", "field", "reason_part"),
    [
        ({"meter": "storage", "minimum_amount": "20", "maximum_amount": "10"},
         "rate_overrides[0].minimum_amount", "above maximum_amount"),
        ({"meter": "storage", "minimum_amount": "-5"}, "rate_overrides[0].minimum_amount", ""),
        ({"maximum_amount": "10"}, "rate_overrides[0].meter", "required"),
        ({"meter": "storage", "match": {"region": "eu"}, "maximum_amount": "10"},
         "rate_overrides[0].match", "whole meter"),
        ({"meter": "storage", "unit_price": "1", "maximum_amount": "10"},
         "rate_overrides[0]", "replaces no price"),
        ({"meter": "storage", "discount_percent": "10", "maximum_amount": "10"},
         "rate_overrides[0].discount_percent", "not allowed"),
        ({"meter": "nope", "maximum_amount": "10"}, "rate_overrides[0].meter", "not in plan"),
        ({"meter": "storage", "maximum_amount": "10.001"},
         "rate_overrides[0].maximum_amount", "more decimals than USD"),
        # a contract cap below the plan's floor for the same meter
        ({"meter": "support", "maximum_amount": "1000.00"},
         "rate_overrides[0].maximum_amount", "minimum 2000.00 above maximum 1000.00"),
    ],
)
def test_bad_limit_overrides_name_the_field(
    override: dict[str, Any], field: str, reason_part: str
) -> None:
    with pytest.raises(BillowValidationError) as err:
        terms_for(catalog(PLAN_LIMITS), rate_overrides=[override])
    fields = {p: r for p, r in err.value.problems}
    assert field in fields, err.value.problems
    assert reason_part in fields[field]


def test_a_limit_amendment_below_the_plan_minimum_is_refused() -> None:
    terms = terms_for(catalog(PLAN_LIMITS))
    ov = RateOverride.model_validate({"meter": "support", "maximum_amount": "100.00"})
    with pytest.raises(BillowValidationError) as err:
        add_rate_override(terms, ov, utc(2027, 2, 1))
    assert [p for p, _ in err.value.problems] == ["override.maximum_amount"]
    jpy = terms_for(catalog(currency="JPY"))
    with pytest.raises(BillowValidationError) as err:
        add_rate_override(jpy, RateOverride.model_validate(
            {"meter": "support", "maximum_amount": "100.50"}), utc(2027, 2, 1))
    assert err.value.problems == [("override.maximum_amount", "more decimals than JPY has (0)")]


def test_an_amendment_with_minimum_above_maximum_is_refused_as_sent() -> None:
    with pytest.raises(BillowValidationError) as err:
        parse_amendment({"id": "a", "kind": "rate_override", "override": {
            "meter": "storage", "minimum_amount": "20", "maximum_amount": "10"}})
    assert err.value.problems == [("override.minimum_amount", "20 is above maximum_amount 10")]
