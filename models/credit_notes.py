"""Credit note math (SPEC.md section 11): pure, no I/O.

A credit note names a finalized invoice's lines by position (each with an
amount, at most what is still uncredited on it) or gives one amount for the
whole invoice, spread over its positive lines in order. Its total is then
allocated, in this order:

1. of its usage-kind lines (usage, late_usage, minimum, maximum), the share
   the invoice paid with credits, ``round_half_up(credited usage x
   credits_applied / usage-kind lines)``, at most what earlier notes have not
   returned, goes back to the grants it came from (the last burned first),
   with the revenue it recognized going back to deferred revenue;
2. the rest reduces the invoice's outstanding amount;
3. what is left is refunded (``remainder: refund``) or kept as customer
   credit (``remainder: credit``).

Invariants (checked by the table test in tests/models/test_credit_notes.py):
- credits_returned + outstanding_reduced + refunded + customer_credit = total;
- a line is never credited beyond its amount; usage-kind lines together never
  beyond their net total; credits returned never beyond credits_applied;
- the note's lines, total and credits returned are in whole minor units of
  the currency; what reduces the outstanding amount never exceeds it, so it
  and the remainder carry a payment's extra decimals when there are any;
- the journal entry balances and reverses revenue in the accounts that
  recognized it: usage revenue for usage-kind lines (from each grant's
  deferred revenue for the share paid with credits), fee revenue for fees,
  the grant's deferred revenue for a commitment or top-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from models.errors import BillowValidationError, Problem
from models.money import minor_units, mul_div, round_money
from models.revenue import Account, EntryKind, JournalEntry, JournalLine

__all__ = [
    "CREDITABLE_STATUSES",
    "GRANT_KINDS",
    "USAGE_KINDS",
    "Consumption",
    "CreditNotePlan",
    "InvoiceForCredit",
    "InvoiceLineState",
    "NoteLine",
    "credit_note_entry",
    "credits_removed",
    "plan_credit_note",
    "return_to_grants",
    "reversed_recognition",
]

USAGE_KINDS = frozenset({"usage", "late_usage", "minimum", "maximum"})
GRANT_KINDS = frozenset({"commitment", "top_up"})
CREDITABLE_STATUSES = frozenset({"open", "overdue", "paid"})
_ZERO = Decimal(0)


@dataclass(frozen=True)
class InvoiceLineState:
    position: int  # 1-based
    kind: str
    amount: Decimal
    credited: Decimal = _ZERO  # by earlier notes

    @property
    def uncredited(self) -> Decimal:
        return max(self.amount - self.credited, _ZERO)


@dataclass(frozen=True)
class InvoiceForCredit:
    key: str
    kind: str  # usage | commitment | top_up
    status: str
    currency: str
    lines: Sequence[InvoiceLineState]
    credits_applied: Decimal
    credits_returned: Decimal  # by earlier notes
    outstanding: Decimal

    @property
    def usage_total(self) -> Decimal:
        """The usage-kind lines' net total (a maximum line is negative)."""
        return sum((ln.amount for ln in self.lines if ln.kind in USAGE_KINDS), _ZERO)

    @property
    def usage_credited(self) -> Decimal:
        return sum((ln.credited for ln in self.lines if ln.kind in USAGE_KINDS), _ZERO)


@dataclass(frozen=True)
class NoteLine:
    position: int  # 1-based position on the invoice
    kind: str
    amount: Decimal


@dataclass(frozen=True)
class CreditNotePlan:
    lines: tuple[NoteLine, ...]
    total: Decimal
    usage_credited: Decimal
    credits_returned: Decimal
    outstanding_reduced: Decimal
    refunded: Decimal
    customer_credit: Decimal

    @property
    def clears_invoice(self) -> bool:
        """True when the note takes off what was still owed (and something was)."""
        return self.outstanding_reduced > 0

    def amount_of(self, kinds: frozenset[str]) -> Decimal:
        return sum((ln.amount for ln in self.lines if ln.kind in kinds), _ZERO)


def _whole_units(amount: Decimal, currency: str) -> bool:
    return round_money(amount, currency) == amount


def _requested_lines(
    invoice: InvoiceForCredit, lines: Sequence[tuple[int, Decimal]]
) -> tuple[list[NoteLine], list[Problem]]:
    by_position = {ln.position: ln for ln in invoice.lines}
    out: list[NoteLine] = []
    problems: list[Problem] = []
    places = minor_units(invoice.currency)
    for i, (position, amount) in enumerate(lines):
        line = by_position.get(position)
        if line is None:
            problems.append((f"lines[{i}].line",
                             f"{invoice.key} has no line {position} "
                             f"(it has {len(invoice.lines)})"))
            continue
        if not _whole_units(amount, invoice.currency):
            problems.append((f"lines[{i}].amount",
                             f"{amount} is not in whole minor units of {invoice.currency} "
                             f"({places} decimals)"))
            continue
        if amount > line.uncredited:
            problems.append((f"lines[{i}].amount",
                             f"{amount} exceeds what is uncredited on line {position} "
                             f"({line.uncredited})"))
            continue
        out.append(NoteLine(position=position, kind=line.kind, amount=amount))
    return out, problems


def _spread(invoice: InvoiceForCredit, amount: Decimal) -> tuple[list[NoteLine], list[Problem]]:
    """One amount for the whole invoice, over its positive lines in order."""
    if not _whole_units(amount, invoice.currency):
        return [], [("amount", f"{amount} is not in whole minor units of {invoice.currency} "
                               f"({minor_units(invoice.currency)} decimals)")]
    usage_room = max(invoice.usage_total - invoice.usage_credited, _ZERO)
    left = amount
    out: list[NoteLine] = []
    for ln in invoice.lines:
        if left <= 0:
            break
        room = ln.uncredited if ln.amount > 0 else _ZERO
        if ln.kind in USAGE_KINDS:
            room = min(room, usage_room)
        take = min(room, left)
        if take <= 0:
            continue
        if ln.kind in USAGE_KINDS:
            usage_room -= take
        out.append(NoteLine(position=ln.position, kind=ln.kind, amount=take))
        left -= take
    if left > 0:
        creditable = amount - left
        return [], [("amount", f"{amount} exceeds what is uncredited on {invoice.key} "
                               f"({creditable})")]
    return out, []


def plan_credit_note(
    invoice: InvoiceForCredit,
    *,
    lines: Sequence[tuple[int, Decimal]] | None = None,
    amount: Decimal | None = None,
    remainder: str = "refund",
) -> CreditNotePlan:
    """The note's lines and allocation, or BillowValidationError naming the field."""
    if invoice.status not in CREDITABLE_STATUSES:
        raise BillowValidationError([("invoice", f"{invoice.key} is {invoice.status}: only "
                                                 "open, overdue or paid invoices are credited")])
    if (lines is None) == (amount is None):
        raise BillowValidationError([("amount", "give either lines or amount")])
    if lines is not None:
        note_lines, problems = _requested_lines(invoice, lines)
    else:
        assert amount is not None
        note_lines, problems = _spread(invoice, amount)
    if problems:
        raise BillowValidationError(problems)
    usage = sum((ln.amount for ln in note_lines if ln.kind in USAGE_KINDS), _ZERO)
    if usage > 0 and invoice.usage_credited + usage > invoice.usage_total:
        raise BillowValidationError([(
            "lines", f"usage lines together can be credited at most their net total "
                     f"{invoice.usage_total} ({invoice.usage_credited} credited before)")])
    total = sum((ln.amount for ln in note_lines), _ZERO)
    returned = _ZERO
    if usage > 0 and invoice.usage_total > 0 and invoice.credits_applied > 0:
        share = round_money(mul_div(usage, invoice.credits_applied, invoice.usage_total),
                            invoice.currency)
        returned = min(share, invoice.credits_applied - invoice.credits_returned)
        returned = max(returned, _ZERO)
    def money(x: Decimal) -> Decimal:  # zeros too carry the currency's scale: "0.00"
        return round_money(x, invoice.currency)

    def exact(x: Decimal) -> Decimal:
        """``x`` at the currency's scale when that keeps it exact, else as it is."""
        return money(x) if money(x) == x else x

    total, returned = money(total), money(returned)
    rest = total - returned
    # Never more than is owed, to the last decimal: a payment may carry more
    # decimals than the currency (SPEC.md section 6), and rounding what is owed
    # up would leave the invoice owing less than nothing.
    reduced = exact(min(rest, max(invoice.outstanding, _ZERO)))
    left = exact(rest - reduced)
    return CreditNotePlan(
        lines=tuple(note_lines),
        total=total,
        usage_credited=money(usage),
        credits_returned=returned,
        outstanding_reduced=reduced,
        refunded=left if remainder == "refund" else money(_ZERO),
        customer_credit=left if remainder == "credit" else money(_ZERO),
    )


# --- credits back to grants -------------------------------------------------------------


@dataclass(frozen=True)
class Consumption:
    """What an invoice consumed from one grant, and what corrections returned of it."""

    grant_id: str
    consumed: Decimal
    returned: Decimal = _ZERO

    @property
    def unreturned(self) -> Decimal:
        return self.consumed - self.returned


def return_to_grants(
    consumptions: Sequence[Consumption], amount: Decimal
) -> list[tuple[str, Decimal]]:
    """Give ``amount`` credits back, the last burned grant first (``consumptions``
    are in burn order). Never more than a grant's unreturned consumption."""
    left = amount
    out: list[tuple[str, Decimal]] = []
    for c in reversed(consumptions):
        if left <= 0:
            break
        take = min(left, c.unreturned)
        if take > 0:
            out.append((c.grant_id, take))
            left -= take
    if left > 0:
        raise ValueError(f"cannot return {amount} credits: only {amount - left} were consumed")
    return out


def reversed_recognition(
    returned: Decimal, *, unreturned: Decimal, recognized: Decimal, price: Decimal,
    credits: Decimal, currency: str,
) -> Decimal:
    """Revenue that goes back to deferred revenue with ``returned`` credits.

    ``recognized``: what the invoice recognized from the grant and no earlier
    correction reversed; ``unreturned``: its consumption not returned yet.
    Returning all of it reverses all of it (no rounding residue), else
    ``round_half_up(returned x price / credits)``, capped.
    """
    if returned >= unreturned:
        return recognized
    if credits <= 0:
        return _ZERO
    return min(round_money(mul_div(returned, price, credits), currency), recognized)


def credits_removed(credited: Decimal, *, credits: Decimal, price: Decimal,
                    currency: str) -> Decimal:
    """Unused credits a note on a commitment or top-up invoice takes from its grant."""
    if price <= 0:
        return _ZERO
    return round_money(mul_div(credited, credits, price), currency)


# --- the journal entry --------------------------------------------------------------------


def credit_note_entry(
    key: str,
    plan: CreditNotePlan,
    *,
    reversals: Sequence[tuple[str, Decimal]] = (),
    invoice_grant: str | None = None,
    new_grant: str | None = None,
) -> JournalEntry | None:
    """The note's balanced entry (None when it moves no money: promotional credits only).

    ``reversals``: per grant, the revenue its returned credits recognized;
    ``invoice_grant``: the grant a commitment or top-up invoice paid for;
    ``new_grant``: the grant that keeps the remainder as customer credit.
    """
    lines: list[JournalLine] = []
    for gid, amount in reversals:
        if amount > 0:
            lines.append(JournalLine(account=Account.USAGE_REVENUE, debit=amount, grant_id=gid))
            lines.append(JournalLine(account=Account.DEFERRED_REVENUE, credit=amount,
                                     grant_id=gid))
    billed_usage = plan.usage_credited - plan.credits_returned
    fees = plan.amount_of(frozenset({"fee"}))
    granted = plan.amount_of(GRANT_KINDS)
    other = plan.total - plan.usage_credited - fees - granted  # true_up and the like
    if billed_usage + other > 0:
        lines.append(JournalLine(account=Account.USAGE_REVENUE, debit=billed_usage + other))
    if fees > 0:
        lines.append(JournalLine(account=Account.FEE_REVENUE, debit=fees))
    if granted > 0:
        lines.append(JournalLine(account=Account.DEFERRED_REVENUE, debit=granted,
                                 grant_id=invoice_grant))
    receivable = plan.outstanding_reduced + plan.refunded
    if receivable > 0:
        lines.append(JournalLine(account=Account.RECEIVABLE, credit=receivable))
    if plan.customer_credit > 0:
        lines.append(JournalLine(account=Account.DEFERRED_REVENUE, credit=plan.customer_credit,
                                 grant_id=new_grant))
    if not lines:
        return None
    return JournalEntry(key=key, kind=EntryKind.CREDIT_NOTE, lines=lines)
