"""``billow events list|replay|endpoints``: events through the running API."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from worker.cli_common import EXIT_CODES, CliFailure, JsonOpt, fail, out
from worker.cli_ops import _api, _emit_json, _seg

events_app = typer.Typer(help="Events and webhook endpoints.", no_args_is_help=True,
                         epilog=EXIT_CODES)


@events_app.command("list")
def events_list(
    after: Annotated[str | None, typer.Option(
        help="Sequence number or event id: events after it (default: from the start)")] = None,
    type: Annotated[list[str] | None, typer.Option(
        "--type", "-t", help="Only this type (repeat; 'invoice.*' for a family)")] = None,
    contract: Annotated[str | None, typer.Option(help="Only this contract's events")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Events in order; the same `--after` always lists the same events."""
    params: dict[str, Any] = {"after": after, "contract": contract, "limit": limit,
                              "type": type or None}
    try:
        with _api() as api:
            result = api.call("GET", "/v1/events", params=params)
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    table = Table(title=f"Events ({len(result['events'])})", title_justify="left")
    for col in ("sequence", "type", "contract", "timestamp", "about"):
        table.add_column(col, overflow="fold", justify="right" if col == "sequence" else "left")
    for e in result["events"]:
        data = e["data"]
        about = data.get("number") or data.get("invoice_number") or data.get("status") or ""
        table.add_row(str(e["sequence"]), e["type"], e.get("contract_id") or "",
                      e["timestamp"], str(about))
    out().print(table)
    if result.get("next_after") is not None:
        out().print(f"more: --after {result['next_after']}")


@events_app.command("replay")
def events_replay(
    endpoint: Annotated[str, typer.Option(help="Webhook endpoint id (we_...)")],
    after: Annotated[str, typer.Option(
        help="Re-send every event after this sequence number or event id (0: all)")],
    as_json: JsonOpt = False,
) -> None:
    """Re-send an endpoint's events from a point, in order (re-enables a disabled one)."""
    value: int | str = int(after) if after.isdigit() else after
    try:
        with _api() as api:
            result = api.call("POST", f"/v1/webhook-endpoints/{_seg(endpoint)}/replay",
                              body={"after": value})
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    out().print(f"endpoint {result['id']} ({result['url']}): {result['status']}, re-sending "
              f"events after {result['cursor']}")


@events_app.command("endpoints")
def events_endpoints(as_json: JsonOpt = False) -> None:
    """Registered webhook endpoints and where their delivery stands."""
    try:
        with _api() as api:
            result = api.call("GET", "/v1/webhook-endpoints")
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    table = Table(title="Webhook endpoints", title_justify="left")
    for col in ("id", "url", "types", "status", "cursor", "delivered", "last error"):
        table.add_column(col, overflow="fold")
    for e in result["endpoints"]:
        table.add_row(e["id"], e["url"], ", ".join(e["event_types"]) or "*", e["status"],
                      str(e["cursor"]), str(e["delivered"]),
                      e.get("disabled_reason") or e.get("last_error") or "")
    out().print(table)


@events_app.command("add-endpoint")
def events_add_endpoint(
    url: Annotated[str, typer.Argument(help="Where events are POSTed")],
    type: Annotated[list[str] | None, typer.Option(
        "--type", "-t", help="Event type to send (repeat; 'invoice.*'); default: all")] = None,
    description: Annotated[str, typer.Option(help="What it is for")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Register a webhook endpoint and print its signing secret (shown only now)."""
    try:
        with _api() as api:
            result = api.call("POST", "/v1/webhook-endpoints", body={
                "url": url, "event_types": type or [], "description": description})
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    out().print(json.dumps({"id": result["id"], "secret": result["secret"]}, indent=2))
    out().print("Store the secret now: it is not shown again.")


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
