"""The fault run against the control, contract by contract, from both databases.

Compared: every finalized invoice by key (kind, period, dates, lines, amounts,
status, amount paid, credited, outstanding, void date; numbers only by their
order within the contract, since numbering is global and follows finalization
order), the credit and revenue summaries, payments, amendments, grants,
dunning events, the contract's status and terms, and the journal's balance
per account; and for corrections (issue 14): credit notes in issue order
(invoice, lines, total, allocation, reason, date), refunds, the corrections
recorded with their content digests, and what the client sent and was told
(`compare_corrections`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.chaos.correcting import SentCorrection
from bench.chaos.correction_compare import (
    CORRECTION_PARTS,
    correction_snapshot,
    day_of,
    grant_effective,
    sent_view,
)
from bench.chaos.workload import Workload
from worker.simulate import contract_report

_NUMBER_DIGITS = 12


@dataclass
class Difference:
    contract_id: str
    what: str  # invoice <key> | credits | revenue | payments | ...
    detail: str


async def snapshot(conn: AsyncConnection, workload: Workload) -> dict[str, dict[str, Any]]:
    """Everything compared, per contract, as plain JSON-like data."""
    out: dict[str, dict[str, Any]] = {}
    for plan in workload.contracts:
        cid = plan.contract_id
        report = await contract_report(conn, cid, plan.terms.currency)
        paid = {r.key: r for r in await _rows(
            conn, "SELECT key, amount_paid, voided_on FROM invoices WHERE contract_id = :c",
            c=cid)}
        invoices: dict[str, Any] = {}
        for doc in report["invoices"]:
            row = paid[doc["key"]]
            invoices[doc["key"]] = {**{k: v for k, v in doc.items() if k != "number"},
                                    "amount_paid": str(row.amount_paid),
                                    "voided_on": day_of(row.voided_on)}
        usage_order = [d["key"] for d in sorted(
            (d for d in report["invoices"] if d["kind"] == "usage"),
            key=lambda d: str(d["number"]).rjust(_NUMBER_DIGITS))]
        sent = {a.body["id"]: a.body for a in plan.amend_early + plan.amend_late}
        amendments = []
        for r in await _rows(conn, "SELECT amendment_id, kind, effective, document FROM "
                             "amendments WHERE contract_id = :c ORDER BY amendment_id", c=cid):
            body = sent.get(r.amendment_id, {})
            # An amendment without an explicit instant takes effect when it arrives.
            timed = "effective" in body or r.kind == "change_billing_cycle"
            doc = {k: v for k, v in (r.document or {}).items() if k != "received_at"}
            amendments.append([r.amendment_id, r.kind,
                               r.effective.isoformat() if timed else "(on arrival)", doc])
        row = (await _rows(conn, "SELECT status, term_end, terms FROM contracts WHERE id = :c",
                           c=cid))
        out[cid] = {
            "invoices": invoices,
            "usage invoice order": usage_order,
            "credits": report["credits"],
            "revenue": report["revenue"],
            "payments": sorted([r.key, str(r.amount), r.method, r.received_on.isoformat()]
                               for r in await _rows(
                conn, "SELECT i.key, p.amount, p.method, p.received_on FROM payments p "
                "JOIN invoices i ON i.id = p.invoice_id WHERE p.contract_id = :c", c=cid)),
            "amendments": amendments,
            "grants": [[r.grant_id, str(r.credits), str(r.price), r.priority,
                        grant_effective(r.grant_id, r.effective), r.expires.isoformat(),
                        r.invoice_key]
                       for r in await _rows(
                conn, "SELECT * FROM credit_grants WHERE contract_id = :c ORDER BY grant_id",
                c=cid)],
            "dunning": sorted([r.invoice_key, r.kind, r.occurred_on.isoformat()]
                              for r in await _rows(
                conn, "SELECT invoice_key, kind, occurred_on FROM dunning_events "
                "WHERE contract_id = :c", c=cid)),
            "contract": ({"status": row[0].status, "term_end": row[0].term_end.isoformat(),
                          "terms": row[0].terms} if row else None),
            **await correction_snapshot(conn, cid, report),
            "journal": {r.account: str(r.net) for r in await _rows(
                conn, "SELECT l.account, sum(l.debit) - sum(l.credit) AS net FROM "
                "journal_entries e JOIN journal_lines l ON l.entry_id = e.id "
                "WHERE e.contract_id = :c GROUP BY 1 ORDER BY 1", c=cid)},
        }
    return out


async def _rows(conn: AsyncConnection, sql: str, **params: Any) -> list[Any]:
    return list((await conn.execute(text(sql), params)).all())


def compare(control: dict[str, dict[str, Any]],
            chaos: dict[str, dict[str, Any]]) -> list[Difference]:
    out: list[Difference] = []
    for cid in sorted(set(control) | set(chaos)):
        a, b = control.get(cid, {}), chaos.get(cid, {})
        ia, ib = a.get("invoices", {}), b.get("invoices", {})
        for key in sorted(set(ia) | set(ib)):
            if key not in ib:
                out.append(Difference(cid, f"invoice {key}", "missing in the fault run"))
            elif key not in ia:
                out.append(Difference(cid, f"invoice {key}", "only in the fault run"))
            else:
                found = diff(ia[key], ib[key])
                if found:
                    out.append(Difference(cid, f"invoice {key}", "; ".join(found[:6])))
        for what in ("usage invoice order", "credits", "revenue", "payments", "amendments",
                     "grants", "dunning", "contract", "journal", *CORRECTION_PARTS):
            found = diff(a.get(what), b.get(what))
            if found:
                out.append(Difference(cid, what, "; ".join(found[:6])))
    return out


def compare_corrections(control: list[SentCorrection],
                        chaos: list[SentCorrection]) -> list[Difference]:
    """What the client sent and was told, correction by correction: the same
    bodies, the same skips, the same statuses and the same answers (numbers
    and gateway references aside: `normalized_answer`)."""
    out: list[Difference] = []
    a = {(c.contract_id, c.key): c for c in control}
    b = {(c.contract_id, c.key): c for c in chaos}
    for cid, key in sorted(set(a) | set(b)):
        x, y = a.get((cid, key)), b.get((cid, key))
        if x is None or y is None:
            out.append(Difference(cid, f"correction {key}",
                                  "only in the " + ("fault run" if x is None else "control")))
            continue
        found = diff(sent_view(x), sent_view(y))
        if found:
            out.append(Difference(cid, f"correction {x.correction_id} ({x.action} "
                                       f"{x.invoice_key})", "; ".join(found[:6])))
    return out


def diff(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` differs from ``expected``; decimal strings compare as decimals."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(actual), key=str):
            out += diff(expected.get(key), actual.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path or 'list'}: control {_short(expected)}, fault run {_short(actual)}"]
        return [d for i, (e, x) in enumerate(zip(expected, actual, strict=True))
                for d in diff(e, x, f"{path}[{i}]")]
    if _decimal(expected) != _decimal(actual):
        return [f"{path or 'value'}: control {_short(expected)}, fault run {_short(actual)}"]
    return []


def _decimal(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def _short(value: Any) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 160 else text_[:157] + "..."
