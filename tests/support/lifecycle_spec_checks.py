"""SPEC.md rules a random lifecycle's record can check besides the issue's
ten invariants (tests/support/lifecycle_checks.py registers them all).

Each function takes the run's `Outcome` and returns its violations.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal, localcontext
from typing import Any

from models.contract import ContractTerms
from models.money import round_money
from models.periods import local_midnight_utc, term_end_date
from tests.support.lifecycle_outcome import Outcome, ledger_corrected

ENDED = ("ended", "terminated")
BOUND = Decimal(10) ** 18


def _d(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def _terms(o: Outcome) -> ContractTerms | None:
    if o.ledger is None or o.ledger.contract is None:
        return None
    return ContractTerms.model_validate(o.ledger.contract["terms"])


def periods_tile_term(o: Outcome) -> list[str]:
    """SPEC 2: the finalized usage invoices of an ended term tile it exactly.

    SPEC 11: a voided invoice keeps its number and its period stays invoiced
    (billed, then voided); a reissue ``usage:<start>/2`` takes the voided
    invoice's place in the tiling. So each period counts once, by its live
    invoice or else by its void one, and no period has two live invoices."""
    terms = _terms(o)
    if terms is None or o.ledger is None or (o.ledger.contract or {}).get("status") not in ENDED:
        return []
    numbered = [i for i in o.ledger.invoices if i["kind"] == "usage" and i["number"] is not None]
    out = []
    by_start: dict[date, list[dict[str, Any]]] = {}
    for i in numbered:
        by_start.setdefault(i["period_start"], []).append(i)
    tiles = []
    for start, invs in sorted(by_start.items()):
        live = [i for i in invs if i["status"] != "void"]
        if len(live) > 1:
            out.append(f"period {start} invoiced twice: {[i['key'] for i in live]}")
        ends = {i["period_end"] for i in invs}
        if len(ends) > 1:
            out.append(f"period {start}: its invoices end on {sorted(ends)}")
        tiles.append((start, (live or invs)[0]["period_end"]))
    cursor = terms.starts_on
    for s, e in tiles:
        if s != cursor:
            out.append(f"usage periods jump from {cursor} to {s}")
        if e <= s:
            out.append(f"usage period {s}..{e} is empty")
        cursor = e
    if cursor != max(terms.term_end, terms.starts_on):
        out.append(f"usage periods end at {cursor}, the term at {terms.term_end}")
    return out


ISSUE_KINDS = ("usage_from_credits", "usage_billed", "fees", "commitment_invoiced",
               "top_up_invoiced")


def _account(lines: list[dict[str, Any]], account: str, side: str) -> Decimal:
    return sum((_d(ln[side]) for ln in lines if ln["account"] == account), Decimal(0))


def owed(inv: dict[str, Any]) -> Decimal:
    """SPEC 11: outstanding = total - paid - what credit notes allocated to it; 0 once void."""
    if inv["status"] == "void" or inv["number"] is None:
        return Decimal(0)
    return _d(inv["total"]) - _d(inv["amount_paid"]) - _d(inv["credit_allocated"])


def journal_matches_invoices(o: Outcome) -> list[str]:
    """SPEC 5/6: each finalized invoice's total is receivable; each payment is cash.

    SPEC 11: corrections post entries of their own on the invoice, never edit
    its issue: a void's entry reverses the receivable, a note's takes off what
    it allocated to the amount owed and to a refund, a refund paid settles
    that (receivable against cash). So the issue entries still post the total,
    and what is left receivable is what is owed less refunds not paid yet."""
    snap = o.ledger
    if snap is None:
        return []
    out = []
    for inv in snap.invoices:
        entries = [e for e in snap.journal if e["invoice_key"] == inv["key"]]
        lines = [ln for e in entries for ln in e["lines"]]
        issued = [ln for e in entries if e["kind"] in ISSUE_KINDS for ln in e["lines"]]
        receivable = _account(issued, "receivable", "debit")
        cash = _account(lines, "cash", "debit")
        total = _d(inv["total"]) if inv["number"] is not None else Decimal(0)
        if receivable != total:
            out.append(f"{inv['key']}: total {total}, receivable posted {receivable}")
        if cash != _d(inv["amount_paid"]):
            out.append(f"{inv['key']}: amount_paid {inv['amount_paid']}, cash posted {cash}")
        paid = sum((_d(p["amount"]) for p in snap.payments if p["invoice_id"] == inv["id"]),
                   Decimal(0))
        if paid != _d(inv["amount_paid"]):
            out.append(f"{inv['key']}: amount_paid {inv['amount_paid']}, payments {paid}")
        if _d(inv["amount_paid"]) > total and inv["number"] is not None:
            out.append(f"{inv['key']}: paid {inv['amount_paid']} of {total}")
        refunds = [n["refund"] for n in snap.credit_notes
                   if n["invoice_id"] == inv["id"] and n["refund"] is not None]
        pending = sum((_d(r["amount"]) for r in refunds if r["status"] == "pending"),
                      Decimal(0))
        repaid = sum((_d(r["amount"]) for r in refunds if r["status"] == "refunded"),
                     Decimal(0))
        left = _account(lines, "receivable", "debit") - _account(lines, "receivable", "credit")
        if left != owed(inv) - pending:
            out.append(f"{inv['key']}: receivable {left}, outstanding {owed(inv)} less "
                       f"pending refunds {pending}")
        if _account(lines, "cash", "credit") != repaid:
            out.append(f"{inv['key']}: cash paid out {_account(lines, 'cash', 'credit')}, "
                       f"refunds paid {repaid}")
    return out


USAGE_KINDS = ("usage", "late_usage", "minimum", "maximum")


def invoice_arithmetic(o: Outcome) -> list[str]:
    """SPEC 3/4/6: lines rounded half up, totals are sums of lines, credits pay
    usage lines only, paid means paid in full, a usage invoice is not issued
    before its period ends."""
    snap = o.ledger
    if snap is None:
        return []
    out = []
    currency = (snap.contract or {}).get("terms", {}).get("currency", o.lifecycle.currency)
    for inv in snap.invoices:
        if inv["number"] is None:
            continue
        key = inv["key"]
        lines = [ln for ln in snap.lines if ln["invoice_id"] == inv["id"]]
        subtotal = sum((_d(ln["amount"]) for ln in lines), Decimal(0))
        usage = sum((_d(ln["amount"]) for ln in lines if ln["kind"] in USAGE_KINDS), Decimal(0))
        if subtotal != _d(inv["subtotal"]):
            out.append(f"{key}: subtotal {inv['subtotal']}, lines sum to {subtotal}")
        if _d(inv["total"]) != _d(inv["subtotal"]) - _d(inv["credits_applied"]):
            out.append(f"{key}: total {inv['total']} != subtotal - credits_applied")
        if not Decimal(0) <= _d(inv["credits_applied"]) <= max(usage, Decimal(0)):
            out.append(f"{key}: credits_applied {inv['credits_applied']}, usage lines {usage}")
        for ln in lines:
            if ln["unit_price"] is not None and ln["quantity"] is not None:
                with localcontext() as ctx:
                    ctx.prec = 80
                    want = round_money(_d(ln["quantity"]) * _d(ln["unit_price"]), currency)
                if want != _d(ln["amount"]) and ln["kind"] in ("usage", "late_usage"):
                    out.append(f"{key} line {ln['position']}: {ln['quantity']} x "
                               f"{ln['unit_price']} = {want}, billed {ln['amount']}")
        # SPEC 11: a credit note that clears what is owed makes the invoice paid.
        paid = _d(inv["amount_paid"]) + _d(inv["credit_allocated"]) >= _d(inv["total"])
        if (inv["status"] == "paid") != paid and inv["status"] != "void":
            out.append(f"{key}: status {inv['status']}, paid {inv['amount_paid']} of "
                       f"{inv['total']}")
        if (inv["paid_on"] is not None) != (inv["status"] == "paid"):
            out.append(f"{key}: status {inv['status']} with paid_on {inv['paid_on']}")
        if inv["due_on"] is None or inv["issued_on"] is None or inv["due_on"] < inv["issued_on"]:
            out.append(f"{key}: issued {inv['issued_on']}, due {inv['due_on']}")
        elif inv["kind"] == "usage" and inv["issued_on"] < inv["period_end"]:
            out.append(f"{key}: issued {inv['issued_on']} before its period ends "
                       f"{inv['period_end']}")
    return out[:8]


def state_matches_ledger(o: Outcome) -> list[str]:
    """SPEC 10: queries show the ledger's invoices (statuses, numbers, amounts).

    SPEC 11: also what credit notes credited and allocated. An invoice a
    correction changed in the ledger after the workflow completed is not the
    state's any more (the workflow has ended; the API goes to the ledger)."""
    if o.view is None or o.ledger is None:
        return []
    rows = {i["key"]: i for i in o.ledger.invoices}
    after_end = ledger_corrected(o)
    out = []
    for inv in o.view["invoices"]:
        row = rows.get(inv["key"])
        if row is None:
            out.append(f"state shows {inv['key']}, the ledger has no such invoice")
            continue
        if inv["key"] in after_end:
            continue
        for f in ("number", "status"):
            if inv[f] != row[f]:
                out.append(f"{inv['key']}: state {f} {inv[f]}, ledger {row[f]}")
        for f in ("total", "amount_paid", "credited", "credit_allocated"):
            if _d(inv[f]) != _d(row[f]):
                out.append(f"{inv['key']}: state {f} {inv[f]}, ledger {row[f]}")
    shown = {i["key"] for i in o.view["invoices"]}
    out += [f"{k}: finalized in the ledger, not in the state" for k, r in rows.items()
            if r["number"] is not None and k not in shown and k not in after_end]
    return out


def _amendment_content(a: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in a.items() if k != "received_at"}


def _event_content(ev: dict[str, Any]) -> tuple[Any, ...]:
    ts = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00"))
    return (ev["customer"], ev["meter"], ts, _d(ev.get("quantity", "1")),
            tuple(sorted((ev.get("dimensions") or {}).items())))


def resends_consistent(o: Outcome) -> list[str]:
    """SPEC 7/10/3: the same id with other content is refused (or reported conflict)."""
    out = []
    amended: dict[str, dict[str, Any]] = {}
    paid: dict[str, tuple[str, Decimal]] = {}
    stored: dict[str, tuple[Any, ...]] = {}
    for a in o.answers:
        act = o.lifecycle.actions[a.index]
        if a.do == "amend" and act.get("via") == "update" and a.status == "ok":
            doc = _amendment_content(act["amendment"])
            first = amended.setdefault(doc["id"], doc)
            if first != doc:
                out.append(f"amendment {doc['id'][:40]} resent with other content: answered "
                           f"{a.result.get('status') if isinstance(a.result, dict) else a.result}")
        elif a.do == "usage" and isinstance(a.result, list):
            for ev, res in zip(act["events"], a.result, strict=False):
                content = _event_content(ev)
                stored_as = stored.get(ev["id"])
                if stored_as is None and res["status"] == "accepted":
                    stored[ev["id"]] = content
                elif stored_as not in (None, content) and res["status"] in ("duplicate",
                                                                            "accepted"):
                    # (rejected is fine too: an invalid resend is refused before dedup)
                    out.append(f"event {ev['id'][:30]} resent with other content: "
                               f"{res['status']}, not conflict")
        elif (a.do == "pay" and a.status == "ok" and isinstance(a.sent, dict)
              and act.get("via", "update") == "update"):
            pid = a.sent.get("payment_id")
            if pid is None:
                continue
            mine = (a.sent["invoice"], _d(a.sent["amount"]))
            if paid.setdefault(pid, mine) != mine:
                out.append(f"payment id {pid} reused for {mine} after {paid[pid]}: accepted")
    return out


def _decimals(x: str) -> int:
    exp = Decimal(x).as_tuple().exponent
    return -exp if isinstance(exp, int) and exp < 0 else 0


def _grant_windows(c: dict[str, Any]) -> list[str]:
    """SPEC 1: a grant's ``effective`` is before its ``expires``, both inside the term."""
    tz = c.get("timezone", "UTC")
    start = local_midnight_utc(date.fromisoformat(c["starts_on"]), tz)
    end = local_midnight_utc(
        term_end_date(date.fromisoformat(c["starts_on"]), min(c["term_months"], 1200)), tz)

    def instant(v: str | None, default: datetime) -> datetime:
        if v is None:
            return default
        if len(v) == 10:
            return local_midnight_utc(date.fromisoformat(v), tz)
        return datetime.fromisoformat(v.replace("Z", "+00:00"))

    out = []
    commitment = c.get("commitment") or {}
    if commitment.get("expires_on"):
        expires = instant(commitment["expires_on"], end)
        if expires <= start:
            out.append("commitment.expires_on on or before starts_on")
        elif expires > end:
            out.append("commitment.expires_on after the term end")
    for g in c.get("credit_grants", []):
        effective, expires = instant(g.get("effective"), start), instant(g.get("expires"), end)
        if expires <= effective:
            out.append(f"grant {g['id']} expires <= effective")
        elif not start <= effective < end or expires > end:
            out.append(f"grant {g['id']} outside the term")
    return out


def bounds_refused(o: Outcome) -> list[str]:
    """SPEC 6: out-of-bound input is refused when it is sent, never accepted."""
    c, out = o.lifecycle.contract, []
    if o.created:
        why = []
        if len(c["id"]) > 256 or len(c["customer"]["id"]) > 256:
            why.append("an id longer than 256 characters")
        if c["term_months"] > 1200:
            why.append(f"term_months {c['term_months']}")
        if c.get("payment_terms_days", 0) > 3650:
            why.append(f"payment_terms_days {c['payment_terms_days']}")
        commitment = c.get("commitment") or {}
        if commitment and _d(commitment["amount"]) >= BOUND:
            why.append("commitment.amount >= 10^18")
        why += _grant_windows(c)
        out += [f"contract accepted with {w}" for w in why]
    months = c["term_months"]
    for a in o.answers:
        act = o.lifecycle.actions[a.index]
        if a.do == "usage" and isinstance(a.result, list):
            for ev, res in zip(act["events"], a.result, strict=False):
                bad = len(ev["id"]) > 256 or _d(ev["quantity"]) >= BOUND or _decimals(
                    ev["quantity"]) > 12
                if bad and res["status"] != "rejected":
                    out.append(f"event {ev['id'][:20]}... quantity {ev['quantity']} "
                               f"({len(ev['id'])}-char id) {res['status']}")
        if a.do != "amend" or a.status != "ok" or act.get("via") != "update":
            continue
        am = act["amendment"]
        why = []
        if len(am["id"]) > 256:
            why.append("an id longer than 256 characters")
        if am["kind"] == "change_payment_terms" and am["payment_terms_days"] > 3650:
            why.append(f"payment_terms_days {am['payment_terms_days']}")
        if am["kind"] == "extend_term":
            if isinstance(a.result, dict) and a.result.get("status") != "duplicate":
                months += am["term_months"]
            if months > 1200:
                why.append(f"a term of {months} months")
        if am["kind"] == "grant_credits" and _d(am["credits"]) >= BOUND:
            why.append(f"credits {am['credits']}")
        out += [f"amendment {am['id'][:30]} ({am['kind']}) accepted with {w}" for w in why]
    return out
