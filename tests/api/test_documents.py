"""Invoice documents through the API and the CLI (SPEC.md section 13).

The acme example runs on a time-skipping server into the API's database;
every invoice's PDF is read back with pypdf and must show every number, amount
and date of the JSON the API returns for it, formatted by models/formatting.
"""

from __future__ import annotations

import html
import io
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pypdf
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from models.catalog import load_catalog_file
from models.contract import load_contract_file
from models.formatting import day, money, quantity, unit_price
from models.timeline import load_timeline_file
from models.usage import parse_usage_jsonl
from tests.api.helpers import ApiServer, problem, run_cli
from tests.support.paths import ACME
from worker.simulate import SimulationInput, simulate_on


async def _run_acme(env: WorkflowEnvironment, engine: AsyncEngine) -> None:
    events, _ = parse_usage_jsonl((ACME / "usage.jsonl").read_text())
    await simulate_on(env, engine, SimulationInput(
        catalog=load_catalog_file(ACME / "catalog.yaml"),
        contract=load_contract_file(ACME / "contract.yaml"),
        usage=events, timeline=load_timeline_file(ACME / "timeline.yaml"),
        until=date(2028, 6, 30)))


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u00a0", " "))


def expected_strings(inv: dict[str, Any]) -> list[str]:
    """Every number, amount and date of the JSON invoice, as a person reads it."""
    cur = inv["currency"]
    out = [inv["number"], money(Decimal(inv["subtotal"]), cur), money(Decimal(inv["total"]), cur),
           money(Decimal(inv["outstanding"]), cur), money(Decimal(inv["amount_paid"]), cur),
           day(date.fromisoformat(inv["period"]["start"])),
           day(date.fromisoformat(inv["period"]["end"]))]
    if Decimal(inv["credits_applied"]):
        out.append(money(-Decimal(inv["credits_applied"]), cur))
    for field in ("issued_on", "due_on", "paid_on"):
        if inv.get(field):
            out.append(day(date.fromisoformat(inv[field])))
    for ln in inv["lines"]:
        out.append(money(Decimal(ln["amount"]), cur))
        if ln.get("quantity") is not None:
            out.append(quantity(Decimal(ln["quantity"])))
        if ln.get("unit_price") is not None:
            out.append(unit_price(Decimal(ln["unit_price"]), cur))
        out += [f"{k}: {v}" for k, v in (ln.get("dimensions") or {}).items()]
    return [_flat(s) for s in out]


def pdf_text(content: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(content))
    return _flat(" ".join(page.extract_text() for page in reader.pages))


async def test_acme_invoices_as_pdf_and_html_show_every_figure_of_the_json(
    api: ApiServer, ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    await _run_acme(ts_env, db)
    async with api.http("crm") as http:
        listing = (await http.get("/v1/invoices")).json()["invoices"]
        numbers = [i["number"] for i in listing]
        assert numbers == [f"INV-{n:06d}" for n in range(1, 6)]
        for number in numbers:
            inv = (await http.get(f"/v1/invoices/{number}")).json()
            pdf = await http.get(f"/v1/invoices/{number}/document.pdf")
            assert pdf.status_code == 200, pdf.text
            assert pdf.headers["content-type"] == "application/pdf"
            assert pdf.content.startswith(b"%PDF-")
            text = pdf_text(pdf.content)
            missing = [s for s in expected_strings(inv) if s not in text]
            assert missing == [], (number, missing, text)
            # Lines are grouped under the meters' names, with the customer named.
            assert "Acme Corp" in text
            for ln in inv["lines"]:
                if ln.get("meter"):
                    assert {"tokens": "LLM tokens (thousands)",
                            "requests": "API requests"}[ln["meter"]] in text
            if inv["status"] == "paid":
                assert "PAID" in text
            # The same invoice renders to the same bytes, by path or by Accept.
            again = await http.get(f"/v1/invoices/{number}", headers={"Accept": "application/pdf"})
            assert again.content == pdf.content
            page = await http.get(f"/v1/invoices/{number}",
                                  headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
            assert page.headers["content-type"].startswith("text/html")
            shown = _flat(html.unescape(re.sub(r"<[^>]+>", " ", page.text)))
            assert [s for s in expected_strings(inv) if s not in shown] == [], number
            assert (await http.get(f"/v1/invoices/{number}/document.html")).content == (
                page.content)
            # JSON stays the default for API clients.
            assert (await http.get(f"/v1/invoices/{number}",
                                   headers={"Accept": "application/json"})).json() == inv
        missing = await http.get("/v1/invoices/INV-999999/document.pdf")
        problem(missing, 404)
        bad = await http.get(f"/v1/invoices/{numbers[0]}/document.docx")
        problem(bad, 422)


async def test_cli_saves_the_pdf(api: ApiServer, ts_env: WorkflowEnvironment, db: AsyncEngine,
                                 tmp_path: Path) -> None:
    await _run_acme(ts_env, db)
    target = tmp_path / "first.pdf"
    result = await run_cli(api, ["invoice", "pdf", "INV-000002", "-o", str(target)], scope="crm")
    assert result.exit_code == 0, result.output
    async with api.http("crm") as http:
        served = (await http.get("/v1/invoices/INV-000002/document.pdf")).content
    assert target.read_bytes() == served
    assert "$26,500.00" in pdf_text(served)
    missing = await run_cli(api, ["invoice", "pdf", "INV-999999", "-o", str(tmp_path / "x.pdf")],
                            scope="crm")
    assert missing.exit_code == 3
    assert not (tmp_path / "x.pdf").exists()


@pytest.mark.usefixtures("worker")
async def test_the_draft_previews_as_html(api: ApiServer) -> None:
    from tests.support.scenario import PRO_CATALOG, contract_doc

    doc = contract_doc(id="c-draft", customer={
        "id": "cust-draft", "name": "Draft & Co", "address": "1 Main St\nSpringfield",
        "billing_email": "ap@draft.example", "tax_id": "DE123456789"})
    async with api.http("ops") as http:
        assert (await http.put("/v1/catalog", json=PRO_CATALOG)).status_code in (200, 201)
        created = await http.post("/v1/contracts", json=doc)
        assert created.status_code in (200, 201), created.text
        page = await http.get("/v1/contracts/c-draft/draft", headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "DRAFT" in page.text and "Draft &amp; Co" in page.text
        for shown in ("1 Main St", "Springfield", "ap@draft.example", "Tax ID: DE123456789",
                      "Platform fee", "$500.00"):
            assert shown in page.text, shown
        pdf = await http.get("/v1/contracts/c-draft/draft/document.pdf")
        assert pdf.status_code == 200
        assert "Draft invoice" in pdf_text(pdf.content)
        json_draft = await http.get("/v1/contracts/c-draft/draft")
        assert json_draft.json()["status"] == "draft"
