"""Ops commands of the ``billow`` CLI (SPEC.md section 10).

``catalog``, ``contract``, ``usage`` and ``invoice`` call a running billow API
(``BILLOW_API_URL``, default http://127.0.0.1:8000, with ``BILLOW_API_KEY``);
``apikey`` writes to the database directly (``BILLOW_DATABASE_URL``), since it
is how the first key comes to exist.

Output is a readable table by default and the API's JSON with ``--json``
(errors then go to stdout as the problem+json document too). Exit codes are
stable for scripts: see `EXIT_CODES`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from worker import cli_views as views
from worker.cli_common import (
    EXIT_CODES,
    EXIT_INPUT,
    EXIT_SERVER,
    CliFailure,
    JsonOpt,
    WideOpt,
    api,
    emit_json,
    err,
    fail,
    out,
    read_document,
    seg,
    show,
    width,
)
from worker.cli_tables import Column, Layout, kv, render
from worker.cli_tables import amount as money_text

USAGE_BATCH = 10_000
# Stay under the API's 5 MB usage body limit whatever the events look like.
USAGE_BATCH_BYTES = 4_500_000

# The shared pieces under the names the commands below use.
_api = api
_read_document = read_document
_emit_json = emit_json
_seg = seg
_out = out
_kv_table = kv


# --- catalog ----------------------------------------------------------------------------

catalog_app = typer.Typer(help="Catalog documents (meters, rate cards, plans).",
                          no_args_is_help=True, epilog=EXIT_CODES)


@catalog_app.command("apply")
def catalog_apply(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="catalog.yaml")],
    as_json: JsonOpt = False,
) -> None:
    """Apply a catalog: a new version unless an identical one exists."""
    try:
        doc = _read_document(file)
        with _api() as client:
            result = client.call("PUT", "/v1/catalog", body=doc)
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    state = "created" if result["created"] else "unchanged (identical document)"
    _out().print(_kv_table("Catalog", [
        ("version", result["version"]), ("status", state),
        ("meters", ", ".join(result["meters"])), ("plans", ", ".join(result["plans"])),
    ]))


@catalog_app.command("show")
def catalog_show(
    version: Annotated[int | None, typer.Option(
        min=1, help="Catalog version (default: the latest).")] = None,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """A catalog version: meters with their rate cards, plans with their fees."""
    try:
        with _api() as client:
            doc = client.call("GET", "/v1/catalog", params={"version": version})
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(doc)
        return
    show(views.catalog_view(doc, width(), wide), wide)


# --- contracts --------------------------------------------------------------------------

contract_app = typer.Typer(help="Contracts: create, show, amend, list.", no_args_is_help=True,
                           epilog=EXIT_CODES)


@contract_app.command("create")
def contract_create(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="contract.yaml")],
    catalog_version: Annotated[int | None, typer.Option(
        help="Catalog version to bill by (default: the latest).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a contract and start its workflow (a no-op if it exists with the same terms)."""
    try:
        doc = _read_document(file)
        with _api() as client:
            result = client.call("POST", "/v1/contracts", body=doc,
                              params={"catalog_version": catalog_version})
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    _out().print(_kv_table(f"Contract {result['contract_id']}", [
        ("status", "created" if result["created"] else "exists (same terms, nothing changed)"),
        ("workflow", result["workflow_id"]), ("catalog version", result["catalog_version"]),
        ("next close", _next_close_text(result.get("next_close"))),
        ("Temporal UI", result["temporal_ui_url"]),
    ]))


def _next_close_text(close: dict[str, Any] | None) -> str:
    """The next close's label (its UTC time is in it); '-' when none is left."""
    return "-" if not close else str(close["label"])


@contract_app.command("show")
def contract_show(
    contract_id: Annotated[str, typer.Argument(help="Contract id")],
    credits: Annotated[bool, typer.Option(
        "--credits", help="Also the credit history: grants, consumption per invoice, "
        "expiries and breakage.")] = False,
    revenue: Annotated[bool, typer.Option(
        "--revenue", help="Also the revenue and credits summary (as `billow simulate`).")]
    = False,
    payments: Annotated[bool, typer.Option(
        "--payments", help="Also each invoice's payments and reminders.")] = False,
    everything: Annotated[bool, typer.Option(
        "--all", help="--credits, --revenue and --payments.")] = False,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """A contract's live state: status, credit balance, next close, invoices.

    With --credits, --revenue, --payments (or --all) also what the ledger holds
    behind it; with --json those come as the keys `credit_history`, `revenue_summary`
    and `collection` beside the state.
    """
    if everything:
        credits = revenue = payments = True
    cid = _seg(contract_id)
    try:
        with _api() as client:
            result = client.call("GET", f"/v1/contracts/{cid}")
            extra: dict[str, Any] = {}
            if credits:
                extra["credit_history"] = client.call("GET", f"/v1/contracts/{cid}/credits")
            if revenue:
                extra["revenue_summary"] = client.call("GET", f"/v1/contracts/{cid}/revenue")
            if payments:
                extra["collection"] = client.call("GET", f"/v1/contracts/{cid}/collection")
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json({**result, **extra})
        return
    w = width()
    show(views.contract_detail(result, w, wide), wide)
    if "credit_history" in extra:
        show(views.credit_history(extra["credit_history"], w, wide), wide)
    if "revenue_summary" in extra:
        show(views.revenue_view(extra["revenue_summary"]), wide)
    if "collection" in extra:
        show(views.collection_table(extra["collection"]["invoices"], w, wide), wide)


@contract_app.command("amend")
def contract_amend(
    contract_id: Annotated[str, typer.Argument(help="Contract id")],
    file: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, help="amendment.yaml (one amendment, docs/file-formats.md)")],
    as_json: JsonOpt = False,
) -> None:
    """Send an amendment to a running contract (validated by its workflow)."""
    try:
        doc = _read_document(file)
        if not isinstance(doc, dict):
            raise CliFailure(EXIT_INPUT, f"{file}: expected one amendment (a mapping)")
        with _api() as client:
            result = client.call("POST", f"/v1/contracts/{_seg(contract_id)}/amendments", body=doc)
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    _out().print(_kv_table(f"Amendment {result['amendment_id']}", [
        ("contract", result["contract_id"]), ("status", result["status"]),
        ("effective", result.get("effective") or "-"),
    ]))


@contract_app.command("list")
def contract_list(
    status: Annotated[str | None, typer.Option(
        help="scheduled, active, needs_attention, ended or terminated")] = None,
    customer: Annotated[str | None, typer.Option(help="Customer id")] = None,
    overdue: Annotated[bool | None, typer.Option(
        "--overdue/--not-overdue", help="Only contracts with (or without) an overdue invoice",
        show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many contracts")] = 100,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Contracts from the database, with their open and overdue invoices."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    try:
        with _api() as api:
            while len(items) < limit:
                page = api.call("GET", "/v1/contracts", params={
                    "status": status, "customer": customer,
                    "overdue": None if overdue is None else str(overdue).lower(),
                    "after": after, "limit": min(1000, limit - len(items))})
                items += page["contracts"]
                after = page["next_after"]
                if after is None:
                    break
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json({"contracts": items})
        return
    show(views.contract_table(items, width(), wide), wide)


# --- usage ------------------------------------------------------------------------------

usage_app = typer.Typer(help="Usage events.", no_args_is_help=True, epilog=EXIT_CODES)


@dataclass
class _Batch:
    events: list[Any] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    size: int = 0


def _batches(path: Path, bad: list[dict[str, Any]], batch_size: int) -> Iterator[_Batch]:
    batch = _Batch()
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except json.JSONDecodeError as exc:
                bad.append({"line": n, "id": None, "status": "rejected",
                            "reason": f"invalid JSON: {exc.msg}"})
                continue
            if batch.events and (len(batch.events) >= batch_size
                                 or batch.size + len(raw) > USAGE_BATCH_BYTES):
                yield batch
                batch = _Batch()
            batch.events.append(event)
            batch.lines.append(n)
            batch.size += len(raw) + 2
    if batch.events:
        yield batch


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


@usage_app.command("send")
def usage_send(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="usage.jsonl")],
    batch_size: Annotated[int, typer.Option(min=1, max=USAGE_BATCH,
                                            help="Events per request")] = USAGE_BATCH,
    as_json: JsonOpt = False,
) -> None:
    """Send a JSON Lines file of usage events in batches of up to 10,000.

    Every event is reported: accepted, duplicate (already stored: resending a file is
    safe), conflict (its id is stored with other content) or rejected with the reason.
    Exit code 2 if any event was rejected or in conflict.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    total = _count_lines(file)
    counts = {"accepted": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    issues: list[dict[str, Any]] = []
    sent = 0
    try:
        with _api() as api, Progress(
            TextColumn("sending usage"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=err, transient=False,
        ) as progress:
            task = progress.add_task("usage", total=total)
            bad: list[dict[str, Any]] = []
            for batch in _batches(file, bad, batch_size):
                report = api.call("POST", "/v1/usage", body={"events": batch.events})
                sent += len(batch.events)
                for key in counts:
                    counts[key] += int(report[key])
                for r in report["results"]:
                    if r["status"] != "accepted":
                        issues.append({"line": batch.lines[r["index"]], "id": r["id"],
                                       "status": r["status"], "reason": r["reason"]})
                progress.update(task, completed=sent + len(bad))
            progress.update(task, completed=total)
            counts["rejected"] += len(bad)
            issues = sorted(issues + bad, key=lambda i: int(i["line"]))
    except CliFailure as exc:
        if sent:
            exc.message += (f" — {sent} events were sent before the error; resending the file "
                            "is safe (stored events come back as duplicates)")
        fail(exc, as_json)
    if as_json:
        _emit_json({**counts, "issues": issues})
    else:
        _out().print(_kv_table(f"Usage from {file.name}", [
            (k, f"{v:,}") for k, v in counts.items()]))
        if issues:
            layout = Layout("Not accepted", [
                Column("line", justify="right"), Column("id"), Column("status"),
                Column("reason", kind="text")])
            for i in issues[:50]:
                layout.add(i["line"], i["id"] or "", i["status"], i["reason"] or "")
            show(render(layout, width()))
            if len(issues) > 50:
                _out().print(f"... and {len(issues) - 50} more (use --json for all)")
    if counts["rejected"] or counts["conflict"]:
        raise typer.Exit(EXIT_INPUT)


# --- invoices ---------------------------------------------------------------------------

invoice_app = typer.Typer(help="Invoices and payments.", no_args_is_help=True,
                          epilog=EXIT_CODES)


@invoice_app.command("list")
def invoice_list(
    contract: Annotated[str | None, typer.Option(help="Contract id")] = None,
    status: Annotated[str | None, typer.Option(
        help="open, paid, overdue, void, needs_attention, draft")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Invoices in number order."""
    try:
        with _api() as client:
            result = client.call("GET", "/v1/invoices",
                                 params={"contract": contract, "status": status, "limit": limit})
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    show(views.invoice_table(result["invoices"], width(), wide,
                             f"Invoices ({len(result['invoices'])})"), wide)


@invoice_app.command("show")
def invoice_show(
    number: Annotated[str, typer.Argument(help="Invoice number, e.g. INV-000002")],
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """One invoice with its lines, payments and reminders (`collection` in --json)."""
    try:
        with _api() as client:
            inv = client.call("GET", f"/v1/invoices/{_seg(number)}")
            collection = client.call("GET", f"/v1/invoices/{_seg(number)}/collection")
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json({**inv, "collection": collection})
        return
    show(views.invoice_detail(inv, width(), wide, collection), wide)


@invoice_app.command("draft")
def invoice_draft(
    contract_id: Annotated[str, typer.Argument(help="Contract id")],
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The open period's invoice as it would be finalized now (nothing is stored)."""
    try:
        with _api() as client:
            doc = client.call("GET", f"/v1/contracts/{_seg(contract_id)}/draft")
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(doc)
        return
    show(views.draft_detail(doc, contract_id, width(), wide), wide)


@invoice_app.command("pay")
def invoice_pay(
    number: Annotated[str, typer.Argument(help="Invoice number")],
    received: Annotated[str, typer.Option(
        "--amount", help='Amount received, e.g. "1500.00" or 45000')],
    payment_id: Annotated[str | None, typer.Option(
        help="Idempotency key (e.g. the bank reference): the same id twice records once")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a payment received for an invoice."""
    body: dict[str, Any] = {"amount": received}
    if payment_id is not None:
        body["payment_id"] = payment_id
    try:
        with _api() as client:
            result = client.call("POST", f"/v1/invoices/{_seg(number)}/payments", body=body)
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    cur = result.get("currency") or ""
    _out().print(_kv_table(f"Payment on {result['invoice_number']}", [
        ("received", money_text(received, cur)),
        ("status", result["status"]), ("paid so far", money_text(result["amount_paid"], cur)),
        ("paid on", result.get("paid_on") or "-"),
        ("recorded", "yes" if result["applied"] else "no (a resend: answered as the first time)"),
        ("via", result["recorded_via"]),
    ]))


@usage_app.command("compact")
def usage_compact(
    before: Annotated[str | None, typer.Option(
        help="Fold UTC days before this date (YYYY-MM-DD); default: today (UTC)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fold closed UTC days of usage into rollups now (the worker's schedule does this hourly).

    Writes to the database directly (BILLOW_DATABASE_URL, or the database of a
    running `billow up`). Rating reads rollups for whole days; folding never
    changes an amount.
    """
    import datetime as dt

    from activities.usage_rollup import compact_usage

    cutoff: dt.datetime | None = None
    if before is not None:
        try:
            cutoff = dt.datetime.combine(dt.date.fromisoformat(before), dt.time(), tzinfo=dt.UTC)
        except ValueError:
            err.print(f"[red]error:[/] --before: {before!r} is not a date (YYYY-MM-DD)")
            raise typer.Exit(EXIT_INPUT) from None

    async def run(conn: Any) -> Any:
        raw = await conn.get_raw_connection()
        return await compact_usage(raw.driver_connection, before=cutoff)

    from worker.cli_keys import database_url, with_conn

    url = database_url()
    try:
        done = asyncio.run(with_conn(url, run))
    except Exception as exc:
        err.print(f"[red]error:[/] compaction failed: {exc}")
        raise typer.Exit(EXIT_SERVER) from None
    result = {"compaction_id": done.id, "folded_before": done.folded_before.isoformat(),
              "events": done.events, "rollup_rows": done.rollup_rows}
    if as_json:
        _emit_json(result)
        return
    if done.id is None:
        err.print(f"nothing new to fold before {done.folded_before:%Y-%m-%d}")
        return
    _out().print(_kv_table("Usage compaction", [(k.replace("_", " "), str(v))
                                              for k, v in result.items()]))


def register(app: typer.Typer) -> None:
    """Add the ops command groups to the ``billow`` app."""
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(contract_app, name="contract")
    app.add_typer(usage_app, name="usage")
    app.add_typer(invoice_app, name="invoice")
    from worker.cli_keys import apikey_app

    app.add_typer(apikey_app, name="apikey")
    app.info.epilog = EXIT_CODES
