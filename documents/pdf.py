"""Invoice documents as PDF, with ReportLab.

Why ReportLab: it installs from PyPI alone (wheels, no system libraries such as
cairo or pango that HTML-to-PDF engines need), its flowables lay out tables
that wrap long dimension lists across pages, and its ``invariant`` mode is
made for reproducible output: the creation date and the document id are
fixed, so the same view renders to the same bytes, every time.

The text face is Bitstream Vera, which ships inside ReportLab and is embedded
(subset) in each file, so a document looks the same in every viewer and
carries real Unicode text (pypdf reads it back). A character Vera has no glyph
for is printed as its closest stand-in (narrow no-break space as a no-break
space) or "?" rather than as an invisible box.
"""

from __future__ import annotations

import io
import unicodedata
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
)
from reportlab.platypus.doctemplate import BaseDocTemplate

from documents.view import InvoiceView

__all__ = ["render_pdf"]

_REGULAR, _BOLD = "BillowVera", "BillowVera-Bold"
_STAMP_COLORS = {"PAID": "#1f7a3a", "VOID": "#b42318", "OVERDUE": "#b54708", "DRAFT": "#666666"}
_SUBSTITUTES = {"\u202f": "\u00a0", "\u2009": " ", "\u2212": "-", "\u2011": "-"}
_GREY = colors.HexColor("#666666")


@cache
def _fonts() -> frozenset[int]:
    """Register the embedded faces once; the code points the regular face can show."""
    regular = TTFont(_REGULAR, "Vera.ttf")
    pdfmetrics.registerFont(regular)
    pdfmetrics.registerFont(TTFont(_BOLD, "VeraBd.ttf"))
    pdfmetrics.registerFontFamily(_REGULAR, normal=_REGULAR, bold=_BOLD)
    return frozenset(regular.face.charToGlyph)


def _safe(text: str) -> str:
    """``text`` with only glyphs the face has, escaped for ReportLab's paragraph markup."""
    known = _fonts()
    out = []
    for ch in unicodedata.normalize("NFC", text):
        ch = _SUBSTITUTES.get(ch, ch)
        out.append(ch if ord(ch) in known or ch in "\n\t" else "?")
    return escape("".join(out))


@cache
def _styles() -> dict[str, ParagraphStyle]:
    _fonts()
    base = ParagraphStyle("base", fontName=_REGULAR, fontSize=9.5, leading=12.5)
    return {
        "base": base,
        "small": ParagraphStyle("small", parent=base, fontSize=8, leading=10, textColor=_GREY),
        "label": ParagraphStyle("label", parent=base, fontSize=7.5, leading=10, textColor=_GREY),
        "name": ParagraphStyle("name", parent=base, fontName=_BOLD, fontSize=11.5, leading=15),
        "title": ParagraphStyle("title", parent=base, fontName=_BOLD, fontSize=19, leading=24),
        "num": ParagraphStyle("num", parent=base, alignment=TA_RIGHT),
        "bold": ParagraphStyle("bold", parent=base, fontName=_BOLD),
        "boldnum": ParagraphStyle("boldnum", parent=base, fontName=_BOLD, alignment=TA_RIGHT),
        "due": ParagraphStyle("due", parent=base, fontName=_BOLD, fontSize=12, leading=15),
        "duenum": ParagraphStyle("duenum", parent=base, fontName=_BOLD, fontSize=12, leading=15,
                                 alignment=TA_RIGHT),
        "right": ParagraphStyle("right", parent=base, alignment=TA_RIGHT, textColor=_GREY),
    }


def _p(text: str, style: str = "base") -> Paragraph:
    return Paragraph(_safe(text), _styles()[style])


def _party(name: str, lines: list[str], label: str | None = None) -> list[Any]:
    out: list[Any] = [_p(label.upper(), "label")] if label else []
    out.append(_p(name, "name"))
    out += [_p(line) for line in lines]
    return out


def _header(view: InvoiceView) -> Table:
    facts = Table(
        [[_p(label, "small"), _p(value)] for label, value in view.facts],
        colWidths=[26 * mm, 52 * mm],
        style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
               ("TOPPADDING", (0, 0), (-1, -1), 0.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5)],
    )
    right = [_p(view.title, "title"), facts]
    table = Table([[_party(view.seller.name, view.seller.lines), right]],
                  colWidths=[92 * mm, 82 * mm])
    table.setStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)])
    return table


def _lines_table(view: InvoiceView) -> Table:
    rows: list[list[Any]] = [[_p("DESCRIPTION", "label"), _p("QUANTITY", "label"),
                              _p("UNIT PRICE", "label"), _p("AMOUNT", "label")]]
    style: list[Any] = [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.HexColor("#999999")),
        ("ALIGN", (1, 0), (-1, 0), "RIGHT"),
    ]
    for group in view.groups:
        r = len(rows)
        rows.append([_p(group.title, "bold"), "", "", ""])
        style += [("SPAN", (0, r), (-1, r)),
                  ("BACKGROUND", (0, r), (-1, r), colors.HexColor("#f3f5f8"))]
        for line in group.lines:
            cell: list[Any] = [_p(line.description)]
            if line.detail:
                cell.append(_p(line.detail, "small"))
            rows.append([cell, _p(line.quantity, "num"), _p(line.unit_price, "num"),
                         _p(line.amount, "num")])
            style.append(("LINEBELOW", (0, len(rows) - 1), (-1, len(rows) - 1), 0.3,
                          colors.HexColor("#e3e3e3")))
        if len(group.lines) > 1:
            rows.append([_p(f"{group.title} total", "small"), "", "",
                         _p(group.subtotal, "num")])
            style += [("SPAN", (0, len(rows) - 1), (2, len(rows) - 1)),
                      ("LINEBELOW", (0, len(rows) - 1), (-1, len(rows) - 1), 0.6,
                       colors.HexColor("#999999"))]
    if not view.groups:
        rows.append([_p("No charges in this period."), "", "", ""])
    return Table(rows, colWidths=[88 * mm, 30 * mm, 28 * mm, 28 * mm], repeatRows=1,
                 style=style)


def _totals(view: InvoiceView) -> Table:
    rows = [[_p(label), _p(value, "num")] for label, value in view.totals]
    rows.append([_p(view.amount_label, "due"), _p(view.amount_due, "duenum")])
    table = Table(rows, colWidths=[40 * mm, 36 * mm], hAlign="RIGHT")
    table.setStyle([("LINEABOVE", (0, len(rows) - 1), (-1, len(rows) - 1), 1.2, colors.black),
                    ("VALIGN", (0, 0), (-1, -1), "TOP")])
    return table


def _decorate(view: InvoiceView) -> Any:
    """Stamp and footer on every page."""

    def on_page(canvas: Any, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont(_REGULAR, 7.5)
        canvas.setFillColor(_GREY)
        canvas.drawString(18 * mm, 10 * mm, _safe_plain(view.footer))
        canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"Page {doc.page}")
        if view.stamp:
            canvas.translate(A4[0] - 60 * mm, A4[1] - 84 * mm)
            canvas.rotate(14)
            color = colors.HexColor(_STAMP_COLORS.get(view.stamp, "#666666"))
            canvas.setStrokeColor(color)
            canvas.setFillColor(color)
            canvas.setLineWidth(2.5)
            width = pdfmetrics.stringWidth(view.stamp, _BOLD, 26) + 10 * mm
            canvas.roundRect(-width / 2, -4 * mm, width, 14 * mm, 2 * mm)
            canvas.setFont(_BOLD, 26)
            canvas.drawCentredString(0, 0, view.stamp)
        canvas.restoreState()

    return on_page


def _safe_plain(text: str) -> str:
    known = _fonts()
    return "".join(c if ord(c) in known else _SUBSTITUTES.get(c, "?") for c in text)


def render_pdf(view: InvoiceView) -> bytes:
    """The document as PDF bytes: the same view always gives the same bytes."""
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=f"{view.title} {view.number}", author=view.seller.name,
        subject=f"{view.title} {view.number} for {view.customer.name}",
        creator="billow", producer="billow (ReportLab)",
        # Fixed creation date and document id: reproducible bytes (see module doc).
        invariant=1, pageCompression=1,
    )
    story: list[Any] = [_header(view), Spacer(1, 9 * mm),
                        *_party(view.customer.name, view.customer.lines, view.bill_to_label),
                        Spacer(1, 7 * mm), _lines_table(view), Spacer(1, 5 * mm),
                        KeepTogether([_totals(view)])]
    if view.due_line:
        story.append(_p(view.due_line, "right"))
    if view.payment_instructions:
        story += [Spacer(1, 8 * mm), _p("PAYMENT INSTRUCTIONS", "label"),
                  *[_p(line) for line in view.payment_instructions]]
    decorate = _decorate(view)
    doc.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return buffer.getvalue()
