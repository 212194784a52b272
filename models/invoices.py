"""Invoice documents and their lines (SPEC 6 and 9).

Invariants (checked when an `InvoiceDocument` is built):
- ``subtotal`` = sum of the line amounts (each line already rounded);
- ``total`` = ``subtotal - credits_applied`` and is never negative;
- ``credits_applied`` never exceeds the usage-kind lines (usage, late_usage,
  minimum, maximum): credits pay usage, never fees, true-ups, commitments
  or top-ups;
- a ``maximum`` line is negative (it lowers a meter to its cap), a
  ``minimum`` line positive on the period's own invoice; on a later invoice
  (``period_start`` set) either may be negative: late usage filling a
  minimum or passing a cap (SPEC 12, `models.spend_limits`);
- ``usage_billed`` (usage revenue when invoiced, SPEC 5) = usage-kind lines
  - credits + ``true_up`` lines;
- every amount is quantized to the currency's minor unit.
Keys: ``commitment:<date>``, ``usage:<period start>``, ``top_up:<date>``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.errors import BillowValidationError, Problem
from models.money import CurrencyCode, DecimalStr, round_money

__all__ = [
    "USAGE_KINDS",
    "CommitmentLine",
    "FeeLine",
    "InvoiceDocument",
    "InvoiceKind",
    "InvoiceLine",
    "InvoicePeriod",
    "InvoiceStatus",
    "LateUsageLine",
    "LimitLine",
    "Line",
    "MaximumLine",
    "MinimumLine",
    "TopUpLine",
    "TrueUpLine",
    "UsageLine",
    "build_invoice",
    "due_on",
    "invoice_key_commitment",
    "invoice_key_top_up",
    "invoice_key_usage",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class InvoiceKind(StrEnum):
    COMMITMENT = "commitment"
    USAGE = "usage"
    TOP_UP = "top_up"


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    OVERDUE = "overdue"
    VOID = "void"
    NEEDS_ATTENTION = "needs_attention"


class UsageLine(BaseModel):
    model_config = _FROZEN
    kind: Literal["usage"] = "usage"
    meter: str
    dimensions: dict[str, str]
    quantity: DecimalStr
    unit_price: DecimalStr | None  # None for tiered and package prices
    amount: DecimalStr
    # set only when the period was split (override effective/until inside it)
    part_start: datetime | None = None
    part_end: datetime | None = None


class LateUsageLine(BaseModel):
    model_config = _FROZEN
    kind: Literal["late_usage"] = "late_usage"
    meter: str
    dimensions: dict[str, str]
    quantity: DecimalStr
    unit_price: DecimalStr | None
    amount: DecimalStr
    period_start: date  # the period the usage belongs to
    period_end: date
    part_start: datetime | None = None
    part_end: datetime | None = None


class MinimumLine(BaseModel):
    """Raises a meter's lines of a period to its ``minimum_amount``."""

    model_config = _FROZEN
    kind: Literal["minimum"] = "minimum"
    meter: str
    amount: DecimalStr
    # Set on a later invoice's adjustment for late usage: the period it belongs to.
    period_start: date | None = None
    period_end: date | None = None


class MaximumLine(BaseModel):
    """Lowers a meter's lines of a period to its ``maximum_amount`` (negative)."""

    model_config = _FROZEN
    kind: Literal["maximum"] = "maximum"
    meter: str
    amount: DecimalStr
    period_start: date | None = None
    period_end: date | None = None


class TrueUpLine(BaseModel):
    """The shortfall of spend under the contract's minimum commitment."""

    model_config = _FROZEN
    kind: Literal["true_up"] = "true_up"
    amount: DecimalStr


class FeeLine(BaseModel):
    model_config = _FROZEN
    kind: Literal["fee"] = "fee"
    fee: str
    amount: DecimalStr


class CommitmentLine(BaseModel):
    model_config = _FROZEN
    kind: Literal["commitment"] = "commitment"
    amount: DecimalStr


class TopUpLine(BaseModel):
    model_config = _FROZEN
    kind: Literal["top_up"] = "top_up"
    amount: DecimalStr


Line = (
    UsageLine | LateUsageLine | MinimumLine | MaximumLine | FeeLine | TrueUpLine
    | CommitmentLine | TopUpLine
)
InvoiceLine = Annotated[Line, Field(discriminator="kind")]
LimitLine = Annotated[MinimumLine | MaximumLine, Field(discriminator="kind")]
# The lines credits may pay and that count as spend (SPEC 12).
USAGE_KINDS = (UsageLine, LateUsageLine, MinimumLine, MaximumLine)


class InvoicePeriod(BaseModel):
    model_config = _FROZEN
    start: date
    end: date  # exclusive


class InvoiceDocument(BaseModel):
    model_config = _FROZEN
    key: str
    number: str | None = None  # assigned at finalization
    kind: InvoiceKind
    currency: CurrencyCode
    period: InvoicePeriod
    issued_on: date | None = None
    due_on: date | None = None
    lines: list[InvoiceLine]
    subtotal: DecimalStr
    credits_applied: DecimalStr
    total: DecimalStr
    status: InvoiceStatus = InvoiceStatus.DRAFT
    paid_on: date | None = None

    @property
    def usage_amount(self) -> Decimal:
        """Sum of the lines credits may pay (usage, late usage, minimum, maximum)."""
        return sum((ln.amount for ln in self.lines if isinstance(ln, USAGE_KINDS)), Decimal(0))

    @property
    def true_up_amount(self) -> Decimal:
        """Sum of the true-up lines (never paid by credits)."""
        return sum((ln.amount for ln in self.lines if isinstance(ln, TrueUpLine)), Decimal(0))

    @property
    def fee_amount(self) -> Decimal:
        """Sum of the recurring-fee lines (never paid by credits)."""
        return sum((ln.amount for ln in self.lines if isinstance(ln, FeeLine)), Decimal(0))

    @property
    def usage_billed(self) -> Decimal:
        """Usage beyond what credits paid, and true-ups: billed usage revenue
        (SPEC.md sections 5 and 12)."""
        return self.usage_amount - self.credits_applied + self.true_up_amount

    @model_validator(mode="after")
    def _sums(self) -> InvoiceDocument:
        problems: list[Problem] = []
        for i, ln in enumerate(self.lines):
            if round_money(ln.amount, self.currency) != ln.amount:
                problems.append((f"lines[{i}].amount", f"not rounded to {self.currency}"))
        line_sum = sum((ln.amount for ln in self.lines), Decimal(0))
        if line_sum != self.subtotal:
            problems.append(("subtotal", f"{self.subtotal} != sum of lines {line_sum}"))
        if self.credits_applied < 0 or self.credits_applied > self.usage_amount:
            problems.append(
                ("credits_applied", f"must be between 0 and the usage lines {self.usage_amount}")
            )
        if self.total != self.subtotal - self.credits_applied:
            problems.append(("total", "must equal subtotal - credits_applied"))
        if problems:
            raise BillowValidationError(problems)
        return self


def invoice_key_usage(period_start: date) -> str:
    return f"usage:{period_start.isoformat()}"


def invoice_key_commitment(starts_on: date) -> str:
    return f"commitment:{starts_on.isoformat()}"


def invoice_key_top_up(effective: date) -> str:
    return f"top_up:{effective.isoformat()}"


def due_on(issued_on: date, terms_days: int) -> date:
    """Net-N: ``issued_on + N`` days (N >= 0)."""
    if terms_days < 0:
        raise ValueError("payment terms must not be negative")
    return issued_on + timedelta(days=terms_days)


def build_invoice(
    *,
    key: str,
    kind: InvoiceKind,
    currency: str,
    period: InvoicePeriod,
    lines: list[Line],
    credits_applied: Decimal = Decimal(0),
    issued_on: date | None = None,
    payment_terms_days: int | None = None,
    status: InvoiceStatus = InvoiceStatus.DRAFT,
    number: str | None = None,
) -> InvoiceDocument:
    """An invoice with subtotal/total computed from rounded lines.

    With ``issued_on`` and ``payment_terms_days`` the due date is set too.
    """
    subtotal = round_money(sum((ln.amount for ln in lines), Decimal(0)), currency)
    applied = round_money(credits_applied, currency)
    return InvoiceDocument(
        key=key,
        number=number,
        kind=kind,
        currency=currency,
        period=period,
        issued_on=issued_on,
        due_on=(
            due_on(issued_on, payment_terms_days)
            if issued_on is not None and payment_terms_days is not None
            else None
        ),
        lines=list(lines),
        subtotal=subtotal,
        credits_applied=applied,
        total=subtotal - applied,
        status=status,
    )


# --- builders for the three invoice kinds -------------------------------------------------
# Imported here (not at the top) only to keep the line types importable on their own.
from models.contract import ContractTerms  # noqa: E402
from models.periods import Period  # noqa: E402


def commitment_invoice(terms: ContractTerms, issued_on: date | None = None) -> InvoiceDocument:
    """The term-start commitment invoice: period = the term as known at issue."""
    if terms.commitment is None:
        raise ValueError("contract has no commitment")
    issued = issued_on or terms.starts_on
    return build_invoice(
        key=invoice_key_commitment(terms.starts_on),
        kind=InvoiceKind.COMMITMENT,
        currency=terms.currency,
        period=InvoicePeriod(start=terms.starts_on, end=terms.term_end),
        lines=[CommitmentLine(amount=round_money(terms.commitment.amount, terms.currency))],
        issued_on=issued,
        payment_terms_days=terms.payment_terms_days,
    )


def top_up_invoice(
    terms: ContractTerms, *, effective: date, expires: date, price: Decimal
) -> InvoiceDocument:
    """Invoice for a paid ``grant_credits``: dated its effective date, period
    effective -> expiry, under the payment terms in force (``terms``)."""
    return build_invoice(
        key=invoice_key_top_up(effective),
        kind=InvoiceKind.TOP_UP,
        currency=terms.currency,
        period=InvoicePeriod(start=effective, end=expires),
        lines=[TopUpLine(amount=round_money(price, terms.currency))],
        issued_on=effective,
        payment_terms_days=terms.payment_terms_days,
    )


def usage_invoice(
    terms: ContractTerms,
    period: Period,
    lines: list[Line],
    *,
    credits_applied: Decimal = Decimal(0),
    issued_on: date | None = None,
) -> InvoiceDocument:
    """A period's usage invoice; ``issued_on`` defaults to the boundary date."""
    issued = issued_on or period.end_date
    return build_invoice(
        key=invoice_key_usage(period.start_date),
        kind=InvoiceKind.USAGE,
        currency=terms.currency,
        period=InvoicePeriod(start=period.start_date, end=period.end_date),
        lines=lines,
        credits_applied=credits_applied,
        issued_on=issued,
        payment_terms_days=terms.payment_terms_days,
    )


__all__ += ["commitment_invoice", "top_up_invoice", "usage_invoice"]
