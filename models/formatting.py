"""Money, quantities and dates as people read them, through Babel.

Used by documents, the CLI's tables and the API's text renderings, so one
amount reads the same everywhere. Never hand-rolled: Babel knows each
currency's minor digits (JPY has none), its symbol, and each locale's
separators.

Invariants:
- Display only. Amounts arrive already rounded where SPEC.md says; these
  functions never feed a number back into billing math.
- `money_code` always shows the ISO code ("45,000.00 USD"): unambiguous in
  tables that mix currencies; `money_amount` leaves it to a column header
  that names the column's one currency ("total USD"). `money` uses the
  locale's symbol ("$45,000.00"), for documents addressed to one customer.
- A unit price keeps every digit it has too (`unit_price`): it is exact, and
  the line amount is what was rounded.
- A quantity keeps every significant digit it has (no display rounding):
  "1,234.56789", never "1,234.568".
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from babel.dates import format_date
from babel.numbers import format_currency, format_decimal

DEFAULT_LOCALE = "en_US"
_CODE_PATTERN = "#,##0.00\u00a0¤¤"  # the currency's own minor digits replace .00


def money(amount: Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """With the locale's currency symbol: ``$45,000.00``, ``45.000,00 €``."""
    return str(format_currency(amount, currency, locale=locale))


def money_code(amount: Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """With the ISO code, never broken across lines: ``45,000.00 USD``."""
    return str(format_currency(amount, currency, format=_CODE_PATTERN, locale=locale))


def unit_price(amount: Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """A price per unit, every digit kept (at least the currency's minor digits):
    ``$0.015``, ``$0.0012``, ``$0.50``. `money` would round 0.015 to $0.02."""
    return str(format_currency(amount, currency, locale=locale, decimal_quantization=False))


def quantity(value: Decimal, locale: str = DEFAULT_LOCALE) -> str:
    """Grouped, every digit kept: ``1,234.56789``, ``100,000``."""
    return str(format_decimal(value, locale=locale, decimal_quantization=False))


def day(value: date, locale: str = DEFAULT_LOCALE, style: str = "medium") -> str:
    """``Dec 1, 2026`` (medium) or ``December 1, 2026`` (long)."""
    return str(format_date(value, format=style, locale=locale))


def money_amount(amount: Decimal, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """Grouped, to the currency's minor digits, without the code: ``45,000.00``.

    For a table column whose header names the one currency of its cells.
    """
    return str(format_currency(amount, currency, format="#,##0.00", locale=locale))
