"""Table test: what people read for each currency and locale."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from models.formatting import day, money, money_amount, money_code, quantity, unit_price

NBSP = "\u00a0"


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "symbol", "code"),
    [
        ("45000", "USD", "en_US", "$45,000.00", f"45,000.00{NBSP}USD"),
        ("100000.00", "USD", "en_US", "$100,000.00", f"100,000.00{NBSP}USD"),
        ("0", "USD", "en_US", "$0.00", f"0.00{NBSP}USD"),
        ("-12.50", "USD", "en_US", "-$12.50", f"-12.50{NBSP}USD"),
        ("1234.5", "EUR", "de_DE", f"1.234,50{NBSP}€", f"1.234,50{NBSP}EUR"),
        ("1500", "JPY", "en_US", "¥1,500", f"1,500{NBSP}JPY"),
    ],
)
def test_money(amount: str, currency: str, locale: str, symbol: str, code: str) -> None:
    assert money(Decimal(amount), currency, locale) == symbol
    assert money_code(Decimal(amount), currency, locale) == code


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1234.56789", "1,234.56789"), ("100000", "100,000"), ("0.000001", "0.000001")],
)
def test_quantity_keeps_every_digit(value: str, shown: str) -> None:
    assert quantity(Decimal(value)) == shown


def test_day() -> None:
    assert day(date(2026, 12, 1)) == "Dec 1, 2026"
    assert day(date(2026, 12, 1), style="long") == "December 1, 2026"
    assert day(date(2026, 12, 1), "de_DE", "long") == "1. Dezember 2026"


@pytest.mark.parametrize(
    ("value", "currency", "locale", "shown"),
    [("0.015", "USD", "en_US", "$0.015"), ("0.0012", "USD", "en_US", "$0.0012"),
     ("0.5", "USD", "en_US", "$0.50"), ("0.015", "EUR", "de_DE", f"0,015{NBSP}€")],
)
def test_unit_price_keeps_every_digit(value: str, currency: str, locale: str, shown: str) -> None:
    assert unit_price(Decimal(value), currency, locale) == shown


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [("45000", "USD", "45,000.00"), ("0", "USD", "0.00"), ("1500", "JPY", "1,500"),
     ("-12.5", "EUR", "-12.50")],
)
def test_money_amount_without_the_code(amount: str, currency: str, shown: str) -> None:
    assert money_amount(Decimal(amount), currency) == shown
