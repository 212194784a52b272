"""Invoice documents over HTTP: content negotiation and rendering.

``GET /v1/invoices/{number}`` answers JSON, HTML or PDF by the ``Accept``
header; ``.../document.html`` and ``.../document.pdf`` name the format in the
path (for links and ``curl -O``). The documents are made from the same JSON
the API returns (`documents.view`), with the seller from the settings.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from fastapi import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.deps import AppDeps
from documents.html import render_html
from documents.pdf import render_pdf
from documents.view import InvoiceView, invoice_view
from models.contract import ContractTerms

__all__ = [
    "DOCUMENT_RESPONSES",
    "DocFormat",
    "DocumentFormat",
    "contract_terms",
    "document_response",
    "negotiate",
]


class DocFormat(StrEnum):
    JSON = "json"
    HTML = "html"
    PDF = "pdf"


class DocumentFormat(StrEnum):
    """The formats a ``document.<format>`` path names."""

    HTML = "html"
    PDF = "pdf"


_MEDIA = {DocFormat.JSON: "application/json", DocFormat.HTML: "text/html",
          DocFormat.PDF: "application/pdf"}

DOCUMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {
        "text/html": {"schema": {"type": "string"}},
        "application/pdf": {"schema": {"type": "string", "format": "binary"}},
    }, "description": "The invoice: JSON, or its document as HTML or PDF (by `Accept`)"},
}


def _q(params: list[str]) -> float:
    for p in params:
        name, _, value = p.strip().partition("=")
        if name.strip() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def negotiate(accept: str | None) -> DocFormat:
    """The format ``Accept`` prefers among JSON, HTML and PDF (JSON on a tie or
    when nothing matches: API clients that send no header get JSON)."""
    if not accept:
        return DocFormat.JSON
    best: dict[DocFormat, tuple[int, float]] = {}
    for item in accept.split(","):
        media, *params = item.strip().split(";")
        media = media.strip().lower()
        q = _q(params)
        for fmt, wanted in _MEDIA.items():
            kind = wanted.split("/")[0]
            specificity = (2 if media == wanted else 1 if media == f"{kind}/*"
                           else 0 if media == "*/*" else -1)
            if specificity >= 0 and specificity >= best.get(fmt, (-1, 0.0))[0]:
                best[fmt] = (specificity, q)
    scored = [(q, fmt is DocFormat.JSON, fmt) for fmt, (_, q) in best.items() if q > 0]
    if not scored:
        return DocFormat.JSON
    return max(scored)[2]


async def contract_terms(conn: AsyncConnection, contract_id: str) -> ContractTerms:
    """The contract's terms as the ledger keeps them (meter and fee names, customer)."""
    terms = await conn.scalar(text("SELECT terms FROM contracts WHERE id = :id"),
                              {"id": contract_id})
    return ContractTerms.model_validate(terms)


def document_response(deps: AppDeps, invoice: dict[str, Any], terms: ContractTerms,
                      fmt: DocFormat) -> Response:
    """The invoice's document in ``fmt`` (HTML or PDF), inline, with a file name."""
    view = invoice_view(invoice, terms, deps.seller, deps.document_locale)
    return view_response(view, str(invoice.get("number") or "draft-" + terms.contract_id), fmt)


def view_response(view: InvoiceView, name: str, fmt: DocFormat) -> Response:
    """A document view (an invoice's or a credit note's) rendered inline as ``name.fmt``."""
    body = render_pdf(view) if fmt is DocFormat.PDF else render_html(view)
    media = _MEDIA[fmt] + ("; charset=utf-8" if fmt is DocFormat.HTML else "")
    return Response(body, media_type=media, headers={
        "Content-Disposition": f'inline; filename="{name}.{fmt.value}"', "Vary": "Accept"})
