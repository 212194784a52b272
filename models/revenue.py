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
- payment: Dr cash / Cr receivable;
- corrections (SPEC.md section 11): a void reverses every line its invoice
  posted in one entry; a credit note debits the revenue accounts that
  recognized the credited lines (and deferred revenue, for the share paid
  with credits or a commitment's price) against receivable, or deferred
  revenue of a new grant for customer credit; a refund is Dr receivable /
  Cr cash; re-expiring returned credits is breakage again.

A line may name the grant whose deferred revenue it moves (``grant_id``);
otherwise it belongs to its entry's grant. Revenue recognized from a grant is
the net credit of the revenue accounts on its lines, so a reversal counts
against it and a price reduction (a commitment's credit note) does not.

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
    "rebreakage",
    "recognized_by_grant",
    "refund_paid",
    "reversal",
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
    INVOICE_VOIDED = "invoice_voided"
    CREDIT_NOTE = "credit_note"
    REFUND = "refund"


class JournalLine(BaseModel):
    model_config = _FROZEN
    account: Account
    debit: NonNegativeDecimal = Decimal(0)
    credit: NonNegativeDecimal = Decimal(0)
    grant_id: str | None = None  # set when the entry moves several grants' balances

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


_REVENUE = frozenset({Account.USAGE_REVENUE, Account.FEE_REVENUE, Account.BREAKAGE_REVENUE})


def _grant_lines(entries: Iterable[JournalEntry]) -> Iterable[tuple[str, JournalLine]]:
    """Every line that belongs to a grant, with that grant's id."""
    for e in entries:
        for ln in e.lines:
            gid = ln.grant_id or e.grant_id
            if gid is not None:
                yield gid, ln


def recognized_by_grant(entries: Iterable[JournalEntry]) -> dict[str, Decimal]:
    """Revenue recognized out of each grant's deferred balance, net of reversals."""
    out: dict[str, Decimal] = {}
    for gid, ln in _grant_lines(entries):
        if ln.account in _REVENUE:
            out[gid] = out.get(gid, Decimal(0)) + ln.credit - ln.debit
    return out


def deferred_by_grant(entries: Iterable[JournalEntry]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for gid, ln in _grant_lines(entries):
        if ln.account is Account.DEFERRED_REVENUE:
            out[gid] = out.get(gid, Decimal(0)) + ln.credit - ln.debit
    return out


def reversal(key: str, entries: Iterable[JournalEntry]) -> JournalEntry | None:
    """One entry that reverses every line of ``entries`` (a void, SPEC.md section 11).

    Each line keeps the grant it belonged to, so the deferred revenue of
    every grant the invoice recognized from goes back to that grant.
    """
    lines = [
        JournalLine(account=ln.account, debit=ln.credit, credit=ln.debit,
                    grant_id=ln.grant_id or e.grant_id)
        for e in entries
        for ln in e.lines
    ]
    if not lines:
        return None
    return JournalEntry(key=key, kind=EntryKind.INVOICE_VOIDED, lines=lines)


def refund_paid(key: str, amount: Decimal) -> JournalEntry:
    """Money paid back to the customer: what the receivable owed them is settled."""
    return _entry(key, EntryKind.REFUND, Account.RECEIVABLE, Account.CASH, amount)


def rebreakage(key: str, grant_id: str, amount: Decimal) -> JournalEntry:
    """Deferred revenue of credits returned to an expired grant: breakage again."""
    return _entry(key, EntryKind.BREAKAGE, Account.DEFERRED_REVENUE, Account.BREAKAGE_REVENUE,
                  amount, grant_id)


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
    """Revenue by account, net of corrections: usage revenue on a grant's lines
    came from credits, the rest was billed."""
    ufc = billed = fees = brk = deferred = Decimal(0)
    for e in entries:
        for ln in e.lines:
            net = ln.credit - ln.debit
            if ln.account is Account.USAGE_REVENUE:
                if (ln.grant_id or e.grant_id) is not None:
                    ufc += net
                else:
                    billed += net
            elif ln.account is Account.FEE_REVENUE:
                fees += net
            elif ln.account is Account.BREAKAGE_REVENUE:
                brk += net
            elif ln.account is Account.DEFERRED_REVENUE:
                deferred += net

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
