"""``billow journal export`` and ``billow revenue deferred``.

The credit history is `billow contract show --credits` (worker/cli_ops.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from worker.cli_common import EXIT_CODES, EXIT_INPUT, CliFailure, JsonOpt, err, fail, out
from worker.cli_documents import fetch_document
from worker.cli_ops import _api, _emit_json

journal_app = typer.Typer(help="The revenue journal.", no_args_is_help=True, epilog=EXIT_CODES)
revenue_app = typer.Typer(help="Revenue reports.", no_args_is_help=True, epilog=EXIT_CODES)

FromOpt = Annotated[str | None, typer.Option("--from", help="First booking date (YYYY-MM-DD)")]
ToOpt = Annotated[str | None, typer.Option("--to", help="Last booking date (YYYY-MM-DD)")]


def _query(params: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    clean = {k: v for k, v in params.items() if v is not None}
    return ("?" + urlencode(clean)) if clean else ""


@journal_app.command("export")
def journal_export(
    start: FromOpt = None,
    end: ToOpt = None,
    contract: Annotated[str | None, typer.Option(help="Only this contract")] = None,
    format: Annotated[str, typer.Option(help="csv (one row per line) or json")] = "csv",
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                help="File to write (default: stdout)")] = None,
) -> None:
    """The journal booked in a date range, as CSV or JSON (with per-account totals)."""
    if format not in ("csv", "json"):
        err.print("[red]error:[/] --format: csv or json")
        raise typer.Exit(EXIT_INPUT)
    path = "/v1/journal" + _query({"from": start, "to": end, "contract": contract,
                                   "format": format})
    try:
        content = fetch_document(path)
    except CliFailure as exc:
        fail(exc, format == "json")
    if output is None:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    else:
        output.write_bytes(content)
        err.print(f"wrote {output} ({len(content):,} bytes)")


@revenue_app.command("deferred")
def revenue_deferred(
    start: Annotated[str | None, typer.Option("--from", help="First month (YYYY-MM)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last month (YYYY-MM)")] = None,
    contract: Annotated[str | None, typer.Option(help="Only this contract")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Deferred-revenue roll-forward per contract and month."""
    try:
        with _api() as api:
            result = api.call("GET", "/v1/deferred-revenue",
                              params={"from": start, "to": end, "contract": contract})
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    table = Table(title="Deferred revenue", title_justify="left")
    cols = ["contract_id", "month", "opening", "invoiced", "recognized", "breakage",
            "credited", "closing"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("contract_id", "month") else "right")
    for r in result["months"]:
        table.add_row(*(str(r[c]) for c in cols))
    out().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(journal_app, name="journal")
    app.add_typer(revenue_app, name="revenue")
