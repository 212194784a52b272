"""Invoice documents as HTML: one self-contained page (inline CSS, no assets).

Autoescaped Jinja2 (customer names and addresses are user input). The same
view renders to the same text, byte for byte.
"""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from documents.view import InvoiceView

__all__ = ["render_html"]


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("documents", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,  # a misspelt field fails the test, not the customer
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(view: InvoiceView) -> bytes:
    """The document as UTF-8 HTML."""
    return _environment().get_template("invoice.html.j2").render(view=view).encode("utf-8")
