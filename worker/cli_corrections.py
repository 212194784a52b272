"""Correction commands of the ``billow`` CLI (SPEC.md section 11).

``billow invoice void|reissue|credit`` and ``billow credit-note list|show``
call the billow API like the other ops commands (`worker.cli_ops`). Every
correction needs an ``--id``: it is the idempotency key (sending the same
command twice changes nothing; the same id with other content is refused,
exit code 4).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from worker.cli_common import EXIT_CODES, EXIT_INPUT, CliFailure, JsonOpt, fail, out
from worker.cli_ops import _api, _emit_json, _kv_table, _seg, invoice_app

IdOpt = Annotated[str, typer.Option("--id", help="Idempotency key of the correction (one id "
                                    "space for void, reissue and credit)")]

credit_note_app = typer.Typer(help="Credit notes.", no_args_is_help=True, epilog=EXIT_CODES)


def _post(path: str, body: dict[str, Any], as_json: bool) -> dict[str, Any]:
    try:
        with _api() as api:
            result: dict[str, Any] = api.call("POST", path, body=body)
    except CliFailure as exc:
        fail(exc, as_json)
    return result


def _show_result(result: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [
        ("correction", f"{result['kind']} {result['correction_id']}"),
        ("invoice", f"{result['invoice_number']} ({result['invoice']})"),
        ("status", result["invoice_status"]), ("via", result["recorded_via"]),
    ]
    if result.get("reissued"):
        re = result["reissued"]
        rows.append(("reissued", f"{re['number']} ({re['key']}) total {re['total']}, "
                                 f"due {re['due_on']}"))
    out().print(_kv_table("Correction", rows))
    if result.get("credit_note"):
        _show_note(result["credit_note"])


def _show_note(note: dict[str, Any]) -> None:
    alloc = note["allocation"]
    refund = note.get("refund")
    out().print(_kv_table(f"Credit note {note['number']}", [
        ("invoice", f"{note['invoice_number']} ({note['invoice']})"),
        ("issued", note["issued_on"]), ("reason", note["reason"]),
        ("total", f"{note['total']} {note['currency']}"),
        ("credits returned", alloc["credits_returned"]),
        ("owed reduced", alloc["outstanding_reduced"]),
        ("refunded", alloc["refunded"] + (f" ({refund['status']})" if refund else "")),
        ("customer credit", alloc["customer_credit"]),
    ]))
    table = Table(title="Lines", title_justify="left")
    for col in ("invoice line", "kind", "amount"):
        table.add_column(col, justify="right" if col == "amount" else "left")
    for ln in note["lines"]:
        table.add_row(str(ln["line"]), ln["kind"], ln["amount"])
    out().print(table)


@invoice_app.command("void")
def invoice_void(
    number: Annotated[str, typer.Argument(help="Invoice number, e.g. INV-000002")],
    correction_id: IdOpt,
    reissue: Annotated[bool, typer.Option(help="Rate the period again and issue it anew "
                                          "(usage invoices)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Void an open or overdue invoice on which nothing is paid or credited."""
    result = _post(f"/v1/invoices/{_seg(number)}/void",
                   {"id": correction_id, "reissue": reissue}, as_json)
    _emit_json(result) if as_json else _show_result(result)


@invoice_app.command("reissue")
def invoice_reissue(
    number: Annotated[str, typer.Argument(help="Number of the voided usage invoice")],
    correction_id: IdOpt,
    as_json: JsonOpt = False,
) -> None:
    """Rate a voided usage invoice's period again and issue it as usage:<start>/2."""
    result = _post(f"/v1/invoices/{_seg(number)}/reissue", {"id": correction_id}, as_json)
    _emit_json(result) if as_json else _show_result(result)


def _parse_lines(specs: list[str]) -> list[dict[str, str]]:
    lines = []
    for spec in specs:
        position, sep, amount = spec.partition("=")
        if not sep or not position.strip().isdigit() or not amount.strip():
            raise CliFailure(EXIT_INPUT, f"--line {spec!r}: expected POSITION=AMOUNT, "
                                         'e.g. --line 2=150.00')
        lines.append({"line": position.strip(), "amount": amount.strip()})
    return lines


@invoice_app.command("credit")
def invoice_credit(
    number: Annotated[str, typer.Argument(help="Invoice number")],
    correction_id: IdOpt,
    reason: Annotated[str, typer.Option(help="billing_error, duplicate, service_issue, "
                                        "goodwill or other")],
    line: Annotated[list[str] | None, typer.Option(
        "--line", help='POSITION=AMOUNT (1-based line on the invoice), repeatable')] = None,
    amount: Annotated[str | None, typer.Option(help="One amount for the whole invoice")]
    = None,
    remainder: Annotated[str, typer.Option(help="refund or credit (kept as customer "
                                           "credit)")] = "refund",
    as_json: JsonOpt = False,
) -> None:
    """Issue a credit note against a finalized invoice."""
    body: dict[str, Any] = {"id": correction_id, "reason": reason, "remainder": remainder}
    try:
        if line:
            body["lines"] = [{"line": int(ln["line"]), "amount": ln["amount"]}
                             for ln in _parse_lines(line)]
    except CliFailure as exc:
        fail(exc, as_json)
    if amount is not None:
        body["amount"] = amount
    result = _post(f"/v1/invoices/{_seg(number)}/credit-notes", body, as_json)
    _emit_json(result) if as_json else _show_result(result)


@credit_note_app.command("list")
def credit_note_list(
    contract: Annotated[str | None, typer.Option(help="Contract id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Credit notes in number order."""
    try:
        with _api() as api:
            result = api.call("GET", "/v1/credit-notes",
                              params={"contract": contract, "limit": limit})
    except CliFailure as exc:
        fail(exc, as_json)
    if as_json:
        _emit_json(result)
        return
    table = Table(title=f"Credit notes ({len(result['credit_notes'])})", title_justify="left")
    for col in ("number", "invoice", "contract", "issued", "reason", "total", "returned",
                "owed reduced", "refunded", "credit"):
        table.add_column(col, overflow="fold", no_wrap=col == "number")
    for n in result["credit_notes"]:
        a = n["allocation"]
        table.add_row(n["number"], n["invoice_number"] or n["invoice"], n["contract_id"],
                      n["issued_on"], n["reason"], f"{n['total']} {n['currency']}",
                      a["credits_returned"], a["outstanding_reduced"], a["refunded"],
                      a["customer_credit"])
    out().print(table)


@credit_note_app.command("show")
def credit_note_show(
    number: Annotated[str, typer.Argument(help="Credit note number, e.g. CN-000001")],
    as_json: JsonOpt = False,
) -> None:
    """One credit note with its lines and allocation."""
    try:
        with _api() as api:
            note = api.call("GET", f"/v1/credit-notes/{_seg(number)}")
    except CliFailure as exc:
        fail(exc, as_json)
    _emit_json(note) if as_json else _show_note(note)


def register(app: typer.Typer) -> None:
    app.add_typer(credit_note_app, name="credit-note")
