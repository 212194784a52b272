from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from models.money import (
    DecimalStr,
    NonNegativeDecimal,
    minor_units,
    round_half_up,
    round_money,
    strip_zeros,
)


@pytest.mark.parametrize(
    ("currency", "units"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("CLF", 4),
    ],
)
def test_minor_units(currency: str, units: int) -> None:
    assert minor_units(currency) == units


def test_unknown_currency() -> None:
    with pytest.raises(ValueError, match="unknown currency 'XYZ'"):
        minor_units("XYZ")


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.005", "USD", "0.01"),
        ("0.004", "USD", "0.00"),
        ("-0.005", "USD", "-0.01"),  # half away from zero
        ("1500", "USD", "1500.00"),
        ("2.5", "JPY", "3"),
        ("1.4999", "JPY", "1"),
        ("0.0005", "KWD", "0.001"),
        ("20833.3333333", "USD", "20833.33"),
        ("26666.6666667", "USD", "26666.67"),
    ],
)
def test_round_money(amount: str, currency: str, expected: str) -> None:
    got = round_money(Decimal(amount), currency)
    assert got == Decimal(expected)
    # quantized to the minor unit, not merely numerically equal
    assert got.as_tuple().exponent == -minor_units(currency)


def test_round_half_up_places() -> None:
    assert round_half_up(Decimal("1.2345"), 3) == Decimal("1.235")
    assert round_half_up(Decimal("1.5"), 0) == Decimal(2)


def test_strip_zeros() -> None:
    assert str(strip_zeros(Decimal("0.0010"))) == "0.001"
    assert str(strip_zeros(Decimal("1000000"))) == "1000000"
    assert str(strip_zeros(Decimal("15.000"))) == "15"


class _M(BaseModel):
    x: DecimalStr
    y: NonNegativeDecimal = Decimal(0)


@pytest.mark.parametrize("value", ["0.03", 3, Decimal("0.03"), " 12.5 ", "-1", "1E+3"])
def test_decimal_accepts(value: object) -> None:
    assert isinstance(_M(x=value).x, Decimal)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.03, "decimals are strings"),
        (True, "boolean"),
        ("NaN", "not a finite decimal"),
        ("Infinity", "not a finite decimal"),
        ("abc", "not a decimal number"),
        ([1], "expected a decimal string"),
    ],
)
def test_decimal_rejects(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _M(x=value)


def test_non_negative() -> None:
    with pytest.raises(ValidationError, match="must not be negative"):
        _M(x=1, y="-0.01")


def test_json_dump_is_string() -> None:
    assert _M(x="0.015").model_dump(mode="json") == {"x": "0.015", "y": "0"}


def test_json_dump_is_positional() -> None:
    # values read back from NUMERIC columns can carry exponents; documents never show them
    assert _M(x=Decimal("1.00E+6")).model_dump(mode="json")["x"] == "1000000"
    assert _M(x=Decimal("1500.00")).model_dump(mode="json")["x"] == "1500.00"
