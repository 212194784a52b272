"""The invariants every random lifecycle must keep (billow issue 11, "The proof").

One function per invariant; each takes the run's `Outcome` and returns a list
of violations (plain sentences, empty when the invariant holds). `CHECKS`
lists them in the order a failing example is classified by (its first
violated invariant). The first ten are the issue's list; the rest are rules
of SPEC.md the same data can check for free (lifecycle_spec_checks.py), and
those of corrections (SPEC.md section 11, issue 14:
lifecycle_correction_checks.py). Checks that a correction legitimately
changes say why in their docstrings.

Scope notes (why some things are not checked):
- "every stored event on exactly one invoice line" is checked quantity by
  quantity for the additive meters (``sum``, ``count``): there each event
  adds to exactly one group of one line. ``max`` and ``unique_count`` lines
  carry a figure, not events; they are covered by the held/unbilled part.
- Events outside the contract's (final) term are no invoice's business.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext
from typing import Any

from models.contract import ContractTerms
from models.periods import local_midnight_utc
from tests.support.lifecycle_correction_checks import (
    corrections_idempotent,
    credit_notes_allocated,
    note_numbers_gapless,
    outstanding_matches,
    voids_reverse_everything,
)
from tests.support.lifecycle_minimum_checks import spend_limits_hold, true_ups_match
from tests.support.lifecycle_outcome import Outcome, ledger_corrected
from tests.support.lifecycle_spec_checks import (
    bounds_refused,
    invoice_arithmetic,
    journal_matches_invoices,
    periods_tile_term,
    resends_consistent,
    state_matches_ledger,
)

Check = Callable[[Outcome], list[str]]
ENDED = ("ended", "terminated")
BOUND = Decimal(10) ** 18


def _d(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


# --- 1. no workflow task ever failed ---------------------------------------------


def workflow_tasks_never_failed(o: Outcome) -> list[str]:
    bad = ("WORKFLOW_TASK_FAILED", "WORKFLOW_TASK_TIMED_OUT", "WORKFLOW_EXECUTION_FAILED",
           "WORKFLOW_EXECUTION_TIMED_OUT", "WORKFLOW_EXECUTION_TERMINATED")
    out = [f"{name}: {detail}" for run in o.histories for name, detail in run.events
           if name in bad]
    if not out and o.aborted and o.aborted.startswith("WORKFLOW_"):
        out.append(o.aborted)
    return out


# --- 2. no activity retried more than 3 times for a business error ----------------


def activity_retries_bounded(o: Outcome) -> list[str]:
    return [
        f"{r.activity_type} ({'local' if r.is_local else 'remote'}) failed "
        f"{r.retryable_failures} times with a retryable error and is retried again: "
        f"{r.failures[-1]}"
        for r in o.activities if r.retryable_failures > 3
    ]


# --- 3. every action gets an answer; every refusal names a field -------------------


def actions_answered(o: Outcome) -> list[str]:
    answers = [o.creation] if o.creation else []
    return [f"{a.do} #{a.index} at {a.at}: {a.message}"
            for a in [*answers, *o.answers] if a.status == "error"]


def refusals_name_a_field(o: Outcome) -> list[str]:
    out = []
    for a in [*([o.creation] if o.creation else []), *o.answers]:
        if a.status != "refused":
            continue
        if not a.problems:
            out.append(f"{a.do} #{a.index}: refused without a reason: {a.message}")
        for path, reason in a.problems:
            if not path:
                out.append(f"{a.do} #{a.index}: refusal names no field: {reason}"[:300])
    return out


# --- 4. every workflow completed or is sleeping with a next wake-up ----------------


def completed_or_sleeping(o: Outcome) -> list[str]:
    if not o.created:
        return []
    if o.aborted and not o.aborted.startswith(("WORKFLOW_", "activity ")):
        return [f"example stopped: {o.aborted}"]
    if o.aborted:
        return []  # explained by the two checks above
    if o.status == "COMPLETED":
        status = (o.ledger.contract or {}).get("status") if o.ledger else None
        return [] if status in ENDED else [f"workflow completed, contract is {status}"]
    if o.status != "RUNNING":
        return [f"workflow is {o.status}"]
    if o.view is None:
        return [f"running workflow does not answer its state query: {o.query_error}"]
    latest = o.histories[-1].events if o.histories else []
    started = {d for n, d in latest if n == "TIMER_STARTED"}
    done = {d for n, d in latest if n in ("TIMER_FIRED", "TIMER_CANCELED")}
    if started - done or o.view.get("attention"):
        return []
    return [f"running ({o.view.get('status')}) with no timer and nothing to wait for"]


# --- 5. journal balanced ----------------------------------------------------------------


def journal_balanced(o: Outcome) -> list[str]:
    out = []
    for e in o.ledger.journal if o.ledger else []:
        debit = sum((_d(ln["debit"]) for ln in e["lines"]), Decimal(0))
        credit = sum((_d(ln["credit"]) for ln in e["lines"]), Decimal(0))
        if debit != credit or len(e["lines"]) < 2:
            out.append(f"entry {e['entry_key']}: Dr {debit} != Cr {credit}")
        for ln in e["lines"]:
            if (_d(ln["debit"]) > 0) == (_d(ln["credit"]) > 0) or min(ln["debit"],
                                                                      ln["credit"]) < 0:
                out.append(f"entry {e['entry_key']}: line {ln['account']} is not one-sided")
    return out


# --- 6. granted = consumed + expired + balance --------------------------------------


def _sum(moves: list[dict[str, Any]], kind: str, field: str = "amount") -> Decimal:
    return sum((_d(m[field] or 0) for m in moves if m["kind"] == kind), Decimal(0))


def credits_identity(o: Outcome) -> list[str]:
    """SPEC 4 with SPEC 11: ``return`` rows give credits a void or a credit note
    took back from an invoice to their grant, so they count back against
    ``consumed``; ``revoke`` rows take unused credits of a voided or credited
    commitment or top-up out of ``granted``. The identity holds with both."""
    snap = o.ledger
    if snap is None or snap.contract is None:
        return []
    out = []
    ended = snap.contract["status"] in ENDED
    total_balance = Decimal(0)
    for g in snap.grants:
        moves = [m for m in snap.credit_ledger if m["grant_id"] == g["grant_id"]]
        recorded = _sum(moves, "grant")
        revoked = -_sum(moves, "revoke")
        granted = _d(g["credits"]) - revoked
        consumed = -_sum(moves, "consume") - _sum(moves, "return")
        expired = -_sum(moves, "expire")
        balance = granted - consumed - expired
        total_balance += balance
        name = f"grant {g['grant_id']}"
        if recorded != _d(g["credits"]):
            out.append(f"{name}: ledger grants {recorded}, the grant has {g['credits']}")
        if min(consumed, expired, balance, revoked, granted) < 0:
            out.append(f"{name}: granted {granted} (revoked {revoked}), consumed {consumed}, "
                       f"expired {expired}, balance {balance}")
        if ended and balance != 0:
            out.append(f"{name}: {balance} credits left after the term ended (no breakage)")
    for inv in snap.invoices:
        mine = [m for m in snap.credit_ledger if m["invoice_key"] == inv["key"]]
        used = -_sum(mine, "consume")
        if inv["number"] is not None and used != _d(inv["credits_applied"]):
            out.append(f"{inv['key']}: credits_applied {inv['credits_applied']}, "
                       f"credits consumed {used}")
        for gid in {m["grant_id"] for m in mine}:
            of_grant = [m for m in mine if m["grant_id"] == gid]
            if _sum(of_grant, "return") > -_sum(of_grant, "consume"):
                out.append(f"{inv['key']}: returns {_sum(of_grant, 'return')} credits to "
                           f"{gid}, consumed {-_sum(of_grant, 'consume')}")
    # After the workflow completed, corrections go to the ledger alone: the
    # state's balance is the one it completed with.
    if o.view is not None and not ledger_corrected(o) and _d(
            o.view["credit_balance"]) != total_balance:
        out.append(f"state credit balance {o.view['credit_balance']}, ledger {total_balance}")
    return out


# --- 7. no grant's deferred revenue below zero ---------------------------------------


def line_grant(e: dict[str, Any], ln: dict[str, Any]) -> str | None:
    """The grant a journal line belongs to: its own (a void's or a credit note's
    entry moves several grants, SPEC.md 11), else its entry's."""
    gid = ln.get("grant_id") or e["grant_id"]
    return None if gid is None else str(gid)


def _deferred_by_grant(e: dict[str, Any]) -> dict[str | None, Decimal]:
    out: dict[str | None, Decimal] = {}
    for ln in e["lines"]:
        if ln["account"] == "deferred_revenue":
            gid = line_grant(e, ln)
            out[gid] = out.get(gid, Decimal(0)) + _d(ln["credit"]) - _d(ln["debit"])
    return out


def _deferred_net(e: dict[str, Any]) -> Decimal:
    return sum(_deferred_by_grant(e).values(), Decimal(0))


def deferred_never_negative(o: Outcome) -> list[str]:
    """Per grant, after every entry; a line's own grant counts (corrections)."""
    out: list[str] = []
    running: dict[str, Decimal] = {}
    for e in o.ledger.journal if o.ledger else []:
        for gid, net in _deferred_by_grant(e).items():
            if net == 0:
                continue
            if gid is None:
                out.append(f"entry {e['entry_key']} moves deferred revenue of no grant")
                continue
            running[gid] = running.get(gid, Decimal(0)) + net
            if running[gid] < 0:
                out.append(f"grant {gid}: deferred revenue {running[gid]} after {e['entry_key']}")
    return out[:5]


# --- 8. recognized + breakage = paid for every grant at term end -------------------

REVENUE_ACCOUNTS = ("usage_revenue", "fee_revenue", "breakage_revenue")


def grant_revenue_closes(o: Outcome) -> list[str]:
    """SPEC 5 with SPEC 11. What a grant was paid is its price less what credit
    notes and voids took off it (the ``price_amount`` of its ``revoke`` rows);
    the journal must have invoiced exactly that into its deferred revenue: its
    commitment or top-up invoice's entry, less the void or notes on that invoice
    (or, for customer credit, the note that made it). At term end its revenue
    (recognized, net of what returned credits reversed, plus breakage) is what
    it was paid."""
    snap = o.ledger
    if snap is None or snap.contract is None:
        return []
    cid = snap.contract["id"]
    out = []
    for g in snap.grants:
        gid = g["grant_id"]
        removed = _sum([m for m in snap.credit_ledger if m["grant_id"] == gid], "revoke",
                       "price_amount")
        paid = _d(g["price"]) - removed
        funded = Decimal(0)
        revenue = Decimal(0)
        for e in snap.journal:
            funds = (e["kind"] in ("commitment_invoiced", "top_up_invoiced")
                     or (e["kind"] in ("invoice_voided", "credit_note")
                         and g["invoice_key"] is not None
                         and e["invoice_key"] == g["invoice_key"])
                     or e["entry_key"] == f"{cid}:{gid}")  # a note's customer credit
            for ln in e["lines"]:
                if line_grant(e, ln) != gid:
                    continue
                net = _d(ln["credit"]) - _d(ln["debit"])
                if funds and ln["account"] == "deferred_revenue":
                    funded += net
                elif ln["account"] in REVENUE_ACCOUNTS:
                    revenue += net
        if funded != paid:
            out.append(f"grant {gid}: price {g['price']} less {removed} credited is {paid}, "
                       f"but {funded} invoiced for it")
        if snap.contract["status"] in ENDED and revenue != paid:
            out.append(f"grant {gid}: recognized + breakage {revenue} != paid {paid}")
    return out


# --- deferred-revenue roll-forward closes to the deferred balance (SPEC.md 13) ----------


def rollforward_closes(o: Outcome) -> list[str]:
    """The finance export's roll-forward, month by month, ends at the deferred balance
    the journal holds, to the cent, and each month closes what it opened."""
    from models.exports import deferred_rollforward

    journal = o.ledger.journal if o.ledger else []
    months = deferred_rollforward(journal)
    balance = sum((_deferred_net(e) for e in journal), Decimal(0))
    out = []
    if (months[-1].closing if months else Decimal(0)) != balance:
        out.append(f"roll-forward closes at {months[-1].closing if months else 0}, "
                   f"deferred balance {balance}")
    for prev, nxt in itertools.pairwise(months):
        if nxt.opening != prev.closing:
            out.append(f"{nxt.month} opens at {nxt.opening}, {prev.month} closed at "
                       f"{prev.closing}")
    return out


# --- 9. invoice numbers gapless ----------------------------------------------------


def invoice_numbers_gapless(o: Outcome) -> list[str]:
    snap = o.ledger
    if snap is None:
        return []
    numbered = [i for i in snap.invoices if i["number"] is not None]
    values = sorted(int(re.sub(r"\D", "", i["number"])) for i in numbered)
    out = []
    if values != list(range(1, len(values) + 1)):
        out.append(f"numbers {values} are not 1..{len(values)}")
    if snap.series_next != len(values) + 1:
        out.append(f"series at {snap.series_next} after {len(values)} numbered invoices")
    by_time = [i["number"] for i in sorted(numbered, key=lambda i: (i["finalized_at"], i["id"]))]
    if by_time != sorted(by_time, key=lambda n: int(re.sub(r"\D", "", n))):
        out.append(f"numbers not in finalization order: {by_time}")
    for i in snap.invoices:
        if (i["number"] is None) != (i["status"] in ("draft", "needs_attention")):
            out.append(f"{i['key']}: status {i['status']} with number {i['number']}")
    return out


# --- 10. every stored event on exactly one line, or unbilled, or held ------------------


def _terms(o: Outcome) -> ContractTerms | None:
    if o.ledger is None or o.ledger.contract is None:
        return None
    return ContractTerms.model_validate(o.ledger.contract["terms"])


def _at(d: date, tz: str) -> datetime:
    return local_midnight_utc(d, tz)


def events_billed_once(o: Outcome) -> list[str]:
    terms = _terms(o)
    snap = o.ledger
    if terms is None or snap is None or snap.contract is None:
        return []
    tz, out = terms.timezone, []
    ended = snap.contract["status"] in ENDED
    meters = {m.key: m for m in terms.meters}
    usage = [i for i in snap.invoices if i["kind"] == "usage"]
    # SPEC 11: a void reverses the money of an invoice, not the record of what it
    # rated, and a reissue rates the same events again in its place. So an
    # event is billed by its period's live invoice, or by its voided one when
    # no reissue replaced it; the lines of a replaced invoice bill nothing.
    replaced = {i["reissue_of"] for i in snap.invoices if i["reissue_of"] is not None}
    finalized = [i for i in usage if i["number"] is not None and i["key"] not in replaced]
    marks = [i["usage_watermark"] for i in usage
             if i["number"] is not None and i["usage_watermark"] is not None]
    top = max(marks) if marks else None
    start, end = terms.term_start_at, terms.term_end_at
    expected: dict[tuple[date, str, tuple[tuple[str, str], ...]], Decimal] = {}
    with localcontext() as ctx:
        ctx.prec = 80  # quantities up to 10^18 with 12 decimals, summed exactly
        for e in snap.events:
            ts = e["ts"].astimezone(UTC)
            meter = meters.get(e["meter"])
            if meter is None or not start <= ts < end:
                continue
            home = [i for i in usage if _at(i["period_start"], tz) <= ts < _at(i["period_end"], tz)]
            done = [i for i in home if i["number"] is not None and i["key"] not in replaced]
            if len(done) > 1:
                out.append(f"event {e['event_id'][:40]} lies in {len(done)} invoiced periods")
            if done:
                if top is not None and e["txid"] < top and str(meter.aggregation) in (
                        "sum", "count"):
                    dims = e["dimensions"] or {}
                    group = tuple(sorted((k, dims[k]) for k in meter.group_by
                                         if dims.get(k) is not None))
                    key = (done[0]["period_start"], meter.key, group)
                    q = Decimal(1) if str(meter.aggregation) == "count" else _d(e["quantity"])
                    expected[key] = expected.get(key, Decimal(0)) + q
                continue
            held = [i for i in home if i["status"] == "needs_attention"]
            if held:
                if not held[0]["attention_reason"]:
                    out.append(f"{held[0]['key']} is held without a reason")
            elif ended:
                out.append(f"event {e['event_id'][:40]} at {ts.isoformat()} is in no invoiced "
                           "period of the ended term")
        billed: dict[tuple[date, str, tuple[tuple[str, str], ...]], Decimal] = {}
        by_id = {i["id"]: i for i in finalized}
        for ln in snap.lines:
            inv = by_id.get(ln["invoice_id"])
            if inv is None or ln["kind"] not in ("usage", "late_usage") or ln["meter"] is None:
                continue
            meter = meters.get(ln["meter"])
            if meter is None or str(meter.aggregation) not in ("sum", "count"):
                continue
            period = inv["period_start"] if ln["kind"] == "usage" else ln["line_period_start"]
            group = tuple(sorted((k, v) for k, v in (ln["dimensions"] or {}).items()
                                 if v is not None))
            key = (period, ln["meter"], group)
            billed[key] = billed.get(key, Decimal(0)) + _d(ln["quantity"] or 0)
        for key in sorted(set(expected) | set(billed), key=str):
            want, got = expected.get(key, Decimal(0)), billed.get(key, Decimal(0))
            if want != got:
                out.append(f"period {key[0]} {key[1]} {dict(key[2])}: events {want}, "
                           f"lines {got}")
    if ended:
        late = sum(1 for e in snap.events if start <= e["ts"] < end
                   and (top is None or e["txid"] >= top))
        if late != snap.unbilled_events and top is not None:
            out.append(f"{late} events after the final watermark, {snap.unbilled_events} "
                       "reported unbilled")
    return out[:8]


CHECKS: dict[str, Check] = {
    "workflow_tasks_never_failed": workflow_tasks_never_failed,
    "activity_retries_bounded": activity_retries_bounded,
    "actions_answered": actions_answered,
    "completed_or_sleeping": completed_or_sleeping,
    "refusals_name_a_field": refusals_name_a_field,
    "journal_balanced": journal_balanced,
    "credits_identity": credits_identity,
    "deferred_never_negative": deferred_never_negative,
    "grant_revenue_closes": grant_revenue_closes,
    "rollforward_closes": rollforward_closes,
    "invoice_numbers_gapless": invoice_numbers_gapless,
    "events_billed_once": events_billed_once,
    "periods_tile_term": periods_tile_term,
    "journal_matches_invoices": journal_matches_invoices,
    "invoice_arithmetic": invoice_arithmetic,
    "state_matches_ledger": state_matches_ledger,
    "resends_consistent": resends_consistent,
    "outstanding_matches": outstanding_matches,
    "credit_notes_allocated": credit_notes_allocated,
    "note_numbers_gapless": note_numbers_gapless,
    "voids_reverse_everything": voids_reverse_everything,
    "corrections_idempotent": corrections_idempotent,
    "bounds_refused": bounds_refused,
    "spend_limits_hold": spend_limits_hold,
    "true_ups_match": true_ups_match,
}


def violations(o: Outcome) -> dict[str, list[str]]:
    """Every violated invariant with its violations (empty: the run is fine)."""
    found: dict[str, list[str]] = {}
    for name, check in CHECKS.items():
        try:
            v = check(o)
        except Exception as exc:  # a check that crashes is a finding about the check
            v = [f"check crashed: {type(exc).__name__}: {exc}"]
        if v:
            found[name] = v
    return found


__all__ = ["CHECKS", "Check", "violations"]
