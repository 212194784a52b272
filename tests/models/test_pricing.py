"""Pricing models and price resolution (SPEC 1)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.catalog import Meter, PackagePrice, TieredPrice, TierStep, UnitPrice
from models.contract import RateOverride
from models.pricing import (
    apply_discount,
    graduated_amount,
    graduated_cost,
    package_amount,
    resolve_price,
    unit_amount,
    volume_amount,
    volume_line_amount,
)
from tests.support.paths import ACME

D = Decimal


def steps(*spec: tuple[str | None, str] | tuple[str | None, str, str]) -> list[TierStep]:
    out = []
    for s in spec:
        up_to, price = s[0], s[1]
        fee = s[2] if len(s) == 3 else "0"
        out.append(
            TierStep(
                up_to=None if up_to is None else D(up_to), unit_price=D(price), flat_fee=D(fee)
            )
        )
    return out


TIERS = steps(("1000", "0.10"), ("5000", "0.08"), (None, "0.05"))
TIERS_FLAT = steps(("100", "1", "10"), (None, "0.5", "20"))


@pytest.mark.parametrize(
    ("q", "price", "expected"),
    [("0", "0.03", "0"), ("1000000", "0.015", "15000.000"), ("2.5", "0.1", "0.25")],
)
def test_unit(q: str, price: str, expected: str) -> None:
    assert unit_amount(D(q), D(price)) == D(expected)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("0", "0"),
        ("1", "0.10"),
        ("1000", "100.00"),  # exactly at the edge: still tier 1 (up_to inclusive)
        ("1001", "100.08"),
        ("5000", "420.00"),
        ("5001", "420.05"),
        ("10000", "670.00"),
        ("0.5", "0.05"),
    ],
)
def test_graduated(q: str, expected: str) -> None:
    assert graduated_amount(TIERS, D(q)) == D(expected)


@pytest.mark.parametrize(
    ("q", "expected"),
    [("0", "0"), ("1", "11"), ("100", "110"), ("101", "130.5"), ("200", "180")],
)
def test_graduated_flat_fees_on_entering_tier(q: str, expected: str) -> None:
    assert graduated_amount(TIERS_FLAT, D(q)) == D(expected)


def test_graduated_with_already_consumed() -> None:
    assert graduated_amount(TIERS, D(500), already=D(800)) == D("20.00") + D("24.00")
    assert graduated_amount(TIERS_FLAT, D(10), already=D(100)) == D(25)  # enters tier 2
    with pytest.raises(ValueError):
        graduated_amount(TIERS, D(-1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.decimals(min_value=0, max_value=20000, places=2), min_size=1, max_size=6))
def test_graduated_split_sums_to_whole(parts: list[Decimal]) -> None:
    done, total = D(0), D(0)
    for q in parts:
        total += graduated_amount(TIERS_FLAT, q, done)
        done += q
    assert total == graduated_cost(TIERS_FLAT, done)


@pytest.mark.parametrize(
    ("q", "expected"),
    [("0", "0"), ("1000", "100.00"), ("1001", "80.08"), ("5000", "400.00"), ("5001", "250.05")],
)
def test_volume(q: str, expected: str) -> None:
    assert volume_amount(TIERS, D(q)) == D(expected)


@pytest.mark.parametrize(("q", "expected"), [("0", "0"), ("100", "110"), ("101", "70.5")])
def test_volume_flat_fee(q: str, expected: str) -> None:
    assert volume_amount(TIERS_FLAT, D(q)) == D(expected)


def test_volume_line_uses_total_tier() -> None:
    assert volume_line_amount(TIERS, D(10), D(6000), include_flat_fee=False) == D("0.50")
    assert volume_line_amount(TIERS_FLAT, D(10), D(150), include_flat_fee=True) == D(25)
    assert volume_line_amount(TIERS_FLAT, D(0), D(0), include_flat_fee=True) == D(0)


@pytest.mark.parametrize(
    ("q", "already", "expected"),
    [
        ("0", "0", "0"),
        ("1", "0", "5"),
        ("100", "0", "5"),
        ("101", "0", "10"),
        ("50", "60", "5"),
        ("40", "60", "0"),
        ("41", "60", "5"),
        ("0.5", "0", "5"),
    ],
)
def test_package(q: str, already: str, expected: str) -> None:
    assert package_amount(D(100), D(5), D(q), D(already)) == D(expected)


# --- resolution -----------------------------------------------------------------------

T0 = datetime(2027, 1, 1, tzinfo=UTC)
T1 = datetime(2027, 2, 1, tzinfo=UTC)
T2 = datetime(2027, 3, 1, tzinfo=UTC)

METER = Meter.model_validate(
    {
        "key": "tokens",
        "name": "T",
        "aggregation": "sum",
        "group_by": ["model", "region"],
        "rate_card": [
            {"match": {}, "unit_price": "0.01"},
            {"match": {"model": "gpt-4"}, "unit_price": "0.03"},
            {"match": {"model": "gpt-4", "region": "eu"}, "unit_price": "0.04"},
            {
                "match": {"model": "big"},
                "tiers": {
                    "mode": "graduated",
                    "steps": [
                        {"up_to": "10", "unit_price": "2", "flat_fee": "4"},
                        {"unit_price": "1"},
                    ],
                },
            },
            {"match": {"model": "pkg"}, "package": {"size": "100", "price": "8"}},
        ],
    }
)
STRICT = Meter.model_validate(
    {
        "key": "strict",
        "name": "S",
        "aggregation": "sum",
        "group_by": ["model"],
        "rate_card": [{"match": {"model": "a"}, "unit_price": "1"}],
    }
)


def ov(**kw: Any) -> RateOverride:
    return RateOverride.model_validate(kw)


@pytest.mark.parametrize(
    ("dims", "price", "source"),
    [
        ({}, "0.01", "rate_card[0]"),
        ({"model": "gpt-3.5"}, "0.01", "rate_card[0]"),
        ({"model": "gpt-4"}, "0.03", "rate_card[1]"),
        ({"model": "gpt-4", "region": "us"}, "0.03", "rate_card[1]"),
        ({"model": "gpt-4", "region": "eu"}, "0.04", "rate_card[2]"),
    ],
)
def test_rate_card_specificity(dims: dict[str, str], price: str, source: str) -> None:
    r = resolve_price(METER, [], dims, T0)
    assert r is not None
    assert r.unit_price_shown == D(price) and r.source == source


def test_unpriced_is_none_not_zero() -> None:
    assert resolve_price(STRICT, [], {"model": "b"}, T0) is None
    assert resolve_price(STRICT, [], {}, T0) is None
    # a discount has nothing to discount
    assert resolve_price(STRICT, [ov(discount_percent="10")], {"model": "b"}, T0) is None
    # an explicit override prices it
    r = resolve_price(
        STRICT, [ov(meter="strict", match={"model": "b"}, unit_price="2")], {"model": "b"}, T0
    )
    assert r is not None and r.unit_price_shown == 2


PRECEDENCE = [
    ov(discount_percent="50"),  # 0 contract-wide
    ov(meter="tokens", discount_percent="20"),  # 1 meter discount
    ov(meter="tokens", match={"model": "gpt-4"}, unit_price="0.02"),  # 2 explicit
    ov(meter="other", discount_percent="90"),  # 3 another meter
]


@pytest.mark.parametrize(
    ("overrides", "dims", "price"),
    [
        ([0], {"model": "gpt-4"}, "0.015"),
        ([0, 1], {"model": "gpt-4"}, "0.024"),  # meter discount beats contract-wide
        ([0, 1, 2], {"model": "gpt-4"}, "0.02"),  # explicit price is final
        ([0, 1, 2], {"model": "x"}, "0.008"),  # explicit does not match -> meter discount
        ([3], {"model": "gpt-4"}, "0.03"),  # other meter's discount ignored
        ([2], {"model": "gpt-4", "region": "eu"}, "0.02"),  # explicit beats a more specific card
    ],
)
def test_override_precedence(overrides: list[int], dims: dict[str, str], price: str) -> None:
    r = resolve_price(METER, [PRECEDENCE[i] for i in overrides], dims, T0)
    assert r is not None and r.unit_price_shown == D(price), r


def test_most_specific_explicit_override_and_last_wins_ties() -> None:
    ovs = [
        ov(meter="tokens", match={"model": "gpt-4"}, unit_price="1"),
        ov(meter="tokens", match={"model": "gpt-4", "region": "eu"}, unit_price="2"),
        ov(meter="tokens", match={"model": "gpt-4"}, unit_price="3"),
    ]
    r_eu = resolve_price(METER, ovs, {"model": "gpt-4", "region": "eu"}, T0)
    r_us = resolve_price(METER, ovs, {"model": "gpt-4", "region": "us"}, T0)
    assert r_eu is not None and r_eu.unit_price_shown == 2
    assert r_us is not None and r_us.unit_price_shown == 3 and r_us.source == "rate_overrides[2]"


@pytest.mark.parametrize(
    ("at", "price"),
    [
        (T0, "0.03"),
        (T1 - (T1 - T0) / 2, "0.03"),
        (T1, "0.01"),
        (T2 - (T2 - T1) / 2, "0.01"),
        (T2, "0.03"),
    ],
)
def test_effective_until_half_open(at: datetime, price: str) -> None:
    o = ov(meter="tokens", match={"model": "gpt-4"}, unit_price="0.01", effective=T1, until=T2)
    r = resolve_price(METER, [o], {"model": "gpt-4"}, at)
    assert r is not None and r.unit_price_shown == D(price)


def test_discount_applies_to_tiers_and_packages() -> None:
    r = resolve_price(METER, [ov(discount_percent="25")], {"model": "big"}, T0)
    assert r is not None and r.unit_price_shown is None
    assert isinstance(r.price, TieredPrice)
    assert [(s.up_to, s.unit_price, s.flat_fee) for s in r.price.steps] == [
        (D(10), D("1.5"), D(3)),
        (None, D("0.75"), D(0)),
    ]
    p = resolve_price(METER, [ov(discount_percent="25")], {"model": "pkg"}, T0)
    assert p is not None and p.price == PackagePrice(size=D(100), price=D(6))


def test_apply_discount_exact() -> None:
    assert apply_discount(UnitPrice(unit_price=D("0.002")), D(50)) == UnitPrice(
        unit_price=D("0.001")
    )
    assert apply_discount(UnitPrice(unit_price=D("1")), D("33.333")) == UnitPrice(
        unit_price=D("0.66667")
    )
    assert apply_discount(UnitPrice(unit_price=D("1")), D(100)) == UnitPrice(unit_price=D(0))


def test_explicit_override_with_tiers_shows_no_unit_price() -> None:
    o = ov(meter="tokens", tiers={"mode": "volume", "steps": [{"unit_price": "1"}]})
    r = resolve_price(METER, [o], {"model": "gpt-4"}, T0)
    assert r is not None and r.unit_price_shown is None and isinstance(r.price, TieredPrice)


def test_resolve_for_terms_acme() -> None:

    from models.catalog import load_catalog_file
    from models.contract import load_contract_file, resolve_terms
    from models.pricing import resolve_for_terms

    acme = ACME
    terms = resolve_terms(
        load_contract_file(acme / "contract.yaml"), load_catalog_file(acme / "catalog.yaml")
    )
    got = {
        dims["region"]: r.unit_price_shown
        for dims in ({"region": "eu"}, {"region": "us"})
        if (r := resolve_for_terms(terms, "requests", dims, T0)) is not None
    }
    assert got == {"eu": D("0.0006"), "us": D("0.0005")}
    with pytest.raises(KeyError):
        resolve_for_terms(terms, "nope", {}, T0)


# --- precision: quantities and prices near 10^18 with 12 decimals (SPEC 6) --------------

NEAR = "999999999999999999.999999999999"  # the largest quantity billow accepts


def _product(*factors: str) -> tuple[int, int]:
    """The exact product as (integer, decimal places), in integer arithmetic
    (independent of any decimal context)."""
    num, scale = 1, 0
    for f in factors:
        whole, _, frac = f.partition(".")
        num *= int(whole + frac)
        scale += len(frac)
    return num, scale


def _exact(*factors: str) -> Decimal:
    num, scale = _product(*factors)
    return Decimal(f"{num}E-{scale}")  # constructing from a string never rounds


def _cents_half_up(*factors: str) -> Decimal:
    num, scale = _product(*factors)
    cents, rest = divmod(num * 100, 10**scale)
    if 2 * rest >= 10**scale:
        cents += 1
    return Decimal(f"{cents}E-2")


@pytest.mark.parametrize(
    ("q", "price"),
    [
        (NEAR, "0.03"),
        (NEAR, "10000000000.000000000001"),  # ~10^28: past the default 28 digits
        (NEAR, NEAR),  # ~10^36
        ("123456789012345678.123456789012", "98765432.123456789012"),
        ("0.000000000001", NEAR),
    ],
)
def test_unit_amounts_near_the_bounds_are_exact(q: str, price: str) -> None:
    from models.money import round_money
    from models.pricing.precision import wide

    exact = unit_amount(D(q), D(price))
    assert exact == _exact(q, price)  # not rounded to the default 28 digits
    # rounding to cents needs the digits too (quantize within the precision),
    # as rating does it
    with wide():
        assert round_money(exact, "USD") == _cents_half_up(q, price)


def test_a_tier_boundary_with_12_decimals_near_10_18_is_respected() -> None:
    tiers = steps((NEAR, "1"), (None, "2"))
    assert volume_amount(tiers, D(NEAR)) == D(NEAR)  # the first tier, not the second
    # the counter crosses the boundary by 10^-12 only after `already`
    assert graduated_amount(tiers, D("999999999999999999.999999999998"), D("0.000000000001")) == D(
        "999999999999999999.999999999998")
    high = steps((NEAR, "1"), (None, "10000000000"))
    assert graduated_amount(high, D("999999999999999999.999999999998"), D("0.000000000001")) == D(
        "999999999999999999.999999999998")
    assert package_amount(D("0.000000000001"), D("1"), D(NEAR)) == D(
        "999999999999999999999999999999")


def test_a_discount_on_a_price_with_30_digits_is_exact() -> None:
    discounted = apply_discount(UnitPrice(unit_price=D(NEAR)), D("12.5"))
    assert isinstance(discounted, UnitPrice)
    assert discounted.unit_price == D("874999999999999999.999999999999125")


@pytest.mark.parametrize(
    ("price", "percent", "expected"),
    [
        ("0.0012", "33.333333333333", "0.000800000000000004"),  # 18 decimals
        ("0.000000000001", "12.5", "0.000000000000875"),
    ],
)
def test_a_discounted_price_keeps_every_decimal(price: str, percent: str, expected: str) -> None:
    """Derived prices are not input: the 12-decimal bound on prices does not cut them."""
    for form in (UnitPrice(unit_price=D(price)),
                 TieredPrice(mode="volume", steps=steps((None, price, price))),
                 PackagePrice(size=D(10), price=D(price))):
        discounted = apply_discount(form, D(percent))
        if isinstance(discounted, UnitPrice):
            assert discounted.unit_price == D(expected)
        elif isinstance(discounted, TieredPrice):
            step = discounted.steps[0]
            assert (step.unit_price, step.flat_fee) == (D(expected), D(expected))
        else:
            assert discounted.price == D(expected)
