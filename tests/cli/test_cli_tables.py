"""The CLI's tables at fixed widths: money, ids and statuses are never broken, the
least important columns give way, ``--wide`` keeps them all (pure: no servers)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rich.console import Console

from tests.support.snapshots import assert_snapshot
from worker import cli_views as views
from worker.cli_tables import Column, Layout, fit, render


def _text(renderable: Any, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def _invoice(number: str | None, key: str, status: str, total: str, paid: str, owed: str,
             contract: str = "globex-enterprise-2027", currency: str = "USD") -> dict[str, Any]:
    return {"number": number, "key": key, "contract_id": contract, "kind": key.split(":")[0],
            "status": status, "currency": currency, "period_start": "2027-01-01",
            "period_end": "2028-01-01", "issued_on": "2027-01-01", "due_on": "2027-03-02",
            "subtotal": total, "credits_applied": "0.00", "total": total, "amount_paid": paid,
            "outstanding": owed, "paid_on": None}


INVOICES = [
    _invoice("INV-1000001", "commitment:2027-01-01", "paid", "123456789012.50",
             "123456789012.50", "0.00"),
    _invoice("INV-1000002", "top_up:2027-08-01", "overdue", "45000", "0", "45000"),
    _invoice(None, "usage:2027-10-01", "needs_attention", "0", "0", "0"),
    _invoice("INV-1000003", "usage:2027-07-01", "open", "1500", "0", "1500",
             contract="kaisha-2027", currency="JPY"),
]

_AMOUNT = re.compile(r"-?\d{1,3}(,\d{3})*(\.\d+)?")


def _whole_amounts(text: str, *amounts: str) -> None:
    for a in amounts:
        assert any(a in line for line in text.splitlines()), (a, text)


@pytest.mark.parametrize("width", [80, 120])
def test_invoice_list_with_mixed_currencies_and_huge_amounts(width: int) -> None:
    text = _text(views.invoice_table(INVOICES, width), width)
    assert max(len(ln) for ln in text.splitlines()) <= width
    # Mixed currencies: the code is in every cell (never split from its number).
    _whole_amounts(text, "123,456,789,012.50\u00a0USD", "45,000.00\u00a0USD", "1,500\u00a0JPY",
                   "0.00\u00a0USD")
    assert "needs_attention" in text or "attention" in text
    assert_snapshot(f"invoice-list-mixed.{width}.txt", text)


def test_wide_keeps_every_column() -> None:
    text = _text(views.invoice_table(INVOICES, 80, wide=True), 1000)
    header = text.splitlines()[1]
    for col in ("number", "key", "contract", "status", "issued", "due", "total", "paid",
                "outstanding"):
        assert col in header
    assert "not shown" not in text


def test_columns_give_way_in_order_of_importance() -> None:
    layout = Layout("t", [Column("id"), Column("note", kind="text", priority=2),
                          Column("extra", priority=1), Column("amount", justify="right")])
    layout.add("a" * 20, "some words that can wrap", "x" * 20, "1,000,000.00")
    assert fit(layout, 200).dropped == []
    assert fit(layout, 70).dropped == []  # the note wraps between words
    assert fit(layout, 60).dropped == ["note"]  # extra is more important
    assert fit(layout, 50).dropped == ["extra"]  # but a wrapped note fits where it does not
    assert fit(layout, 40).dropped == ["note", "extra"]
    # Fixed cells are exactly as wide as they are: never cut.
    assert fit(layout, 40).widths == [20, 12]
    # Too narrow for even the essential columns: they keep their width.
    assert fit(layout, 10).widths == [20, 12]


def test_a_text_column_wraps_between_words_only() -> None:
    layout = Layout("t", [Column("item", kind="text"), Column("amount", justify="right")])
    layout.add("tokens · LLM tokens (thousands) (model=gpt-4)", "15,000.00")
    text = _text(render(layout, 30), 30)
    words = {w for ln in text.splitlines()[3:] for w in ln.split()}
    assert {"tokens", "LLM", "(thousands)", "(model=gpt-4)", "15,000.00"} <= words


def test_lines_name_their_meters_and_top_ups_say_what_they_sold() -> None:
    doc = {"currency": "USD", "lines": [
        {"kind": "usage", "meter": "tokens", "dimensions": {"model": "gpt-4"},
         "quantity": "1000000", "unit_price": "0.015", "amount": "15000.00"},
        {"kind": "top_up", "amount": "18000.00"}],
        "descriptions": ["tokens · LLM tokens (thousands) (model=gpt-4)",
                         "credits top-up: 20,000.00\u00a0USD of credits (grant crm-amend-0043), "
                         "usable from 2027-08-01 until 2028-01-01"]}
    for width in (80, 120):
        text = _text(views.lines_table(doc, width), width)
        assert_snapshot(f"lines-top-up.{width}.txt", text)
        _whole_amounts(text, "15,000.00", "18,000.00", "1,000,000", "0.015")
