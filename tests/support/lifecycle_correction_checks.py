"""Invariants of corrections (SPEC.md section 11, billow issue 14) a random
lifecycle's record must keep; registered in tests/support/lifecycle_checks.py.

Each function takes the run's `Outcome` and returns its violations. They
judge the same `LedgerSnapshot` as every other check (no second SQL path);
the journal's balance, the credit identity with returned credits, deferred
revenue never below zero and recognized + breakage = paid are the adapted
checks of lifecycle_checks.py. Here:

- `outstanding_matches`: outstanding = total - paid - credited (step 2 of
  the allocation), never below zero, 0 once void, and the same in the
  workflow's state;
- `credit_notes_allocated`: each note's lines and allocation sum to its
  total, never beyond what its invoice lines leave uncredited, credits
  returned as SPEC 11 step 1 computes them, a remainder only once nothing
  is owed, its refund or customer credit where the allocation says;
- `note_numbers_gapless`: the ``CN-`` series, gapless and in issue order;
- `voids_reverse_everything`: a void invoice has nothing paid or credited,
  its entries net to zero, its credits are back, a reissue replaces only a
  void usage invoice of the same period;
- `corrections_idempotent`: an id answered once is answered the same way
  again, and never accepted with other content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter

from models.corrections import CUSTOMER_CREDIT_GRANT_PREFIX, Correction, correction_digest
from models.money import mul_div, round_money
from tests.support.lifecycle_outcome import Outcome, ledger_corrected

USAGE_KINDS = ("usage", "late_usage", "minimum", "maximum")
GRANT_KINDS = ("commitment", "top_up")
ZERO = Decimal(0)
_CORRECTION: TypeAdapter[Correction] = TypeAdapter(Correction)


def _d(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def _sum(rows: Iterable[dict[str, Any]], field: str) -> Decimal:
    return sum((_d(r[field] or 0) for r in rows), ZERO)


def _owed(inv: dict[str, Any]) -> Decimal:
    return _d(inv["total"]) - _d(inv["amount_paid"]) - _d(inv["credit_allocated"])


def outstanding_matches(o: Outcome) -> list[str]:
    """SPEC 11: ``outstanding = total - paid - credited`` (what notes allocated in
    step 2), never below zero, 0 once void; the workflow's state says the same."""
    snap = o.ledger
    if snap is None:
        return []
    out = []
    for inv in snap.invoices:
        notes = [n for n in snap.credit_notes if n["invoice_id"] == inv["id"]]
        key = inv["key"]
        if _d(inv["credited"]) != _sum(notes, "total"):
            out.append(f"{key}: credited {inv['credited']}, its notes total "
                       f"{_sum(notes, 'total')}")
        if _d(inv["credit_allocated"]) != _sum(notes, "outstanding_reduced"):
            out.append(f"{key}: credit_allocated {inv['credit_allocated']}, its notes took "
                       f"{_sum(notes, 'outstanding_reduced')} off what was owed")
        if inv["number"] is None:
            if notes or _d(inv["amount_paid"]) != 0:
                out.append(f"{key}: not finalized, with notes or payments")
            continue
        if inv["status"] == "void":
            if _d(inv["amount_paid"]) != 0 or notes:
                out.append(f"{key}: void with {inv['amount_paid']} paid and {len(notes)} notes")
        elif _owed(inv) < 0:
            out.append(f"{key}: outstanding {_owed(inv)} below zero (total {inv['total']}, "
                       f"paid {inv['amount_paid']}, credited {inv['credit_allocated']})")
    if o.view is not None:
        rows = {i["key"]: i for i in snap.invoices}
        after_end = ledger_corrected(o)
        for inv in o.view["invoices"]:
            row = rows.get(inv["key"])
            if row is None or row["number"] is None or inv["key"] in after_end:
                continue
            state = ZERO if inv["status"] == "void" else (
                _d(inv["total"]) - _d(inv["amount_paid"]) - _d(inv["credit_allocated"]))
            ledger = ZERO if row["status"] == "void" else _owed(row)
            if state != ledger:
                out.append(f"{inv['key']}: state outstanding {state}, ledger {ledger}")
    return out[:8]


def _whole(x: Decimal, currency: str) -> bool:
    return round_money(x, currency) == x


def credit_notes_allocated(o: Outcome) -> list[str]:
    """SPEC 11: a note's lines and its allocation both sum to its total; lines
    never beyond what is uncredited (usage-kind lines together at most their
    net total); step 1 returns ``round_half_up(usage credited x credits_applied
    / usage-kind lines)``, at most what earlier notes left; a remainder
    (refund, customer credit) only once nothing is owed any more."""
    snap = o.ledger
    if snap is None:
        return []
    out: list[str] = []
    invoices = {i["id"]: i for i in snap.invoices}
    lines_of: dict[int, list[dict[str, Any]]] = {}
    for ln in snap.lines:
        lines_of.setdefault(ln["invoice_id"], []).append(ln)
    grants = {g["grant_id"]: g for g in snap.grants}
    by_invoice: dict[int, list[dict[str, Any]]] = {}
    for n in sorted(snap.credit_notes, key=_number_order):
        by_invoice.setdefault(n["invoice_id"], []).append(n)
    for iid, notes in by_invoice.items():
        inv = invoices.get(iid)
        if inv is None:
            out.append(f"notes {[n['number'] for n in notes]} credit an invoice of no contract")
            continue
        out += _notes_of(inv, notes, lines_of.get(iid, []), grants)
    return out[:8]


def _notes_of(inv: dict[str, Any], notes: list[dict[str, Any]], lines: list[dict[str, Any]],
              grants: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    key, cur = inv["key"], inv["currency"]
    amount = {ln["position"] + 1: _d(ln["amount"]) for ln in lines}
    kind = {ln["position"] + 1: ln["kind"] for ln in lines}
    usage_total = sum((a for p, a in amount.items() if kind[p] in USAGE_KINDS), ZERO)
    credited: dict[int, Decimal] = {}
    returned = ZERO
    remainder_at: str | None = None
    for n in notes:
        name = f"{n['number']} on {key}"
        parts = [_d(n[f]) for f in ("credits_returned", "outstanding_reduced", "refunded",
                                    "customer_credit")]
        if sum(parts, ZERO) != _d(n["total"]) or min(parts) < 0 or _d(n["total"]) <= 0:
            out.append(f"{name}: allocation {parts} for a total of {n['total']}")
        if _sum(n["lines"], "amount") != _d(n["total"]):
            out.append(f"{name}: lines sum to {_sum(n['lines'], 'amount')}, total {n['total']}")
        # Whole minor units: the note and what it returns; the rest follows what
        # was owed to its last decimal (a payment may carry more, SPEC 6).
        if not all(_whole(x, cur) for x in (_d(n["total"]), parts[0], sum(parts[1:], ZERO))):
            out.append(f"{name}: amounts {parts} not in whole minor units of {cur}")
        usage = ZERO
        for ln in n["lines"]:
            pos = ln["invoice_line"]
            if pos not in amount or ln["kind"] != kind[pos] or _d(ln["amount"]) <= 0:
                out.append(f"{name}: credits line {pos} ({ln['kind']}) of {len(amount)}")
                continue
            credited[pos] = credited.get(pos, ZERO) + _d(ln["amount"])
            if credited[pos] > amount[pos]:
                out.append(f"{name}: line {pos} credited {credited[pos]} of {amount[pos]}")
            if kind[pos] in USAGE_KINDS:
                usage += _d(ln["amount"])
        if sum((c for p, c in credited.items() if kind[p] in USAGE_KINDS), ZERO) > max(
                usage_total, ZERO):
            out.append(f"{name}: usage lines credited beyond their net total {usage_total}")
        applied = _d(inv["credits_applied"])
        want = ZERO
        if usage > 0 and usage_total > 0 and applied > 0 and inv["kind"] == "usage":
            share = round_money(mul_div(usage, applied, usage_total), cur)
            want = max(min(share, applied - returned), ZERO)
        if _d(n["credits_returned"]) != want:
            out.append(f"{name}: returns {n['credits_returned']} credits, step 1 says {want}")
        returned += _d(n["credits_returned"])
        if remainder_at is not None and _d(n["outstanding_reduced"]) > 0:
            out.append(f"{name}: reduces what is owed after {remainder_at} left a remainder")
        if _d(n["refunded"]) + _d(n["customer_credit"]) > 0:
            remainder_at = remainder_at or str(n["number"])
        if n["issued_on"] < inv["issued_on"]:
            out.append(f"{name}: issued {n['issued_on']}, before its invoice {inv['issued_on']}")
        out += _remainder_documents(n, name, grants)
    if remainder_at is not None and inv["status"] != "void" and _owed(inv) != 0:
        out.append(f"{key}: {_owed(inv)} still owed after {remainder_at} refunded or kept "
                   "a remainder")
    return out


def _remainder_documents(n: dict[str, Any], name: str,
                         grants: dict[str, dict[str, Any]]) -> list[str]:
    """The refund and the customer-credit grant the allocation names, and only those."""
    out = []
    refund = n["refund"]
    if (_d(n["refunded"]) > 0) != (refund is not None) or (
            refund is not None and _d(refund["amount"]) != _d(n["refunded"])):
        out.append(f"{name}: refunded {n['refunded']}, refund row "
                   f"{None if refund is None else refund['amount']}")
    grant = grants.get(f"{CUSTOMER_CREDIT_GRANT_PREFIX}{n['correction_id']}")
    if (_d(n["customer_credit"]) > 0) != (grant is not None) or (grant is not None and not (
            _d(grant["credits"]) == _d(grant["price"]) == _d(n["customer_credit"]))):
        out.append(f"{name}: customer credit {n['customer_credit']}, grant "
                   f"{None if grant is None else (grant['credits'], grant['price'])}")
    return out


def _value(number: str | None) -> int | None:
    if number is None:
        return None
    digits = re.sub(r"\D", "", number)
    return int(digits) if digits else None


def _number_order(n: dict[str, Any]) -> tuple[int, int]:
    return (_value(n["number"]) or 0, n["id"])


def note_numbers_gapless(o: Outcome) -> list[str]:
    """SPEC 11: credit notes are numbered at issue in their own gapless series
    ``CN-000001``, ... in issue order (the order they were written)."""
    snap = o.ledger
    if snap is None:
        return []
    out = []
    notes = snap.credit_notes
    unnumbered = [n["correction_id"] for n in notes if n["number"] is None]
    if unnumbered:
        out.append(f"credit notes without a number: {unnumbered[:3]}")
    numbered = [n for n in notes if n["number"] is not None]
    if any(not str(n["number"]).startswith("CN-") for n in numbered):
        out.append(f"credit note numbers {[n['number'] for n in numbered]} outside CN-")
    values = [_value(n["number"]) or 0 for n in sorted(numbered, key=lambda n: n["id"])]
    if sorted(values) != list(range(1, len(values) + 1)):
        out.append(f"credit note numbers {sorted(values)} are not 1..{len(values)}")
    if values != sorted(values):
        out.append(f"credit note numbers not in issue order: {values}")
    if snap.note_series_next != len(values) + 1:
        out.append(f"CN- series at {snap.note_series_next} after {len(values)} notes")
    return out


def voids_reverse_everything(o: Outcome) -> list[str]:
    """SPEC 11: a void invoice keeps its number, has nothing paid or credited,
    one entry reversed everything it posted (its entries net to zero on every
    account) and the credits it consumed are back; a voided commitment or
    top-up had none of its credits used and they left ``granted``. A reissue
    replaces a void usage invoice of the same period, keyed ``<key>/N``."""
    snap = o.ledger
    if snap is None:
        return []
    out: list[str] = []
    by_key = {i["key"]: i for i in snap.invoices}
    for inv in snap.invoices:
        if inv["status"] == "void":
            out += _void(o, inv)
        of = inv["reissue_of"]
        if of is None:
            continue
        old = by_key.get(of)
        if old is None or old["status"] != "void" or old["kind"] != "usage" or (
                old["period_start"], old["period_end"]) != (inv["period_start"],
                                                            inv["period_end"]):
            out.append(f"{inv['key']} reissues {of}, which is "
                       f"{None if old is None else (old['kind'], old['status'])}")
        if not re.fullmatch(re.escape(of.split("/", 1)[0]) + r"/\d+", inv["key"]):
            out.append(f"{inv['key']}: a reissue of {of} keyed otherwise")
        if inv["number"] is None or inv["kind"] != "usage":
            out.append(f"{inv['key']}: reissue {inv['kind']} with number {inv['number']}")
    return out[:8]


def _void(o: Outcome, inv: dict[str, Any]) -> list[str]:
    snap = o.ledger
    assert snap is not None
    key, out = inv["key"], []
    if inv["number"] is None or inv["voided_on"] is None or inv["voided_on"] < inv["issued_on"]:
        out.append(f"{key}: void with number {inv['number']}, voided on {inv['voided_on']}")
    net: dict[str, Decimal] = {}
    for e in snap.journal:
        if e["invoice_key"] != key:
            continue
        for ln in e["lines"]:
            net[ln["account"]] = net.get(ln["account"], ZERO) + _d(ln["debit"]) - _d(
                ln["credit"])
    if any(v != 0 for v in net.values()):
        out.append(f"{key}: void, its entries still net {net}")
    moves = [m for m in snap.credit_ledger if m["invoice_key"] == key]
    consumed = -sum((_d(m["amount"]) for m in moves if m["kind"] == "consume"), ZERO)
    back = sum((_d(m["amount"]) for m in moves if m["kind"] == "return"), ZERO)
    if consumed != back:
        out.append(f"{key}: void, {consumed} credits consumed, {back} returned")
    if inv["kind"] in GRANT_KINDS:
        for g in (g for g in snap.grants if g["invoice_key"] == key):
            mine = [m for m in snap.credit_ledger if m["grant_id"] == g["grant_id"]]
            used = -sum((_d(m["amount"]) for m in mine if m["kind"] == "consume"), ZERO) - sum(
                (_d(m["amount"]) for m in mine if m["kind"] == "return"), ZERO)
            revoked = -sum((_d(m["amount"]) for m in mine if m["kind"] == "revoke"), ZERO)
            if used != 0 or revoked != _d(g["credits"]):
                out.append(f"{key}: void, its grant {g['grant_id']} used {used} credits, "
                           f"{revoked} of {g['credits']} left granted")
    return out


def _core(result: dict[str, Any]) -> dict[str, Any]:
    """What a correction's answer says that can never change: which invoice and
    document it made. (An invoice's status and a refund's progress move on.)"""
    note = result.get("credit_note") or {}
    reissued = result.get("reissued") or {}
    return {
        "correction": [result.get(k) for k in ("correction_id", "kind", "invoice",
                                                "invoice_number")],
        "note": [note.get(k) for k in ("number", "invoice", "total", "lines", "allocation",
                                       "reason", "issued_on")],
        "reissued": [reissued.get(k) for k in ("key", "number", "total", "issued_on")],
    }


def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def corrections_idempotent(o: Outcome) -> list[str]:
    """SPEC 11/7: void, reissue and credit are idempotent on their ids (one id space):
    the same id and content again answers as the first time, the same id with
    other content is refused; ids are at most 256 characters; the ledger keeps
    one record per id, of the content first answered, and the documents the
    answer names."""
    out: list[str] = []
    first: dict[str, tuple[str, dict[str, Any], int]] = {}  # id -> (content, core, index)
    for a in o.answers:
        if a.do != "correct" or not isinstance(a.sent, dict):
            continue
        cid, content = str(a.sent.get("id")), _canon(a.sent)
        known = first.get(cid)
        if a.status == "ok" and len(cid) > 256:
            out.append(f"correction #{a.index}: a {len(cid)}-character id accepted")
        if known is None:
            if a.status == "ok" and isinstance(a.result, dict):
                first[cid] = (content, _core(a.result), a.index)
            continue
        if known[0] != content and a.status == "ok":
            out.append(f"correction {cid[:40]} #{a.index}: other content accepted after "
                       f"#{known[2]}")
        elif known[0] == content and a.status != "ok":
            out.append(f"correction {cid[:40]} #{a.index}: resend {a.status} after #{known[2]}: "
                       f"{a.message}"[:300])
        elif known[0] == content and isinstance(a.result, dict) and _core(a.result) != known[1]:
            out.append(f"correction {cid[:40]} #{a.index}: answered {_core(a.result)}, first "
                       f"{known[1]}"[:400])
    out += _ledger_records(o, first)
    return out[:8]


def _ledger_records(o: Outcome, first: dict[str, tuple[str, dict[str, Any], int]]
                    ) -> list[str]:
    snap = o.ledger
    if snap is None:
        return []
    out = []
    records: dict[str, list[dict[str, Any]]] = {}
    for r in snap.corrections:
        records.setdefault(r["correction_id"], []).append(r)
    notes = {n["correction_id"]: n for n in snap.credit_notes}
    keys = {i["key"]: i for i in snap.invoices}
    for cid, (content, core, index) in first.items():
        rows = records.get(cid, [])
        sent = _CORRECTION.validate_python(json.loads(content))
        if len(rows) != 1 or rows[0]["digest"] != correction_digest(sent):
            out.append(f"correction {cid[:40]} (#{index}): {len(rows)} ledger records, not one "
                       "of what was answered")
        note_number = core["note"][0]
        if note_number is not None and (cid not in notes or notes[cid]["number"] != note_number):
            out.append(f"correction {cid[:40]}: answered note {note_number}, the ledger has "
                       f"{notes[cid]['number'] if cid in notes else None}")
        reissued = core["reissued"][0]
        if reissued is not None and keys.get(reissued, {}).get("number") != core["reissued"][1]:
            out.append(f"correction {cid[:40]}: answered reissue {reissued}, the ledger has "
                       f"{keys.get(reissued, {}).get('number')}")
    return out
