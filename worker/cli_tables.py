"""Tables for the CLI that never break a number apart.

Rich fits a table to the terminal by wrapping and folding cells, so at 80
columns "100000.00" became "10000" over "0.00", and ids and statuses broke
mid-word. Here the layout is decided before Rich sees the table:

- Every cell that must be read whole (money, numbers, ids, statuses, dates)
  is *fixed*: never wrapped, its column exactly as wide as its widest cell.
- Free text may wrap between words, never inside one.
- When the fixed columns and the text's longest words do not fit the width,
  columns switch to their abbreviated form, then the least important columns
  are dropped (their values are in ``--json``; ``--wide`` keeps them all).
- Money comes from `models.formatting` (Babel): grouped, to the currency's
  minor digits; the currency goes in the header when a column has one
  ("total USD") and in each cell when it mixes several.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from models.formatting import money_amount, money_code, quantity

Kind = Literal["fixed", "text"]
# The look of every table: a rule under the header, two spaces between
# columns, nothing at the edges (what `_gap` measures).
_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False,
                          "collapse_padding": True}
_MIN_TEXT = 10  # a wrapping column narrower than this reads as a list of words


@dataclass
class Column:
    header: str
    kind: Kind = "fixed"
    # 0: always shown; higher numbers are dropped first when space runs out.
    priority: int = 0
    justify: Literal["left", "right"] = "left"
    short_header: str | None = None
    # A shorter form of a cell, used (with `short_header`) before dropping columns.
    shorten: Callable[[str], str] | None = None


@dataclass
class Layout:
    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    caption: str | None = None

    def add(self, *cells: Any) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells])


@functools.cache
def _gap(columns: int) -> int:
    """What a table of ``columns`` adds to their widths (separators, padding), measured."""
    probe = Table(show_header=False, **_STYLE)
    for _ in range(columns):
        probe.add_column(width=1, no_wrap=True)
    probe.add_row(*["x"] * columns)
    console = Console(width=1000, record=True, file=io.StringIO())
    console.print(probe)
    return max(cell_len(ln.rstrip()) for ln in console.export_text().splitlines()) - columns


def _words_width(text: str) -> int:
    return max((cell_len(w) for ln in text.splitlines() for w in ln.split()), default=0)


def _lines_width(text: str) -> int:
    return max((cell_len(ln) for ln in text.splitlines()), default=0)


@dataclass
class _Fit:
    columns: list[int]  # indexes of the columns shown
    headers: list[str]
    rows: list[list[str]]
    widths: list[int]
    dropped: list[str]


def _widths(layout: Layout, shown: list[int], headers: list[str], rows: list[list[str]],
            width: int | None) -> list[int] | None:
    """Column widths that fit ``width`` without breaking a fixed cell or a word."""
    natural: list[int] = []
    minimum: list[int] = []
    for pos, i in enumerate(shown):
        col = layout.columns[i]
        cells = [r[pos] for r in rows]
        longest = max([_lines_width(c) for c in cells] + [cell_len(headers[pos])])
        natural.append(longest)
        if col.kind == "fixed":
            minimum.append(longest)
        else:
            words = max([_words_width(c) for c in cells] + [cell_len(headers[pos])])
            minimum.append(max(words, min(longest, _MIN_TEXT)))
    if width is None:
        return natural
    avail = width - _gap(len(shown))
    if sum(minimum) > avail:
        return None
    if sum(natural) <= avail:
        return natural
    # Text columns share what the fixed ones leave, beyond their minimum in
    # proportion to how much more they would like.
    spare = avail - sum(minimum)
    wants = [n - m for n, m in zip(natural, minimum, strict=True)]
    total = sum(wants)
    out = [m + (spare * w // total if total else 0) for m, w in zip(minimum, wants, strict=True)]
    return out


def _cells(layout: Layout, shown: list[int], short: bool) -> tuple[list[str], list[list[str]]]:
    headers: list[str] = []
    for i in shown:
        col = layout.columns[i]
        headers.append(col.short_header if short and col.short_header else col.header)
    rows = []
    for r_in in layout.rows:
        row = []
        for i in shown:
            col = layout.columns[i]
            row.append(col.shorten(r_in[i]) if short and col.shorten else r_in[i])
        rows.append(row)
    return headers, rows


def _try(layout: Layout, shown: list[int], short: bool, width: int | None) -> _Fit | None:
    headers, rows = _cells(layout, shown, short)
    widths = _widths(layout, shown, headers, rows, width)
    if widths is None:
        return None
    dropped = [c.header for i, c in enumerate(layout.columns) if i not in shown]
    return _Fit(shown, headers, rows, widths, dropped)


def _greedy(layout: Layout, short: bool, width: int | None) -> _Fit | None:
    """The essential columns, then each other one in order of importance if it fits."""
    essential = [i for i, c in enumerate(layout.columns) if c.priority == 0]
    best = _try(layout, essential, short, width)
    if best is None:
        return None
    optional = sorted((i for i, c in enumerate(layout.columns) if c.priority > 0),
                      key=lambda i: (layout.columns[i].priority, i))
    for i in optional:
        attempt = _try(layout, sorted([*best.columns, i]), short, width)
        if attempt is not None:
            best = attempt
    return best


def fit(layout: Layout, width: int | None) -> _Fit:
    """Choose the columns and their widths for ``width`` (None: all, at full width).

    Every column in full form if they fit; else the most columns that fit, in
    full form or abbreviated (full form wins a tie); when not even the
    essential ones fit, those at their full width (the terminal wraps the line,
    no cell is cut).
    """
    everything = list(range(len(layout.columns)))
    whole = _try(layout, everything, False, width)
    if whole is not None:
        return whole
    choices = [f for f in (_greedy(layout, False, width), _greedy(layout, True, width))
               if f is not None]
    if choices:
        return max(choices, key=lambda f: len(f.columns))  # max keeps the first of equals
    essential = [i for i, c in enumerate(layout.columns) if c.priority == 0]
    found = _try(layout, essential, True, None)
    assert found is not None  # no width: always fits
    return found


def render(layout: Layout, width: int | None, wide: bool = False) -> RenderableType:
    """The table for a terminal ``width`` columns wide (all columns with ``wide``)."""
    chosen = fit(layout, None if wide else width)
    table = Table(title=layout.title, title_justify="left", caption=layout.caption,
                  caption_justify="left", **_STYLE)
    for pos, i in enumerate(chosen.columns):
        col = layout.columns[i]
        table.add_column(chosen.headers[pos], justify=col.justify, width=chosen.widths[pos],
                         no_wrap=col.kind == "fixed", overflow="fold")
    for row in chosen.rows:
        table.add_row(*row)
    if not chosen.dropped or wide:
        return table
    note = Text(f"not shown at this width: {', '.join(chosen.dropped)} (--wide or --json)",
                style="dim")
    return Group(table, note)


def kv(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    """A two-column ``name  value`` table; values wrap between words."""
    table = Table(title=title, show_header=False, title_justify="left", **_STYLE)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, "" if v is None else str(v))
    return table


def print_all(console: Console, *renderables: RenderableType | None) -> None:
    for r in renderables:
        if r is not None:
            console.print(r)


# --- cells ------------------------------------------------------------------------


def money_cells(amounts: Sequence[tuple[Any, str]]) -> tuple[str | None, list[str]]:
    """(the currency for the header or None, the cells) of one money column.

    One currency: plain grouped amounts under a header naming it. Several:
    each cell carries its code.
    """
    currencies = {c for _, c in amounts}
    if len(currencies) <= 1:
        only = next(iter(currencies), None)
        return only, [money_amount(Decimal(str(a)), c) for a, c in amounts]
    return None, [money_code(Decimal(str(a)), c) for a, c in amounts]


def with_currency(header: str, currency: str | None) -> str:
    return f"{header} {currency}" if currency else header


def amount(value: Any, currency: str) -> str:
    """``45,000.00 USD`` for a key-value row."""
    return money_code(Decimal(str(value)), currency)


def plain_amount(value: Any, currency: str) -> str:
    """``45,000.00``: for a column whose header names the currency."""
    return money_amount(Decimal(str(value)), currency)


def number(value: Any) -> str:
    """A quantity or unit price, grouped, every digit kept; '' for None."""
    return "" if value is None or value == "" else quantity(Decimal(str(value)))
