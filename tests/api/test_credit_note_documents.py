"""A credit note has a document like an invoice's (SPEC.md sections 11 and 13):
HTML and PDF, the same bytes every time, with its number, the invoice it credits,
the reason, the amount and where it went."""

from __future__ import annotations

import io
from pathlib import Path

import pypdf

from tests.api.helpers import ApiServer, problem, run_cli
from tests.api.test_corrections import _contract


async def test_a_credit_note_renders_as_html_and_pdf(
    api: ApiServer, worker: None, tmp_path: Path
) -> None:
    _cid, invoices = await _contract(api)
    number = invoices[0]["number"]
    async with api.http("ops") as ops:
        r = await ops.post(f"/v1/invoices/{number}/credit-notes", json={
            "id": "cn-doc", "reason": "goodwill", "amount": "10.00"})
        assert r.status_code == 200, r.text
        note = r.json()["credit_note"]["number"]
        html = await ops.get(f"/v1/credit-notes/{note}", headers={"Accept": "text/html"})
        pdf = await ops.get(f"/v1/credit-notes/{note}/document.pdf")
        again = await ops.get(f"/v1/credit-notes/{note}", headers={"Accept": "application/pdf"})
        as_json = await ops.get(f"/v1/credit-notes/{note}")
        missing = await ops.get("/v1/credit-notes/CN-999999/document.html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    page = html.text
    for shown in ("Credit note", note, number, "goodwill", "-$10.00", "Issued to"):
        assert shown in page, shown
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content == again.content  # the same note renders to the same bytes
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert note in text and number in text and "10.00" in text
    assert as_json.json()["number"] == note
    problem(missing, 404)
    target = tmp_path / "note.pdf"
    saved = await run_cli(api, ["credit-note", "pdf", note, "-o", str(target)])
    assert saved.exit_code == 0, saved.output
    assert target.read_bytes() == pdf.content
