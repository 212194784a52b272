"""``billow invoice pdf|html``: fetch an invoice's document from the API.

The API renders it (documents/); the CLI only saves the bytes, so a file
saved here is byte-identical to the one a browser downloads.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from worker.cli_common import EXIT_SERVER, Api, CliFailure, fail
from worker.cli_common import exit_code as _exit_code
from worker.cli_ops import _seg, invoice_app
from worker.settings import load_settings

err = Console(stderr=True)

OutOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="File to write ('-' for stdout; default: <NUMBER>.<format>)",
    dir_okay=False)]


def fetch_document(path: str) -> bytes:
    """GET ``path`` from the API as raw bytes (problem+json errors become CliFailure)."""
    with Api(load_settings()) as api:
        try:
            response = api.client.get(path, headers={"Accept": "*/*"})
        except httpx.HTTPError as exc:
            raise CliFailure(EXIT_SERVER,
                             f"cannot reach the billow API at {api.base_url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        detail = (problem or {}).get("detail") or response.text[:200]
        raise CliFailure(_exit_code(response.status_code),
                         f"{response.reason_phrase} ({response.status_code}): {detail}",
                         problem if isinstance(problem, dict) else None)
    content: bytes = response.content
    return content


def _save(content: bytes, output: Path | None, default: str) -> None:
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return
    target = output or Path(default)
    target.write_bytes(content)
    err.print(f"wrote {target} ({len(content):,} bytes)")


def _document(number: str, fmt: str, output: Path | None,
              collection: str = "invoices") -> None:
    try:
        content = fetch_document(f"/v1/{collection}/{_seg(number)}/document.{fmt}")
    except CliFailure as exc:
        fail(exc, False)
    _save(content, output, f"{number}.{fmt}")


def invoice_pdf(
    number: Annotated[str, typer.Argument(help="Invoice number, e.g. INV-000002")],
    output: OutOpt = None,
) -> None:
    """Save an invoice's PDF document (the same bytes every time)."""
    _document(number, "pdf", output)


def invoice_html(
    number: Annotated[str, typer.Argument(help="Invoice number, e.g. INV-000002")],
    output: OutOpt = None,
) -> None:
    """Save an invoice's HTML document."""
    _document(number, "html", output)


def invoice_preview(
    contract_id: Annotated[str, typer.Argument(help="Contract id")],
    output: OutOpt = None,
) -> None:
    """Save the open period's draft invoice as an HTML preview (stamped DRAFT)."""
    try:
        content = fetch_document(f"/v1/contracts/{_seg(contract_id)}/draft/document.html")
    except CliFailure as exc:
        fail(exc, False)
    _save(content, output, f"draft-{contract_id}.html")


def credit_note_pdf(
    number: Annotated[str, typer.Argument(help="Credit note number, e.g. CN-000001")],
    output: OutOpt = None,
) -> None:
    """Save a credit note's PDF document (the same bytes every time)."""
    _document(number, "pdf", output, "credit-notes")


def credit_note_html(
    number: Annotated[str, typer.Argument(help="Credit note number, e.g. CN-000001")],
    output: OutOpt = None,
) -> None:
    """Save a credit note's HTML document."""
    _document(number, "html", output, "credit-notes")


def register() -> None:
    """Add ``pdf``, ``html`` and ``preview`` to ``billow invoice``, and ``pdf`` and
    ``html`` to ``billow credit-note``."""
    from worker.cli_corrections import credit_note_app

    invoice_app.command("pdf")(invoice_pdf)
    invoice_app.command("html")(invoice_html)
    invoice_app.command("preview")(invoice_preview)
    credit_note_app.command("pdf")(credit_note_pdf)
    credit_note_app.command("html")(credit_note_html)
