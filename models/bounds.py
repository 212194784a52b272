"""Bounds on every value billow accepts (SPEC.md section 6, last bullet).

"No input that billow accepts may stop a contract": a contract, catalog,
amendment or payment that would fail later is refused when it is sent, naming
the field. The contract file, the HTTP API, the CLI, timelines and the
workflow's own update payloads all validate through the pydantic models of
``models``, so the bounds live here once, as named constants and annotated
types, and every input model uses these types.

Invariants:
- ``term_months`` <= `MAX_TERM_MONTHS` (1200), for a contract and for one
  ``extend_term``; the cumulative rule (term plus extensions <= 1200) needs
  the contract's state and is checked by the workflow with this constant.
- ``payment_terms_days`` <= `MAX_PAYMENT_TERMS_DAYS` (3650), on the plan, the
  contract and ``change_payment_terms``.
- Ids (contract, customer, catalog keys, amendment, grant, payment) are 1 to
  `MAX_ID_LENGTH` (256) characters; an invoice key at most
  `MAX_INVOICE_KEY_LENGTH` (64).
- Amounts, prices, quantities and percentages are below `MAX_MAGNITUDE`
  (10^18) in absolute value with at most `MAX_DECIMAL_PLACES` (12) decimals.
  Trailing zeros beyond 12 places are not decimals of the value: ``1.5000``
  padded to 15 places is accepted and kept at 12.
- ``usage_grace_hours`` <= `MAX_USAGE_GRACE_HOURS` (8760, one year): a longer
  window would keep a period's invoice a draft for more than a year and
  delay every later invoice behind it; it also keeps ``period end + grace``
  a representable instant.
- Dates and instants lie in [`EARLIEST_DATE`, `LATEST_DATE`] and
  ``starts_on`` <= `LATEST_STARTS_ON`, so every instant derived from them
  (term end after 1200 months, due dates 3650 days later, reminders, grace)
  stays far inside what Python, PostgreSQL and Temporal can represent
  (``datetime`` ends at year 9999, and the start of year 1 is out of range
  in any timezone east of UTC).
- ``priority`` fits the ledger's 32-bit integer column.
- Display names are at most `MAX_NAME_LENGTH` (1000) characters.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal, localcontext
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

from models.money import DecimalStr, _non_negative, _percent, _positive

__all__ = [
    "EARLIEST_DATE",
    "LATEST_DATE",
    "LATEST_STARTS_ON",
    "MAX_DECIMAL_PLACES",
    "MAX_ID_LENGTH",
    "MAX_INVOICE_KEY_LENGTH",
    "MAX_MAGNITUDE",
    "MAX_NAME_LENGTH",
    "MAX_PAYMENT_TERMS_DAYS",
    "MAX_PRIORITY",
    "MAX_TERM_MONTHS",
    "MAX_USAGE_GRACE_HOURS",
    "MIN_PRIORITY",
    "BoundedDecimal",
    "BoundedNonNegative",
    "BoundedPercent",
    "BoundedPositive",
    "GraceHours",
    "Id",
    "Instant",
    "InvoiceKey",
    "LocalDate",
    "Name",
    "PaymentTermsDays",
    "Priority",
    "TermMonths",
    "WholeNumber",
    "check_date",
    "check_instant",
    "check_magnitude",
]

MAX_TERM_MONTHS = 1200
MAX_PAYMENT_TERMS_DAYS = 3650
MAX_ID_LENGTH = 256
# An invoice key is ``<kind>:<date>`` (``commitment:2027-01-01``); short enough
# that ids derived from it (``timeline:<key>:<instant>``) stay ids.
MAX_INVOICE_KEY_LENGTH = 64
# Display names (customer, meter, plan, fee) are labels; the customer's is
# carried twice in the contract workflow's state, whose payload Temporal
# refuses near 2 MB, so a name of half a megabyte must not get in.
MAX_NAME_LENGTH = 1000
MAX_MAGNITUDE = Decimal(10) ** 18  # exclusive
MAX_DECIMAL_PLACES = 12
MAX_USAGE_GRACE_HOURS = 8760
MAX_PRIORITY = 2**31 - 1
MIN_PRIORITY = -(2**31)
EARLIEST_DATE = date(1970, 1, 1)
LATEST_DATE = date(3099, 12, 31)
# + MAX_TERM_MONTHS months still ends on or before LATEST_DATE.
LATEST_STARTS_ON = date(2999, 12, 31)

_EARLIEST_INSTANT = datetime.combine(EARLIEST_DATE, time(0), tzinfo=UTC)
_LATEST_INSTANT = datetime.combine(LATEST_DATE, time.max, tzinfo=UTC)
_QUANTUM = Decimal(1).scaleb(-MAX_DECIMAL_PLACES)


def check_magnitude(d: Decimal) -> Decimal:
    """``d`` if it is below 10^18 with at most 12 decimals (extra trailing zeros dropped)."""
    if d.copy_abs() >= MAX_MAGNITUDE:  # abs() would round to 28 digits: 1 - 10^-12 -> 10^18
        raise ValueError(f"must be less than 10^18 in absolute value (got {d:.6E})")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        with localcontext() as ctx:
            ctx.prec = 60  # 18 integer digits + 12 decimals exceed the default 28
            kept = d.quantize(_QUANTUM)
        if kept != d:
            raise ValueError(f"at most {MAX_DECIMAL_PLACES} decimal places (got {d})")
        return kept
    return d


def _grace(d: Decimal) -> Decimal:
    if d > MAX_USAGE_GRACE_HOURS:
        raise ValueError(f"must be at most {MAX_USAGE_GRACE_HOURS} hours (one year) (got {d})")
    return d


BoundedDecimal = Annotated[DecimalStr, AfterValidator(check_magnitude)]
"""A finite decimal below 10^18 in absolute value with at most 12 decimals."""
BoundedNonNegative = Annotated[BoundedDecimal, AfterValidator(_non_negative)]
BoundedPositive = Annotated[BoundedDecimal, AfterValidator(_positive)]
BoundedPercent = Annotated[BoundedDecimal, AfterValidator(_percent)]
GraceHours = Annotated[BoundedNonNegative, AfterValidator(_grace)]


def _no_bool_float(v: Any) -> Any:
    # pydantic's lax int accepts True and 12.0; a count of days or months is neither.
    if isinstance(v, bool | float):
        raise ValueError("must be a whole number")
    return v


WholeNumber = Annotated[int, BeforeValidator(_no_bool_float)]
TermMonths = Annotated[WholeNumber, Field(gt=0, le=MAX_TERM_MONTHS)]
PaymentTermsDays = Annotated[WholeNumber, Field(ge=0, le=MAX_PAYMENT_TERMS_DAYS)]
Priority = Annotated[WholeNumber, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
"""An identifier or key: 1 to 256 characters."""
InvoiceKey = Annotated[str, Field(min_length=1, max_length=MAX_INVOICE_KEY_LENGTH)]
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]


def check_date(d: date) -> date:
    if not EARLIEST_DATE <= d <= LATEST_DATE:
        raise ValueError(
            f"must be between {EARLIEST_DATE.isoformat()} and {LATEST_DATE.isoformat()}"
            f" (got {d.isoformat()})"
        )
    return d


def check_instant(d: datetime) -> datetime:
    """``d`` in UTC if it lies between `EARLIEST_DATE` and the end of `LATEST_DATE` (UTC)."""
    try:
        utc = d.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{d.isoformat()} is out of range once converted to UTC") from None
    if not _EARLIEST_INSTANT <= utc <= _LATEST_INSTANT:
        raise ValueError(
            f"must be between {EARLIEST_DATE.isoformat()}T00:00:00Z and "
            f"{LATEST_DATE.isoformat()}T23:59:59Z (got {utc.isoformat()})"
        )
    return utc


Instant = Annotated[AwareDatetime, AfterValidator(check_instant)]
"""An aware instant (naive values are errors) inside the accepted range, in UTC."""


def _date_only(v: Any) -> Any:
    # pydantic would read an int as a unix timestamp and a datetime as its date
    if not isinstance(v, date | str) or isinstance(v, datetime) or len(str(v).strip()) != 10:
        raise ValueError("must be a date like 2027-01-01")
    return v


LocalDate = Annotated[date, BeforeValidator(_date_only), AfterValidator(check_date)]
"""A calendar date (``2027-01-01``) inside the accepted range; it means local midnight."""
