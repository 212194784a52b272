"""What an invoice document says, as text ready to lay out (SPEC.md section 13).

`invoice_view` turns the invoice exactly as the API returns it (the
``InvoiceDetail`` JSON: SPEC.md section 9 plus ``amount_paid`` and
``outstanding``), the contract's terms (meter and fee names, the customer,
the timezone) and the seller into an `InvoiceView`: every string the HTML
template and the PDF print. Both renderers show this view and nothing else,
so the two documents never disagree with each other or with the API.

Invariants:
- Pure: no I/O, no clock. The same inputs give the same view, which is what
  makes the same invoice render to the same bytes.
- Every amount, quantity and date goes through `models.formatting` (Babel).
- Lines are grouped by meter, in the order the invoice lists them; a
  late-usage line stays in its meter's group and names the period it belongs
  to. Fees, prepaid credits and other lines follow, each kind in one group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from models.contract import ContractTerms
from models.formatting import DEFAULT_LOCALE, day, money, quantity, unit_price
from models.periods import local_date

__all__ = ["DocGroup", "DocLine", "InvoiceView", "Party", "Seller", "invoice_view"]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Seller(BaseModel):
    """Who issues the invoices (settings: ``BILLOW_SELLER_*``)."""

    model_config = _FROZEN
    name: str = "billow"
    address: str = ""  # lines separated by newlines
    tax_id: str = ""
    email: str = ""
    payment_instructions: str = ""  # lines separated by newlines


class Party(BaseModel):
    model_config = _FROZEN
    name: str
    lines: list[str]  # address lines, e-mail, tax id: printed under the name


class DocLine(BaseModel):
    model_config = _FROZEN
    description: str
    detail: str  # dimensions, the late-usage period, the split part ("" when none)
    quantity: str
    unit_price: str
    amount: str


class DocGroup(BaseModel):
    model_config = _FROZEN
    title: str
    lines: list[DocLine]
    subtotal: str


class InvoiceView(BaseModel):
    model_config = _FROZEN
    title: str  # "Invoice", "Draft invoice"
    number: str  # "INV-000002"; "Draft" for a preview
    stamp: str | None  # PAID, VOID, OVERDUE, DRAFT
    seller: Party
    customer: Party
    facts: list[tuple[str, str]]  # number, dates, period, contract
    groups: list[DocGroup]
    totals: list[tuple[str, str]]
    amount_due: str
    due_line: str  # "Due Mar 1, 2027" / "Paid Feb 10, 2027" / ""
    payment_instructions: list[str]
    footer: str
    locale: str
    amount_label: str = "Amount due"  # a credit note's: "Refunded"
    bill_to_label: str = "Bill to"


_STAMPS = {"paid": "PAID", "void": "VOID", "overdue": "OVERDUE", "draft": "DRAFT"}
_KIND_TITLES = {
    "fee": "Recurring fees",
    "commitment": "Prepaid credits",
    "top_up": "Prepaid credits",
    "true_up": "Minimum commitment",
}
_KIND_NAMES = {
    "commitment": "Prepaid commitment",
    "top_up": "Credit top-up",
    "true_up": "Minimum commitment true-up",
    "minimum": "Minimum spend for the period",
    "maximum": "Spend limit for the period",
    "late_usage": "Late usage",
}


def _lines_of(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _dims(dimensions: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k}: {v}" for k, v in (dimensions or {}).items())


def _d(value: str | date | None, locale: str) -> str:
    if value is None:
        return ""
    return day(date.fromisoformat(value) if isinstance(value, str) else value, locale)


def _part(line: Mapping[str, Any], tz: str, locale: str) -> str:
    """The split part of a period a line was rated in (an override took effect inside it)."""
    start, end = line.get("part_start"), line.get("part_end")
    if not start or not end:
        return ""
    first = local_date(datetime.fromisoformat(start), tz)
    last = local_date(datetime.fromisoformat(end), tz)
    return f"rated {day(first, locale)} – {day(last, locale)}"


def _line(line: Mapping[str, Any], terms: ContractTerms, currency: str, locale: str) -> DocLine:
    kind = str(line["kind"])
    q = line.get("quantity")
    price = line.get("unit_price")
    details = []
    dims = _dims(line.get("dimensions"))
    if dims and kind != "usage":
        details.append(dims)
    if kind == "late_usage":
        details.append(f"usage of the period {_d(line.get('period_start'), locale)} – "
                       f"{_d(line.get('period_end'), locale)}")
    if part := _part(line, terms.timezone, locale):
        details.append(part)
    if kind == "fee":
        description = _fee_name(terms, str(line.get("fee")))
    elif kind == "usage":
        description = dims or "Usage"
    else:
        description = _KIND_NAMES.get(kind, kind.replace("_", " ").capitalize())
    return DocLine(
        description=description,
        detail="; ".join(details),
        quantity="" if q is None else quantity(Decimal(q), locale),
        unit_price="" if price is None else unit_price(Decimal(price), currency, locale),
        amount=money(Decimal(line["amount"]), currency, locale),
    )


def _fee_name(terms: ContractTerms, key: str) -> str:
    return next((f.name for f in terms.recurring_fees if f.key == key), key)


def _meter_name(terms: ContractTerms, key: str) -> str:
    return next((m.name for m in terms.meters if m.key == key), key)


def _groups(lines: Sequence[Mapping[str, Any]], terms: ContractTerms, currency: str,
            locale: str) -> list[DocGroup]:
    """Meters first, in the order the invoice names them; then the other kinds."""
    order: list[str] = []
    members: dict[str, list[Mapping[str, Any]]] = {}
    for ln in lines:
        if ln.get("meter"):
            group = f"meter:{ln['meter']}"
        else:
            group = "kind:" + _KIND_TITLES.get(str(ln["kind"]), "Other charges")
        if group not in members:
            order.append(group)
            members[group] = []
        members[group].append(ln)
    order.sort(key=lambda g: not g.startswith("meter:"))  # stable: meters, then the rest
    out: list[DocGroup] = []
    for group in order:
        kind, _, name = group.partition(":")
        title = _meter_name(terms, name) if kind == "meter" else name
        total = sum((Decimal(ln["amount"]) for ln in members[group]), Decimal(0))
        out.append(DocGroup(
            title=title,
            lines=[_line(ln, terms, currency, locale) for ln in members[group]],
            subtotal=money(total, currency, locale),
        ))
    return out


def _customer(terms: ContractTerms) -> Party:
    c = terms.customer
    lines = _lines_of(c.address or "")
    if c.billing_email:
        lines.append(c.billing_email)
    if c.tax_id:
        lines.append(f"Tax ID: {c.tax_id}")
    return Party(name=c.name, lines=lines)


def _seller(seller: Seller) -> Party:
    lines = _lines_of(seller.address)
    if seller.email:
        lines.append(seller.email)
    if seller.tax_id:
        lines.append(f"Tax ID: {seller.tax_id}")
    return Party(name=seller.name, lines=lines)


def invoice_view(
    invoice: Mapping[str, Any],
    terms: ContractTerms,
    seller: Seller,
    locale: str = DEFAULT_LOCALE,
) -> InvoiceView:
    """The document of ``invoice`` (the API's JSON for it; a draft has no number)."""
    currency = str(invoice["currency"])
    status = str(invoice["status"])
    draft = status == "draft" or not invoice.get("number")
    number = str(invoice.get("number") or "Draft")
    period = invoice["period"]

    def m(field: str) -> str:
        return money(Decimal(invoice[field]), currency, locale)

    facts = [("Invoice number", number)]
    if invoice.get("issued_on"):
        facts.append(("Issued", _d(invoice["issued_on"], locale)))
    if invoice.get("due_on"):
        facts.append(("Due", _d(invoice["due_on"], locale)))
    facts += [
        ("Period", f"{_d(period['start'], locale)} – {_d(period['end'], locale)}"),
        ("Contract", str(invoice.get("contract_id") or terms.contract_id)),
        ("Reference", str(invoice["key"])),
    ]
    credits = Decimal(invoice["credits_applied"])
    totals = [("Subtotal", m("subtotal"))]
    if credits:
        totals.append(("Credits applied", money(-credits, currency, locale)))
    totals.append(("Total", m("total")))
    outstanding = Decimal(invoice.get("outstanding", invoice["total"]))
    if not draft:
        totals.append(("Amount paid", money(Decimal(invoice.get("amount_paid", 0)), currency,
                                            locale)))
    if status == "paid" and invoice.get("paid_on"):
        due_line = f"Paid {_d(invoice['paid_on'], locale)}"
    elif status == "void":
        due_line = "Void: nothing is owed"
    elif invoice.get("due_on") and outstanding > 0:
        due_line = f"Due {_d(invoice['due_on'], locale)}"
    else:
        due_line = ""
    return InvoiceView(
        title="Draft invoice" if draft else "Invoice",
        number=number,
        stamp=_STAMPS.get("draft" if draft else status),
        seller=_seller(seller),
        customer=_customer(terms),
        facts=facts,
        groups=_groups(invoice["lines"], terms, currency, locale),
        totals=totals,
        amount_due=money(outstanding, currency, locale),
        due_line=due_line,
        payment_instructions=_lines_of(seller.payment_instructions),
        footer=(f"{seller.name} · {number}" if not draft
                else f"{seller.name} · draft preview, not an invoice: amounts may change "
                     "until the period closes"),
        locale=locale,
    )
