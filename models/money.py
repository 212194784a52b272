"""Money and exact decimals.

Invariants:
- Money and quantities are `Decimal`, never `float`. The pydantic types here
  accept `str`, `int` and `Decimal`; they reject `float` (a YAML ``0.03``
  without quotes is a float, and floats cannot represent most prices), `bool`
  and non-finite values (NaN, Infinity).
- Rounding is ``ROUND_HALF_UP`` (half away from zero) to the currency's
  ISO 4217 minor unit; `round_money` always returns a value quantized to that
  unit, so ``round_money(Decimal("1500"), "USD") == Decimal("1500.00")`` with
  exponent -2.
- An unknown currency code is an error, never a default of 2 decimals.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

__all__ = [
    "CURRENCY_MINOR_UNITS",
    "CurrencyCode",
    "DecimalStr",
    "Money",
    "NonNegativeDecimal",
    "Percent",
    "PositiveDecimal",
    "exact_div",
    "minor_units",
    "mul_div",
    "plain",
    "round_half_up",
    "round_money",
    "strip_zeros",
    "to_decimal",
    "validate_currency",
]

# ISO 4217 active codes and their minor units. Everything not listed is unknown.
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE = "BHD IQD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD "
    "FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD "
    "KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD "
    "NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP "
    "SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VES "
    "WST XCD YER ZAR ZMW ZWG"
)
CURRENCY_MINOR_UNITS: dict[str, int] = {
    **{c: 2 for c in _TWO.split()},
    **{c: 0 for c in _ZERO.split()},
    **{c: 3 for c in _THREE.split()},
    **{c: 4 for c in _FOUR.split()},
}


def minor_units(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit (USD 2, JPY 0, KWD 3)."""
    try:
        return CURRENCY_MINOR_UNITS[currency]
    except KeyError:
        raise ValueError(f"unknown currency {currency!r} (expected an ISO 4217 code)") from None


def round_half_up(x: Decimal, places: int) -> Decimal:
    """Round half away from zero to ``places`` decimals (0.005 -> 0.01)."""
    return x.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit, half up; the result carries that exponent."""
    return round_half_up(amount, minor_units(currency))


def mul_div(a: Decimal, b: Decimal, c: Decimal) -> Decimal:
    """``a * b / c`` with generous precision; multiply first so exact cases stay exact."""
    with localcontext() as ctx:
        ctx.prec = 60
        return a * b / c


def exact_div(a: Decimal, b: Decimal) -> Decimal:
    """``a / b`` with generous precision (cost bases, discount credits)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return a / b


def strip_zeros(x: Decimal) -> Decimal:
    """Drop trailing fractional zeros without switching to exponent notation.

    ``0.0010 -> 0.001``, ``1000000 -> 1000000`` (``normalize`` would give 1E+6).
    """
    if x == x.to_integral_value():
        return x.quantize(Decimal(1))
    return x.normalize()


def to_decimal(value: Any) -> Decimal:
    """Coerce str/int/Decimal to a finite Decimal; reject float, bool and NaN/Infinity."""
    if isinstance(value, bool):
        raise ValueError("expected a decimal string, got a boolean")
    if isinstance(value, float):
        raise ValueError(
            f"decimals are strings: write {str(value)!r} in quotes "
            "(a bare number is read as a binary float and is rejected)"
        )
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError(f"expected a decimal string, got {type(value).__name__}")
    if not d.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal")
    return d


def _non_negative(d: Decimal) -> Decimal:
    if d < 0:
        raise ValueError(f"must not be negative (got {d})")
    return d


def _positive(d: Decimal) -> Decimal:
    if d <= 0:
        raise ValueError(f"must be greater than zero (got {d})")
    return d


def _percent(d: Decimal) -> Decimal:
    if not Decimal(0) <= d <= Decimal(100):
        raise ValueError(f"must be between 0 and 100 (got {d})")
    return d


def validate_currency(code: str) -> str:
    minor_units(code)
    return code


def plain(d: Decimal) -> str:
    """Positional notation, scale kept: ``Decimal("1.00E+6")`` -> ``"1000000"``.

    asyncpg decodes NUMERIC into exponent form for large round values; a
    document must never show ``1.00E+6`` where a person expects 1000000.
    """
    return format(d, "f")


DecimalStr = Annotated[
    Decimal,
    BeforeValidator(to_decimal),
    PlainSerializer(plain, return_type=str, when_used="json"),
]
"""Any finite decimal given as str/int/Decimal. Serializes as a plain string in JSON mode."""
NonNegativeDecimal = Annotated[DecimalStr, AfterValidator(_non_negative)]
PositiveDecimal = Annotated[DecimalStr, AfterValidator(_positive)]
Percent = Annotated[DecimalStr, AfterValidator(_percent)]
Money = NonNegativeDecimal
CurrencyCode = Annotated[str, AfterValidator(validate_currency)]
