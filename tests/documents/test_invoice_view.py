"""The document view and its two renderings, from invoice JSON (no database)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pypdf
import pytest

from documents.html import render_html
from documents.pdf import render_pdf
from documents.view import Seller, invoice_view
from models.catalog import load_catalog
from models.contract import ContractTerms, load_contract, resolve_terms
from tests.support.scenario import PRO_CATALOG, contract_doc

SELLER = Seller(name="Billow GmbH", address="Hauptstraße 1\n10115 Berlin",
                tax_id="DE999999999", email="billing@billow.example",
                payment_instructions="IBAN DE00 0000 0000 0000 0000 00\nReference: invoice number")


def _terms(**customer: str) -> ContractTerms:
    doc = contract_doc(customer={"id": "cust-1", "name": "Customer One", **customer})
    return resolve_terms(load_contract(doc), load_catalog(PRO_CATALOG))


def _invoice(**overrides: Any) -> dict[str, Any]:
    inv: dict[str, Any] = {
        "number": "INV-000007", "key": "usage:2027-02-01", "contract_id": "c-1",
        "kind": "usage", "currency": "USD",
        "period": {"start": "2027-02-01", "end": "2027-03-01"},
        "issued_on": "2027-03-01", "due_on": "2027-03-31",
        "lines": [
            {"kind": "usage", "meter": "tokens", "dimensions": {"model": "gpt-4"},
             "quantity": "1000", "unit_price": "0.03", "amount": "30.00"},
            {"kind": "usage", "meter": "requests", "dimensions": {"region": "eu"},
             "quantity": "10000", "unit_price": "0.0012", "amount": "12.00"},
            {"kind": "late_usage", "meter": "tokens", "dimensions": {"model": "gpt-4"},
             "quantity": "100", "unit_price": "0.03", "amount": "3.00",
             "period_start": "2027-01-01", "period_end": "2027-02-01"},
            {"kind": "fee", "fee": "platform", "amount": "500.00"},
        ],
        "subtotal": "545.00", "credits_applied": "45.00", "total": "500.00",
        "status": "open", "amount_paid": "0.00", "outstanding": "500.00", "paid_on": None,
    }
    inv.update(overrides)
    return inv


def test_lines_are_grouped_by_meter_and_late_usage_names_its_period() -> None:
    view = invoice_view(_invoice(), _terms(), SELLER)
    assert [g.title for g in view.groups] == ["LLM tokens", "API requests", "Recurring fees"]
    tokens = view.groups[0]
    assert [ln.description for ln in tokens.lines] == ["model: gpt-4", "Late usage"]
    late = tokens.lines[1]
    assert late.detail == "model: gpt-4; usage of the period Jan 1, 2027 – Feb 1, 2027"
    assert (late.quantity, late.unit_price, late.amount) == ("100", "$0.03", "$3.00")
    assert tokens.subtotal == "$33.00"
    assert view.groups[1].lines[0].unit_price == "$0.0012"
    assert view.groups[2].lines[0].description == "Platform fee"
    assert dict(view.totals) == {"Subtotal": "$545.00", "Credits applied": "-$45.00",
                                 "Total": "$500.00", "Amount paid": "$0.00"}
    assert (view.amount_due, view.due_line, view.stamp) == ("$500.00", "Due Mar 31, 2027", None)


@pytest.mark.parametrize(("status", "stamp", "due"), [
    ("paid", "PAID", "Paid Mar 20, 2027"), ("void", "VOID", "Void: nothing is owed"),
    ("overdue", "OVERDUE", "Due Mar 31, 2027")])
def test_status_stamps(status: str, stamp: str, due: str) -> None:
    owed = "500.00" if status == "overdue" else "0.00"
    inv = _invoice(status=status, paid_on="2027-03-20" if status == "paid" else None,
                   outstanding=owed)
    view = invoice_view(inv, _terms(), SELLER)
    assert (view.stamp, view.due_line) == (stamp, due)
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(render_pdf(view))).pages)
    assert stamp in text
    assert f"stamp-{stamp}" in render_html(view).decode()


def test_customer_block_and_locale() -> None:
    terms = _terms(address="Rue de Rivoli 1\n75001 Paris", billing_email="ap@one.example",
                   tax_id="FR12345678901")
    view = invoice_view(_invoice(currency="EUR"), terms, SELLER, locale="de_DE")
    assert view.customer.lines == ["Rue de Rivoli 1", "75001 Paris", "ap@one.example",
                                   "Tax ID: FR12345678901"]
    assert view.amount_due == "500,00\u00a0€"
    assert dict(view.facts)["Due"] == "31.03.2027"
    text = pypdf.PdfReader(io.BytesIO(render_pdf(view))).pages[0].extract_text()
    for shown in ("Hauptstraße 1", "Rue de Rivoli 1", "ap@one.example", "500,00", "€",
                  "IBAN DE00 0000 0000 0000 0000 00"):
        assert shown in text, shown


def test_same_view_same_bytes_and_markup_is_escaped() -> None:
    terms = _terms(name="<script>alert(1)</script> & Co")
    view = invoice_view(_invoice(), terms, SELLER)
    assert render_pdf(view) == render_pdf(invoice_view(_invoice(), terms, SELLER))
    page = render_html(view).decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in page
    # ReportLab's paragraph markup is escaped too: the name prints as written.
    text = pypdf.PdfReader(io.BytesIO(render_pdf(view))).pages[0].extract_text()
    assert "<script>alert(1)</script> & Co" in text


def test_a_customer_without_the_new_fields_dumps_as_before() -> None:
    """Contracts stored before address/billing_email/tax_id keep their digest."""
    from worker.contract_service import contract_digest

    contract = load_contract(contract_doc())
    assert contract.model_dump(mode="json")["customer"] == {"id": "cust-1",
                                                            "name": "Customer One"}
    # The digest the release before these fields computed for this document.
    assert contract_digest(contract) == DIGEST_BEFORE


DIGEST_BEFORE = "f9a58b1b3a3707c2f8f27fc08f176c8efb9445da4200d821b40d290e5c668560"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "invoice.html"
    page.write_bytes(render_html(invoice_view(_invoice(status="paid", paid_on="2027-03-20",
                                                       outstanding="0.00"), _terms(), SELLER)))
    shot = tmp_path / "shot.png"
    assert CHROMIUM is not None
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=900,1200",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (900, 1200)
    histogram = image.histogram()
    dark = sum(histogram[:128]) / (900 * 1200)
    # Text and rules, not a blank (or all-black) page.
    assert 0.005 < dark < 0.5, dark
    # The PAID stamp is green: some strongly green pixels exist.
    data = Image.open(shot).convert("RGB").tobytes()
    pixels = zip(data[0::3], data[1::3], data[2::3], strict=True)
    green = sum(1 for r, g, b in pixels if g > r + 40 and g > b + 40)
    assert green > 200, green
