"""What a credit note's document says (SPEC.md section 11 and 13), in the layout
of an invoice's (`documents.view.InvoiceView`), rendered by the same HTML and PDF
code, so a note and the invoice it credits read alike.

Facts: its number, issue date, the invoice it credits, the reason. Lines: each
credited invoice line (or the whole invoice), negative. Totals: what it credited
and where the money went, in SPEC.md's allocation order (credits back to grants,
the amount owed, then a refund or customer credit).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from documents.view import DocGroup, DocLine, InvoiceView, Seller, _customer, _d, _seller
from models.contract import ContractTerms
from models.formatting import DEFAULT_LOCALE, money

_LINE_NAMES = {"whole": "The whole invoice"}


def credit_note_view(
    note: Mapping[str, Any],
    terms: ContractTerms,
    seller: Seller,
    locale: str = DEFAULT_LOCALE,
) -> InvoiceView:
    """The document of ``note`` (the API's JSON for a credit note)."""
    currency = str(note["currency"])

    def m(value: Any) -> str:
        return money(Decimal(value), currency, locale)

    credited = str(note.get("invoice_number") or note["invoice"])
    lines = [DocLine(
        description=(f"Line {ln['line']} of {credited}" if ln.get("line")
                     else _LINE_NAMES.get(str(ln.get("kind")), f"{credited}")),
        detail=str(ln.get("kind") or "").replace("_", " "),
        quantity="", unit_price="", amount=m(-Decimal(ln["amount"])),
    ) for ln in note["lines"]]
    a = note["allocation"]
    totals = [("Credited", m(-Decimal(note["total"])))]
    for label, field in (("Credits returned", "credits_returned"),
                         ("Taken off the amount owed", "outstanding_reduced"),
                         ("Kept as customer credit", "customer_credit")):
        if Decimal(a[field]):
            totals.append((label, m(a[field])))
    refund = note.get("refund")
    refund_line = ""
    if refund is not None:
        refund_line = (f"Refunded {_d(refund['refunded_on'], locale)}"
                       if refund.get("status") == "refunded" and refund.get("refunded_on")
                       else "Refund pending: it is retried until the payment gateway pays it")
    return InvoiceView(
        title="Credit note",
        number=str(note["number"]),
        stamp=None,
        seller=_seller(seller),
        customer=_customer(terms),
        facts=[
            ("Credit note number", str(note["number"])),
            ("Issued", _d(note["issued_on"], locale)),
            ("Credits invoice", credited),
            ("Reason", str(note["reason"]).replace("_", " ")
             + (" (automatic)" if note.get("automatic") else "")),
            ("Contract", str(note.get("contract_id") or terms.contract_id)),
        ],
        groups=[DocGroup(title="Credited", lines=lines, subtotal=m(-Decimal(note["total"])))],
        totals=totals,
        amount_due=m(a["refunded"]),
        amount_label="Refunded",
        bill_to_label="Issued to",
        due_line=refund_line,
        payment_instructions=[],
        footer=f"{seller.name} · {note['number']} · credits {credited}",
        locale=locale,
    )
