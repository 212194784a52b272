"""Input loading, progress and output rendering for ``billow simulate``.

Bad input (a file that cannot be read or parsed, a field that does not
validate, a contract whose plan is not in the catalog) is reported before
anything starts, as ``error: <what> <file>: <field>: <reason>`` on stderr
with exit code 2, like the other commands (``worker/cli_ops.py``); with
``--json`` stdout gets the same problem document they print. Progress goes to
stderr, so ``--json`` output on stdout stays one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from models.catalog import Catalog, load_catalog_file
from models.contract import Contract, load_contract_file, resolve_terms
from models.errors import BillowValidationError, Problem
from models.timeline import load_timeline_file
from models.usage import parse_usage_jsonl
from worker.binaries import MissingBinaryError, temporal_test_server
from worker.main import exit_now
from worker.settings import Settings
from worker.simulate import SimulationInput, SimulationProgress, SimulationResult, run_simulation

EXIT_FAILED = 1
EXIT_INPUT = 2

# Piped output gets a wide table instead of 80 truncated columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

T = TypeVar("T")


class InputError(Exception):
    """Bad input for the simulation: ``problems`` name the fields."""

    def __init__(self, where: str, problems: list[Problem]) -> None:
        self.where = where
        # One line each (a YAML parser's message spans several).
        self.problems = [(field, " ".join(reason.split())) for field, reason in problems]
        super().__init__(f"{where}: {BillowValidationError(self.problems)}")


def _load(label: str, path: Path, loader: Callable[[Path], T]) -> T:
    where = f"{label} {path}"
    try:
        return loader(path)
    except BillowValidationError as exc:
        raise InputError(where, exc.problems) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(where, [("", f"cannot read: {exc}")]) from None


def _report_input_error(exc: InputError, as_json: bool) -> int:
    if as_json:
        doc = {
            "title": "Invalid input",
            "detail": str(exc),
            "errors": [{"field": f, "reason": r} for f, r in exc.problems],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    # soft_wrap: one line per problem whatever the terminal width.
    if len(exc.problems) == 1:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    else:
        err.print(f"[red]error:[/] {escape(exc.where)}: {len(exc.problems)} problems",
                  highlight=False, soft_wrap=True)
        for field, reason in exc.problems:
            err.print(f"  {field or '(document)'}: {reason}", highlight=False, markup=False,
                      soft_wrap=True)
    return EXIT_INPUT


def load_inputs(
    catalog_path: Path,
    contract_path: Path,
    usage_path: Path | None,
    timeline_path: Path | None,
    until: str | None,
) -> SimulationInput:
    """Everything the simulation needs, checked before anything starts."""
    catalog: Catalog = _load("catalog", catalog_path, load_catalog_file)
    contract: Contract = _load("contract", contract_path, load_contract_file)
    try:
        resolve_terms(contract, catalog)  # unknown plan, meters, currency ...
    except BillowValidationError as exc:
        raise InputError(f"contract {contract_path}", exc.problems) from None
    timeline = _load("timeline", timeline_path, load_timeline_file) if timeline_path else []
    usage: list[Any] = []
    if usage_path is not None:
        text = _load("usage", usage_path, lambda p: p.read_text(encoding="utf-8"))
        # Lines that do not parse are reported and skipped; the rest go through
        # ingestion, which reports its own rejections (unknown customer ...).
        events, problems = parse_usage_jsonl(text)
        for p in problems:
            err.print(f"[yellow]usage {escape(str(usage_path))}:[/] {escape(str(p))}",
                      highlight=False)
        usage = list(events)
    until_date = None
    if until is not None:
        try:
            until_date = date.fromisoformat(until)
        except ValueError:
            reason = f"{until!r} is not a date like 2028-06-30"
            raise InputError("--until", [("", reason)]) from None
    return SimulationInput(
        catalog=catalog, contract=contract, usage=usage, timeline=timeline, until=until_date
    )


class ConsoleProgress(SimulationProgress):
    """Progress on stderr: live bars on a terminal, one line per phase otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> ConsoleProgress:
        if self.live:
            self.bars.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live:
            self._finish()
            self.bars.stop()

    def _finish(self) -> None:
        if self.task is not None:
            task = self.bars.tasks[-1]
            self.bars.update(self.task, total=task.total or 1, completed=task.total or 1)

    def phase(self, description: str) -> None:
        self._finish()
        if self.live:
            self.task = self.bars.add_task(description, total=None, detail="")
        else:
            self.console.print(f"[dim]simulate:[/] {description}", highlight=False)

    def ingested(self, done: int, total: int) -> None:
        if self.task is not None:
            self.bars.update(self.task, total=total, completed=done, detail=f"{done}/{total}")

    def simulated(self, day: date, first: date, until: date) -> None:
        if self.task is not None:  # `until` moves if a timeline action was refused
            total = max((until - first).days, 1)
            self.bars.update(self.task, description=f"simulating {first} → {until}",
                             total=total, completed=min((day - first).days, total),
                             detail=str(day))


def run_simulate_command(
    catalog_path: Path,
    contract_path: Path,
    usage_path: Path | None,
    timeline_path: Path | None,
    until: str | None,
    as_json: bool,
    settings: Settings,
) -> int:
    try:
        sim = load_inputs(catalog_path, contract_path, usage_path, timeline_path, until)
    except InputError as exc:
        return _report_input_error(exc, as_json)
    try:
        temporal_test_server()  # before starting anything
    except MissingBinaryError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    with ConsoleProgress(err) as progress:
        result = asyncio.run(run_simulation(sim, settings.database_url, progress))
    # Like `billow worker`: the Temporal SDK's core threads must not meet the
    # interpreter's finalization (worker/main.py `run_worker`).
    exit_now(_print_result(result, as_json))


def _print_result(result: SimulationResult, as_json: bool) -> int:
    for r in result.ingest.results:
        if r.status != "accepted":
            err.print(
                f"[yellow]usage event {escape(str(r.id or r.index))}:[/] {r.status}"
                + (f" ({escape(r.reason)})" if r.reason else ""),
                highlight=False,
            )
    for refused in result.refused:
        err.print(
            f"[yellow]timeline action {refused['index']} ({refused['action']} "
            f"{escape(refused['id'])} at {refused['at']}) refused:[/] "
            f"{escape(refused['reason'])}",
            highlight=False,
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
    if output.get("refused"):
        out.print(f"refused timeline actions: {len(output['refused'])} (see above)")
