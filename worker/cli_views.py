"""What the ops commands print: the API's JSON laid out for a terminal.

Pure functions from the API's documents to Rich renderables for a given
width, so the tables are tested at fixed widths (tests/cli) and the commands
only fetch and print. Money through `worker.cli_tables` (Babel), never
``str(Decimal)``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rich.console import Group, RenderableType

from worker.cli_tables import (
    Column,
    Layout,
    amount,
    kv,
    money_cells,
    number,
    plain_amount,
    render,
    with_currency,
)

_STATUS_SHORT = {"needs_attention": "attention"}


def _status_short(s: str) -> str:
    return _STATUS_SHORT.get(s, s)


def _key_short(key: str) -> str:
    return key.replace("commitment:", "commit:")


def _money_columns(layout: Layout, rows: list[dict[str, Any]],
                   specs: list[tuple[str, str, int, str | None]]) -> list[list[str]]:
    """Money columns (field, header, priority, short header) for ``rows``: the
    cells per row, the columns appended to ``layout``."""
    per_column: list[list[str]] = []
    for fld, header, priority, short in specs:
        currency, cells = money_cells([(r[fld], r["currency"]) for r in rows])
        layout.columns.append(Column(
            with_currency(header, currency), justify="right", priority=priority,
            short_header=with_currency(short, currency) if short else None))
        per_column.append(cells)
    return [list(cells) for cells in zip(*per_column, strict=True)] if rows else []


# --- invoices -----------------------------------------------------------------------


def invoice_table(invoices: list[dict[str, Any]], width: int | None, wide: bool = False,
                  title: str = "Invoices", with_contract: bool = True) -> RenderableType:
    columns = [Column("number"), Column("key", shorten=_key_short)]
    if with_contract:
        columns.append(Column("contract", priority=2))
    columns += [Column("status", shorten=_status_short), Column("issued", priority=4),
                Column("due", priority=2)]
    layout = Layout(title, columns)
    money = _money_columns(layout, invoices, [
        ("total", "total", 0, None), ("amount_paid", "paid", 3, None),
        ("outstanding", "outstanding", 1, "owed")])
    for inv, cells in zip(invoices, money or [[] for _ in invoices], strict=True):
        row = [inv.get("number") or "-", inv["key"]]
        if with_contract:
            row.append(inv["contract_id"])
        row += [inv["status"], inv.get("issued_on") or "", inv.get("due_on") or ""]
        layout.add(*row, *cells)
    return render(layout, width, wide)


def lines_table(doc: dict[str, Any], width: int | None, wide: bool = False) -> RenderableType:
    currency = doc["currency"]
    descriptions = doc.get("descriptions") or []
    layout = Layout("Lines", [
        Column("kind", priority=3), Column("item", kind="text"),
        Column("quantity", justify="right", priority=1, short_header="qty"),
        Column("unit price", justify="right", priority=2, short_header="price"),
        Column(with_currency("amount", currency), justify="right")])
    for i, ln in enumerate(doc["lines"]):
        item = descriptions[i] if i < len(descriptions) and descriptions[i] else _item(ln)
        layout.add(ln["kind"], item, number(ln.get("quantity")), number(ln.get("unit_price")),
                   plain_amount(ln["amount"], currency))
    return render(layout, width, wide)


def _item(ln: dict[str, Any]) -> str:
    item = str(ln.get("meter") or ln.get("fee") or ln["kind"])
    if ln.get("dimensions"):
        item += " (" + ", ".join(f"{k}={v}" for k, v in sorted(ln["dimensions"].items())) + ")"
    return item


def invoice_detail(inv: dict[str, Any], width: int | None, wide: bool = False,
                   collection: dict[str, Any] | None = None) -> RenderableType:
    cur = inv["currency"]
    head = kv(f"Invoice {inv['number']}", [
        ("contract", inv["contract_id"]), ("key", inv["key"]), ("kind", inv["kind"]),
        ("period", f"{inv['period']['start']} -> {inv['period']['end']}"),
        ("issued", inv["issued_on"]), ("due", inv["due_on"]), ("status", inv["status"]),
        ("subtotal", amount(inv["subtotal"], cur)),
        ("credits applied", amount(inv["credits_applied"], cur)),
        ("total", amount(inv["total"], cur)), ("paid", amount(inv["amount_paid"], cur)),
        ("outstanding", amount(inv["outstanding"], cur)), ("paid on", inv.get("paid_on") or "-"),
    ])
    parts: list[RenderableType] = [head, lines_table(inv, width, wide)]
    if collection is not None:
        parts.append(collection_table([collection], width, wide,
                                      f"Payments and reminders of {inv['number']}"))
    return Group(*parts)


def draft_detail(doc: dict[str, Any], contract_id: str, width: int | None,
                 wide: bool = False) -> RenderableType:
    cur = doc["currency"]
    head = kv(f"Draft of {doc['key']} ({contract_id}), as if finalized now", [
        ("period", f"{doc['period']['start']} -> {doc['period']['end']}"),
        ("subtotal", amount(doc["subtotal"], cur)),
        ("credits applied", amount(doc["credits_applied"], cur)),
        ("total", amount(doc["total"], cur)),
        ("note", "not stored: numbered and issued when the period closes"),
    ])
    return Group(head, lines_table(doc, width, wide))


def collection_table(invoices: list[dict[str, Any]], width: int | None, wide: bool = False,
                     title: str = "Payments and reminders") -> RenderableType:
    layout = Layout(title, [Column("invoice"), Column("key", priority=3, shorten=_key_short),
                            Column("event"), Column("on"),
                            Column("detail", kind="text", priority=2)])
    rows: list[tuple[list[str], tuple[Any, str] | None]] = []  # cells, (amount, currency)
    for inv in invoices:
        cur, num, key = inv["currency"], inv.get("number") or "-", inv["invoice_key"]
        events: list[tuple[str, str, str, tuple[Any, str] | None]] = []
        for p in inv["payments"]:
            detail = f"id {p['payment_id']} via {p['method']}"
            if p.get("gateway_ref"):
                detail += f" (ref {p['gateway_ref']})"
            events.append((p["received_on"], "payment", detail, (p["amount"], cur)))
        for r in inv["reminders"]:
            events.append((r["on"], r["step"].replace("_", " "), "", None))
        for u in inv["unapplied"]:
            events.append((u["received_on"], "unapplied", f"id {u['payment_id']}: {u['reason']}",
                           (u["amount"], cur)))
        if not events:
            events.append(("", "none yet", f"status {inv['status']}", None))
        for on, what, detail, money in sorted(events, key=lambda e: (e[0], e[1])):
            rows.append(([num, key, what, on, detail], money))
    currencies = {m[1] for _, m in rows if m is not None}
    single = next(iter(currencies)) if len(currencies) == 1 else None
    layout.columns.insert(4, Column(with_currency("amount", single), justify="right"))
    for cells, money in rows:
        shown = "" if money is None else (
            plain_amount(*money) if single else amount(*money))
        layout.add(*cells[:4], shown, *cells[4:])
    return render(layout, width, wide)


# --- contracts ----------------------------------------------------------------------


def contract_detail(state: dict[str, Any], width: int | None,
                    wide: bool = False) -> RenderableType:
    terms, cur = state["terms"], state["currency"]
    close = state.get("next_close")
    unbilled = state.get("unbilled_usage_events") or 0
    head = kv(f"Contract {state['contract_id']}", [
        ("customer", f"{terms['customer']['name']} ({state['customer_id']})"),
        ("plan", state["plan"]), ("status", state["status"]),
        ("term", f"{terms['starts_on']} -> {terms['term_end']}"),
        ("billing cycle", terms["billing_cycle"]),
        ("payment terms", f"net-{terms['payment_terms_days']}"),
        ("credit balance", amount(state["credit_balance"], cur)),
        *([("minimum commitment", state.get("commitment_text") or "no invoice yet")]
          if state.get("commitment") or terms.get("minimum_commitments") else []),
        ("next boundary", state.get("next_boundary") or "-"),
        ("next close", close["label"] if close else "-"),
        ("waiting for", state.get("waiting_for") or "-"),
        ("needs attention", state.get("attention") or "no"),
        ("overdue invoice", "yes" if state["has_overdue_invoice"] else "no"),
        ("unbilled usage", f"{unbilled} events (arrived after the final invoice; recorded, "
         "never billed)" if unbilled else "none"),
        ("amendments", ", ".join(state["amendments"]) or "-"),
        *[(f"dropped {d['id']}", d["reason"]) for d in state.get("dropped_amendments", [])],
        *[(f"unapplied {u['invoice_key']}", f"{amount(u['amount'], cur)}: refund or apply")
          for u in state.get("unapplied_payments", [])],
        ("source", state["source"]), ("Temporal UI", state["temporal_ui_url"]),
    ])
    if not state["invoices"]:
        return head
    return Group(head, invoice_table(state["invoices"], width, wide, with_contract=False))


def contract_table(items: list[dict[str, Any]], width: int | None,
                   wide: bool = False) -> RenderableType:
    layout = Layout(f"Contracts ({len(items)})", [
        Column("id"), Column("customer", kind="text", priority=3),
        Column("plan", priority=4), Column("status", shorten=_status_short),
        Column("term", priority=2, shorten=lambda t: t.replace(" -> ", "..")),
        Column("open", justify="right", priority=1),
        Column("overdue", justify="right", priority=1, short_header="late")])
    money = _money_columns(layout, items, [("outstanding", "outstanding", 0, "owed")])
    for c, cells in zip(items, money or [[] for _ in items], strict=True):
        layout.add(c["contract_id"], c["customer_name"], c["plan"], c["status"],
                   f"{c['starts_on']} -> {c['term_end']}", c["open_invoices"],
                   c["overdue_invoices"], *cells)
    return render(layout, width, wide)


def credit_history(hist: dict[str, Any], width: int | None,
                   wide: bool = False) -> RenderableType:
    cur = hist["currency"]
    s = hist["summary"]
    total_breakage = sum((Decimal(g["breakage"]) for g in hist["grants"]), Decimal(0))
    head = kv(f"Credits of {hist['contract_id']}", [
        ("granted", amount(s["granted"], cur)), ("consumed", amount(s["consumed"], cur)),
        ("expired", amount(s["expired"], cur)), ("balance", amount(s["balance"], cur)),
        ("breakage revenue", amount(total_breakage, cur)),
    ])
    grants = Layout("Grants", [
        Column("grant"), Column("effective", priority=3), Column("expires", priority=2)])
    rows = [dict(g, currency=cur) for g in hist["grants"]]
    money = _money_columns(grants, rows, [
        ("credits", "credits", 0, None), ("price", "price", 4, None),
        ("consumed", "consumed", 0, "used"), ("expired", "expired", 0, None),
        ("balance", "balance", 1, "left"), ("breakage", "breakage", 1, "brk")])
    for g, cells in zip(hist["grants"], money or [[] for _ in rows], strict=True):
        grants.add(g["grant_id"], g["effective"][:10], g["expires"][:10], *cells)
    moves = Layout("Movements", [Column("on"), Column("kind"), Column("grant", priority=3),
                                 Column("invoice", priority=2)])
    mrows = [dict(m, currency=cur, breakage=m.get("breakage") or "0") for m in hist["movements"]]
    mcells = _money_columns(moves, mrows, [("credits", "credits", 0, None),
                                           ("balance", "balance", 1, None)])
    for m, cells in zip(hist["movements"], mcells or [[] for _ in mrows], strict=True):
        inv = m.get("invoice_number") or m.get("invoice_key") or ""
        if m["kind"] == "expire" and m.get("breakage") is not None:
            inv = f"breakage {amount(m['breakage'], cur)}"
        moves.add(m["on"], m["kind"], m["grant_id"], inv, *cells)
    return Group(head, render(grants, width, wide), render(moves, width, wide))


def revenue_view(rev: dict[str, Any]) -> RenderableType:
    cur = rev["currency"]
    c, r = rev["credits"], rev["revenue"]
    return Group(
        kv(f"Revenue of {rev['contract_id']}", [
            ("usage from credits", amount(r["usage_from_credits"], cur)),
            ("usage billed", amount(r["usage_billed"], cur)), ("fees", amount(r["fees"], cur)),
            ("breakage", amount(r["breakage"], cur)), ("total", amount(r["total"], cur)),
            ("deferred balance", amount(r["deferred_balance"], cur)),
        ]),
        kv("Credits", [(k, amount(c[k], cur))
                       for k in ("granted", "consumed", "expired", "balance")]),
    )


# --- catalog ------------------------------------------------------------------------


def _price(entry: dict[str, Any]) -> str:
    if entry.get("unit_price") is not None:
        return f"{number(entry['unit_price'])}/unit"
    if entry.get("package"):
        p = entry["package"]
        return f"{number(p['price'])} per {number(p['size'])} units"
    tiers = entry.get("tiers") or {}
    steps = []
    for st in tiers.get("steps", []):
        upto = f"up to {number(st['up_to'])}" if st.get("up_to") is not None else "above"
        fee = f" + {number(st['flat_fee'])}" if st.get("flat_fee") else ""
        steps.append(f"{upto}: {number(st['unit_price'])}{fee}")
    return f"{tiers.get('mode', 'tiers')}: " + "; ".join(steps)


def catalog_view(doc: dict[str, Any], width: int | None, wide: bool = False) -> RenderableType:
    cat = doc["catalog"]
    meters = Layout(f"Catalog version {doc['version']}: meters", [
        Column("meter"), Column("name", kind="text"), Column("aggregation", priority=2,
                                                            short_header="agg"),
        Column("group by", kind="text", priority=3), Column("rate card", kind="text")])
    for m in cat["meters"]:
        card = [f"{_match(e.get('match') or {})}: {_price(e)}" for e in m.get("rate_card", [])]
        meters.add(m["key"], m["name"], m["aggregation"], ", ".join(m.get("group_by") or []) or
                   "-", "\n".join(card) or "-")
    plans = Layout("Plans", [
        Column("plan"), Column("name", kind="text"), Column("currency", short_header="cur"),
        Column("cycle", priority=2), Column("terms", priority=1), Column("meters", kind="text"),
        Column("recurring fees", kind="text", short_header="fees")])
    for p in cat["plans"]:
        fees = [f"{f['key']} · {f['name']}: {amount(f['monthly_amount'], p['currency'])}/month"
                for f in p.get("recurring_fees", [])]
        plans.add(p["key"], p["name"], p["currency"], p.get("billing_cycle", "monthly"),
                  f"net-{p.get('payment_terms_days', 30)}", ", ".join(p["meters"]),
                  "\n".join(fees) or "-")
    return Group(render(meters, width, wide), render(plans, width, wide))


def _match(match: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(match.items())) or "(any)"
