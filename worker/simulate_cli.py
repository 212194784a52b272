"""Input loading and output rendering for ``billow simulate``."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from models.catalog import load_catalog_file
from models.contract import load_contract_file
from models.errors import BillowValidationError
from models.timeline import load_timeline_file
from models.usage import parse_usage_jsonl
from worker.settings import Settings
from worker.simulate import SimulationInput, run_simulation

# Piped output gets a wide table instead of 80 truncated columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _load(label: str, path: Path, loader: Any) -> Any:
    try:
        return loader(path)
    except BillowValidationError as exc:
        err.print(f"[red]error:[/] {label} {path}:\n{exc}")
        raise SystemExit(2) from None


def run_simulate_command(
    catalog_path: Path,
    contract_path: Path,
    usage_path: Path | None,
    timeline_path: Path | None,
    until: str | None,
    as_json: bool,
    settings: Settings,
) -> int:
    catalog = _load("catalog", catalog_path, load_catalog_file)
    contract = _load("contract", contract_path, load_contract_file)
    timeline = _load("timeline", timeline_path, load_timeline_file) if timeline_path else []
    usage: list[Any] = []
    if usage_path is not None:
        # Lines that do not parse are reported and skipped; the rest go through
        # ingestion, which reports its own rejections (unknown customer ...).
        events, problems = parse_usage_jsonl(usage_path.read_text())
        for p in problems:
            err.print(f"[yellow]usage {usage_path}:[/] {p}")
        usage = list(events)
    until_date = None
    if until is not None:
        try:
            until_date = date.fromisoformat(until)
        except ValueError:
            err.print(f"[red]error:[/] --until: {until!r} is not a date like 2028-06-30")
            return 2
    result = asyncio.run(
        run_simulation(
            SimulationInput(
                catalog=catalog, contract=contract, usage=usage, timeline=timeline, until=until_date
            ),
            database_url=settings.database_url,
        )
    )
    for r in result.ingest.results:
        if r.status != "accepted":
            err.print(
                f"[yellow]usage event {r.id or r.index}:[/] {r.status}"
                + (f" ({r.reason})" if r.reason else "")
            )
    if as_json:
        print(json.dumps(result.output, indent=2))
        return 0
    _render(result.output)
    return 0


def _render(output: dict[str, Any]) -> None:
    table = Table(title=f"contract {output['contract_id']} until {output['until']}")
    for col in ("number", "key", "issued", "due", "subtotal", "credits", "total", "status", "paid"):
        table.add_column(
            col, justify="right" if col in ("subtotal", "credits", "total") else "left"
        )
    for inv in output["invoices"]:
        table.add_row(
            inv["number"],
            inv["key"],
            inv["issued_on"],
            inv["due_on"],
            inv["subtotal"],
            inv["credits_applied"],
            inv["total"],
            inv["status"],
            inv["paid_on"] or "",
        )
    out.print(table)
    out.print("credits: " + ", ".join(f"{k} {v}" for k, v in output["credits"].items()))
    out.print("revenue: " + ", ".join(f"{k} {v}" for k, v in output["revenue"].items()))
