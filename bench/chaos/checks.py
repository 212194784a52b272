"""Invariants of one run's ledger (each run must pass them on its own).

* invoice numbers: no duplicates, no gaps, every finalized invoice numbered;
* no duplicate business keys, including duplicates under another key (two
  usage invoices for one period, two top-ups for one grant);
* every stored event billed exactly once: per contract, meter, group and
  finalized period, the quantities on its ``usage`` lines plus the
  ``late_usage`` lines naming that period add up to its events;
* the journal balances, entry by entry, and the receivable and cash accounts
  agree with the invoices, payments, credit notes and refunds;
* every payment and amendment the client was told about is recorded exactly
  once, and nothing it was refused (or never sent) is;
* corrections (issue 14, `correction_checks`): each one recorded exactly once
  with the content the client was told about, and the ledger invariants of
  SPEC.md section 11 (`activities.ledger_invariants`).

A void invoice keeps its number and lines but bills nothing: its reissue does.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.chaos.correction_checks import corrections_recorded, ledger_invariants
from bench.chaos.driver import RunRecord
from bench.chaos.workload import ADDITIVE_METERS, GROUP_BY, Workload
from models.periods import local_midnight_utc

_NUMBER = re.compile(r"(\d+)$")
_MAX_LISTED = 8


@dataclass
class CheckResult:
    name: str
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


async def run_checks(conn: AsyncConnection, workload: Workload,
                     record: RunRecord) -> list[CheckResult]:
    return [
        CheckResult("invoice numbers gapless", await _numbers(conn)),
        CheckResult("no duplicate business keys", await _duplicates(conn)),
        CheckResult("every stored event billed exactly once", await _events(conn, workload)),
        CheckResult("journal balances", await _journal(conn)),
        CheckResult("payments recorded exactly once", await _payments(conn, workload, record)),
        CheckResult("amendments recorded exactly once", await _amendments(conn, record)),
        CheckResult("corrections recorded exactly once",
                    await corrections_recorded(conn, record)),
        CheckResult("correction ledger invariants", await ledger_invariants(conn, workload)),
    ]


async def _rows(conn: AsyncConnection, sql: str, **params: Any) -> list[Any]:
    return list((await conn.execute(text(sql), params)).all())


async def _numbers(conn: AsyncConnection) -> list[str]:
    out: list[str] = []
    rows = await _rows(conn, "SELECT number FROM invoices WHERE number IS NOT NULL")
    values = []
    for r in rows:
        m = _NUMBER.search(r.number)
        if m is None:
            out.append(f"unparsable invoice number {r.number!r}")
        else:
            values.append(int(m.group(1)))
    counts = Counter(values)
    dupes = sorted(v for v, n in counts.items() if n > 1)
    if dupes:
        out.append(f"numbers used more than once: {dupes[:_MAX_LISTED]}")
    gaps = sorted(set(range(1, max(values, default=0) + 1)) - set(values))
    if gaps:
        out.append(f"{len(gaps)} numbers missing from the series, e.g. {gaps[:_MAX_LISTED]}")
    unnumbered = await _rows(
        conn, "SELECT contract_id, key, status FROM invoices WHERE number IS NULL "
        "AND status NOT IN ('draft', 'needs_attention')")
    out += [f"{r.contract_id} {r.key} is {r.status} without a number"
            for r in unnumbered[:_MAX_LISTED]]
    series = await _rows(conn, "SELECT series, next_value FROM invoice_number_series "
                               "WHERE series = 'default'")
    for s in series:
        if values and s.next_value != max(values) + 1:
            out.append(f"series {s.series} would issue {s.next_value} next; "
                       f"the highest issued is {max(values)}")
    return out


async def _duplicates(conn: AsyncConnection) -> list[str]:
    checks = {
        "invoice key": "SELECT contract_id, key, count(*) AS n FROM invoices "
                       "GROUP BY 1, 2 HAVING count(*) > 1",
        "usage invoice period": "SELECT contract_id, period_start, count(*) AS n FROM invoices "
                                "WHERE kind = 'usage' AND status <> 'void' "
                                "GROUP BY 1, 2 HAVING count(*) > 1",
        "grant": "SELECT contract_id, grant_id, count(*) AS n FROM credit_grants "
                 "GROUP BY 1, 2 HAVING count(*) > 1",
        "amendment": "SELECT contract_id, amendment_id, count(*) AS n FROM amendments "
                     "GROUP BY 1, 2 HAVING count(*) > 1",
        "payment key": "SELECT payment_key, count(*) AS n FROM payments "
                       "GROUP BY 1 HAVING count(*) > 1",
        "journal entry": "SELECT entry_key, count(*) AS n FROM journal_entries "
                         "GROUP BY 1 HAVING count(*) > 1",
        "credit movement": "SELECT entry_key, count(*) AS n FROM credit_ledger "
                           "GROUP BY 1 HAVING count(*) > 1",
        # An invoice can have several credit notes (and their refunds), each its own entry.
        "invoice posted twice": "SELECT contract_id, invoice_key, kind, count(*) AS n "
                                "FROM journal_entries WHERE kind NOT IN ('payment', "
                                "'usage_from_credits', 'breakage', 'credit_note', 'refund') "
                                "AND invoice_key IS NOT NULL GROUP BY 1, 2, 3 "
                                "HAVING count(*) > 1",
        "credit note": "SELECT contract_id, correction_id, count(*) AS n FROM credit_notes "
                       "GROUP BY 1, 2 HAVING count(*) > 1",
        "correction": "SELECT contract_id, correction_id, count(*) AS n FROM corrections "
                      "GROUP BY 1, 2 HAVING count(*) > 1",
        "refund": "SELECT credit_note_id, count(*) AS n FROM refunds "
                  "GROUP BY 1 HAVING count(*) > 1",
        "grant invoiced twice": "SELECT g.contract_id, g.grant_id, count(i.id) AS n "
                                "FROM credit_grants g JOIN invoices i ON i.contract_id = "
                                "g.contract_id AND i.key = g.invoice_key "
                                "GROUP BY 1, 2 HAVING count(i.id) > 1",
    }
    out: list[str] = []
    for what, sql in checks.items():
        for r in (await _rows(conn, sql))[:_MAX_LISTED]:
            cols = ", ".join(str(v) for v in tuple(r)[:-1])
            out.append(f"{what} {cols} appears {r.n} times")
    return out


def _group(meter: str, dims: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    dims = dims or {}
    return tuple(sorted((k, dims[k]) for k in GROUP_BY[meter] if k in dims))


async def _events(conn: AsyncConnection, workload: Workload) -> list[str]:
    out: list[str] = []
    for plan in workload.contracts:
        cid, tz = plan.contract_id, plan.terms.timezone
        invoices = await _rows(
            conn, "SELECT id, key, period_start, period_end FROM invoices WHERE contract_id = :c "
            "AND kind = 'usage' AND number IS NOT NULL AND status <> 'void'", c=cid)
        periods = [(local_midnight_utc(i.period_start, tz), local_midnight_utc(i.period_end, tz),
                    i.period_start) for i in invoices]
        billed: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
        lines = await _rows(
            conn, "SELECT i.period_start, l.kind, l.meter, l.dimensions, l.quantity, "
            "l.line_period_start FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
            "WHERE i.contract_id = :c AND i.number IS NOT NULL AND i.status <> 'void' "
            "AND l.kind IN ('usage', 'late_usage')", c=cid)
        for ln in lines:
            if ln.meter not in ADDITIVE_METERS:
                continue
            period = ln.line_period_start if ln.kind == "late_usage" else ln.period_start
            billed[(period, ln.meter, _group(ln.meter, ln.dimensions))] += ln.quantity or 0
        stored: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
        events = await _rows(
            conn, "SELECT meter, dimensions, ts, quantity FROM usage_events "
            "WHERE customer_id = :cust", cust=plan.customer_id)
        for ev in events:
            if ev.meter not in ADDITIVE_METERS:
                continue
            period = next((p for s, e, p in periods if s <= ev.ts < e), None)
            if period is None:
                continue  # in a period not invoiced yet (today's), or outside the term
            amount = ev.quantity if ADDITIVE_METERS[ev.meter] == "sum" else Decimal(1)
            stored[(period, ev.meter, _group(ev.meter, ev.dimensions))] += amount
        for key in sorted(set(billed) | set(stored), key=str):
            if billed[key] != stored[key]:
                period, meter, group = key
                out.append(f"{cid} period {period} {meter} {dict(group)}: events add up to "
                           f"{stored[key]}, invoices bill {billed[key]}")
    return out[:50]


async def _journal(conn: AsyncConnection) -> list[str]:
    out: list[str] = []
    unbalanced = await _rows(
        conn, "SELECT e.entry_key, sum(l.debit) AS dr, sum(l.credit) AS cr FROM journal_entries e "
        "JOIN journal_lines l ON l.entry_id = e.id GROUP BY e.id HAVING sum(l.debit) <> "
        "sum(l.credit)")
    out += [f"entry {r.entry_key}: debit {r.dr} != credit {r.cr}" for r in unbalanced]
    accounts = await _rows(
        conn, "SELECT e.contract_id, l.account, sum(l.debit) AS dr, sum(l.credit) AS cr "
        "FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id GROUP BY 1, 2")
    net: dict[tuple[str, str], Decimal] = {(r.contract_id, r.account): r.dr - r.cr
                                           for r in accounts}
    # A void invoice's entry is reversed; a credit note takes off the receivable what
    # it reduced or refunds, and paying the refund out settles that (Dr receivable).
    invoiced = {r.contract_id: r.total for r in await _rows(
        conn, "SELECT contract_id, sum(total) AS total FROM invoices WHERE number IS NOT NULL "
        "AND status <> 'void' GROUP BY 1")}
    paid = {r.contract_id: r.total for r in await _rows(
        conn, "SELECT contract_id, sum(amount) AS total FROM payments GROUP BY 1")}
    noted = {r.contract_id: r.total for r in await _rows(
        conn, "SELECT contract_id, sum(outstanding_reduced + refunded) AS total "
        "FROM credit_notes GROUP BY 1")}
    refunded = {r.contract_id: r.total for r in await _rows(
        conn, "SELECT contract_id, sum(amount) AS total FROM refunds "
        "WHERE status = 'refunded' GROUP BY 1")}
    zero = Decimal(0)
    for cid in sorted(set(invoiced) | set(paid) | set(noted)):
        owed = (invoiced.get(cid, zero) - paid.get(cid, zero) - noted.get(cid, zero)
                + refunded.get(cid, zero))
        receivable = net.get((cid, "receivable"), zero)
        if receivable != owed:
            out.append(f"{cid}: receivable {receivable} != invoiced {invoiced.get(cid, 0)} - "
                       f"paid {paid.get(cid, 0)} - credited {noted.get(cid, 0)} + "
                       f"refunded {refunded.get(cid, 0)}")
        cash = net.get((cid, "cash"), zero)
        if cash != paid.get(cid, zero) - refunded.get(cid, zero):
            out.append(f"{cid}: cash {cash} != payments {paid.get(cid, 0)} - refunds "
                       f"{refunded.get(cid, 0)}")
    mismatched = await _rows(
        conn, "SELECT i.contract_id, i.key, i.amount_paid, coalesce(sum(p.amount), 0) AS paid "
        "FROM invoices i LEFT JOIN payments p ON p.invoice_id = i.id "
        "GROUP BY i.id HAVING i.amount_paid <> coalesce(sum(p.amount), 0)")
    out += [f"{r.contract_id} {r.key}: amount_paid {r.amount_paid} != payments {r.paid}"
            for r in mismatched]
    return out[:50]


async def _payments(conn: AsyncConnection, workload: Workload, record: RunRecord) -> list[str]:
    out: list[str] = []
    rows = await _rows(
        conn, "SELECT p.contract_id, i.key, p.amount, p.method, p.payment_key FROM payments p "
        "JOIN invoices i ON i.id = p.invoice_id")
    auto = {c.contract_id for c in workload.contracts if c.auto_pay}
    recorded: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for r in rows:
        if r.contract_id in auto:
            continue
        recorded[(r.contract_id, r.key)].append(r.amount)
    sent: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for p in record.payments:
        sent[(p.contract_id, p.invoice_key)].append(p.amount)
    for key in sorted(set(recorded) | set(sent)):
        got, want = Counter(recorded[key]), Counter(sent[key])
        extra, lost = got - want, want - got
        if extra:
            out.append(f"{key[0]} {key[1]}: recorded {sorted(extra.elements())} more than "
                       f"the client paid (sent {sorted(want.elements())})")
        if lost:
            out.append(f"{key[0]} {key[1]}: payments {sorted(lost.elements())} the client was "
                       "told about are not recorded")
    charges = Counter((r.contract_id, r.key) for r in rows if r.contract_id in auto)
    out += [f"{cid} {key}: auto-pay charged {n} times" for (cid, key), n in charges.items()
            if n > 1]
    return out[:50]


async def _amendments(conn: AsyncConnection, record: RunRecord) -> list[str]:
    rows = await _rows(conn, "SELECT contract_id, amendment_id, kind FROM amendments")
    got = Counter((r.contract_id, r.amendment_id) for r in rows
                  if not r.amendment_id.startswith("credit_grants:"))
    want = Counter((cid, aid) for cid, aid, _ in record.amendments)
    out = [f"{cid} amendment {aid}: recorded {got[(cid, aid)]} times, told {want[(cid, aid)]}"
           for cid, aid in sorted(set(got) | set(want)) if got[(cid, aid)] != want[(cid, aid)]]
    return out[:50]
