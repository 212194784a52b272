"""Revenue recognition as balanced journal entries (SPEC 5).

Accounts: receivable, cash, deferred_revenue, usage_revenue, fee_revenue,
breakage_revenue. Movements:
- commitment / top-up invoiced: Dr receivable / Cr deferred_revenue (price);
- usage paid with credits, per grant per invoice:
  Dr deferred_revenue / Cr usage_revenue, amount
  ``round_half_up(consumed x price / credits)`` to the currency's minor unit
  (2 places for USD/EUR, the SPEC's figure) - capped at what is still
  deferred for that grant so repeated half-up rounding can never recognize
  more than was paid;
- usage billed beyond credits and fees: Dr receivable / Cr usage_revenue |
  fee_revenue;
- breakage: Dr deferred_revenue / Cr breakage_revenue = price minus
  everything already recognized from the grant, so recognized + breakage =
  price to the cent;
- payment: Dr cash / Cr receivable.

Invariants: every `JournalEntry` balances (checked at construction); each
line is a debit or a credit, positive; zero movements produce no entry;
deferred revenue per grant never goes negative.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, model_validator

from models.credits import CreditGrant
from models.money import DecimalStr, NonNegativeDecimal, mul_div, round_money

__all__ = [
    "Account",
    "EntryKind",
    "JournalEntry",
    "JournalLine",
    "RevenueSummary",
    "breakage",
    "commitment_invoiced",
    "deferred_by_grant",
    "payment_received",
    "recognized_by_grant",
    "summarize",
    "top_up_invoiced",
    "usage_invoiced",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Account(StrEnum):
    RECEIVABLE = "receivable"
    CASH = "cash"
    DEFERRED_REVENUE = "deferred_revenue"
    USAGE_REVENUE = "usage_revenue"
    FEE_REVENUE = "fee_revenue"
    BREAKAGE_REVENUE = "breakage_revenue"


class EntryKind(StrEnum):
    COMMITMENT_INVOICED = "commitment_invoiced"
    TOP_UP_INVOICED = "top_up_invoiced"
    USAGE_FROM_CREDITS = "usage_from_credits"
    USAGE_BILLED = "usage_billed"
    FEES = "fees"
    BREAKAGE = "breakage"
    PAYMENT = "payment"


class JournalLine(BaseModel):
    model_config = _FROZEN
    account: Account
    debit: NonNegativeDecimal = Decimal(0)
    credit: NonNegativeDecimal = Decimal(0)

    @model_validator(mode="after")
    def _one_side(self) -> JournalLine:
        if (self.debit > 0) == (self.credit > 0):
            raise ValueError("a journal line is either a positive debit or a positive credit")
        return self


class JournalEntry(BaseModel):
    model_config = _FROZEN
    key: str  # business key, unique per movement (idempotent posting)
    kind: EntryKind
    lines: list[JournalLine]
    grant_id: str | None = None  # set for movements of a grant's deferred revenue

    @model_validator(mode="after")
    def _balanced(self) -> JournalEntry:
        debit = sum((ln.debit for ln in self.lines), Decimal(0))
        credit = sum((ln.credit for ln in self.lines), Decimal(0))
        if debit != credit or len(self.lines) < 2:
            raise ValueError(f"entry {self.key} does not balance: Dr {debit} != Cr {credit}")
        return self

    @property
    def amount(self) -> Decimal:
        return sum((ln.debit for ln in self.lines), Decimal(0))

    def net(self, account: Account) -> Decimal:
        """Credit minus debit on ``account``."""
        return sum((ln.credit - ln.debit for ln in self.lines if ln.account is account), Decimal(0))


def _entry(
    key: str,
    kind: EntryKind,
    dr: Account,
    cr: Account,
    amount: Decimal,
    grant_id: str | None = None,
) -> JournalEntry:
    return JournalEntry(
        key=key,
        kind=kind,
        grant_id=grant_id,
        lines=[JournalLine(account=dr, debit=amount), JournalLine(account=cr, credit=amount)],
    )


def commitment_invoiced(key: str, amount: Decimal, grant_id: str) -> JournalEntry:
    return _entry(
        key,
        EntryKind.COMMITMENT_INVOICED,
        Account.RECEIVABLE,
        Account.DEFERRED_REVENUE,
        amount,
        grant_id,
    )


def top_up_invoiced(key: str, amount: Decimal, grant_id: str) -> JournalEntry:
    return _entry(
        key,
        EntryKind.TOP_UP_INVOICED,
        Account.RECEIVABLE,
        Account.DEFERRED_REVENUE,
        amount,
        grant_id,
    )


def payment_received(key: str, amount: Decimal) -> JournalEntry:
    return _entry(key, EntryKind.PAYMENT, Account.CASH, Account.RECEIVABLE, amount)


def recognized_by_grant(entries: Iterable[JournalEntry]) -> dict[str, Decimal]:
    """Revenue already recognized out of each grant's deferred balance."""
    out: dict[str, Decimal] = {}
    for e in entries:
        if e.grant_id is not None and e.kind in (EntryKind.USAGE_FROM_CREDITS, EntryKind.BREAKAGE):
            out[e.grant_id] = out.get(e.grant_id, Decimal(0)) - e.net(Account.DEFERRED_REVENUE)
    return out


def deferred_by_grant(entries: Iterable[JournalEntry]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for e in entries:
        if e.grant_id is not None:
            out[e.grant_id] = out.get(e.grant_id, Decimal(0)) + e.net(Account.DEFERRED_REVENUE)
    return out


def usage_invoiced(
    invoice_key: str,
    *,
    currency: str,
    usage_billed: Decimal,
    fees: Decimal,
    consumption: Sequence[tuple[CreditGrant, Decimal]],
    recognized_so_far: Mapping[str, Decimal],
    exhausted: Collection[str] = (),
) -> list[JournalEntry]:
    """Entries for one usage invoice.

    ``consumption``: credits consumed per grant on this invoice;
    ``recognized_so_far``: per grant, revenue recognized before (see
    `recognized_by_grant`), used for the never-over-recognize cap;
    ``exhausted``: grants this invoice used up entirely. Their last
    recognition takes everything still deferred, so the cents that per-invoice
    rounding left behind are recognized as usage, not stranded (a used-up
    grant never expires, so breakage would never collect them).
    """
    out: list[JournalEntry] = []
    for grant, consumed in consumption:
        still_deferred = grant.price - recognized_so_far.get(grant.id, Decimal(0))
        amount = (
            still_deferred
            if grant.id in exhausted
            else min(
                round_money(mul_div(consumed, grant.price, grant.credits), currency),
                still_deferred,
            )
        )
        if amount > 0:
            out.append(
                _entry(
                    f"{invoice_key}:credits:{grant.id}",
                    EntryKind.USAGE_FROM_CREDITS,
                    Account.DEFERRED_REVENUE,
                    Account.USAGE_REVENUE,
                    amount,
                    grant.id,
                )
            )
    if usage_billed > 0:
        out.append(
            _entry(
                f"{invoice_key}:usage",
                EntryKind.USAGE_BILLED,
                Account.RECEIVABLE,
                Account.USAGE_REVENUE,
                usage_billed,
            )
        )
    if fees > 0:
        out.append(
            _entry(
                f"{invoice_key}:fees", EntryKind.FEES, Account.RECEIVABLE, Account.FEE_REVENUE, fees
            )
        )
    return out


def breakage(grant: CreditGrant, recognized_so_far: Decimal) -> JournalEntry | None:
    """Recognize what is still deferred for ``grant`` (None if nothing is)."""
    amount = grant.price - recognized_so_far
    if amount <= 0:
        return None
    return _entry(
        f"breakage:{grant.id}",
        EntryKind.BREAKAGE,
        Account.DEFERRED_REVENUE,
        Account.BREAKAGE_REVENUE,
        amount,
        grant.id,
    )


class RevenueSummary(BaseModel):
    """The ``revenue`` object of the simulation output."""

    model_config = _FROZEN
    usage_from_credits: DecimalStr
    usage_billed: DecimalStr
    fees: DecimalStr
    breakage: DecimalStr
    total: DecimalStr
    deferred_balance: DecimalStr


def summarize(entries: Iterable[JournalEntry], currency: str = "USD") -> RevenueSummary:
    entries = list(entries)

    def by_kind(kind: EntryKind) -> Decimal:
        return sum((e.amount for e in entries if e.kind is kind), Decimal(0))

    ufc = by_kind(EntryKind.USAGE_FROM_CREDITS)
    billed = by_kind(EntryKind.USAGE_BILLED)
    fees = by_kind(EntryKind.FEES)
    brk = by_kind(EntryKind.BREAKAGE)
    deferred = sum((e.net(Account.DEFERRED_REVENUE) for e in entries), Decimal(0))

    def r(x: Decimal) -> Decimal:
        return round_money(x, currency)

    return RevenueSummary(
        usage_from_credits=r(ufc),
        usage_billed=r(billed),
        fees=r(fees),
        breakage=r(brk),
        total=r(ufc + billed + fees + brk),
        deferred_balance=r(deferred),
    )
