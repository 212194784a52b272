"""SPEC.md section 12 rules a random lifecycle's ledger can check: spend limits
and minimum-commitment true-ups (registered in tests/support/lifecycle_checks.py).

Both recompute what the ledger should say from the contract's final terms
with the pure ``models`` functions, which keep every limit override's window
and the schedule of minimum commitments. A contract whose billing cycle
changed is skipped: its earlier periods are not on the final terms' grid, so
their proration cannot be rebuilt from the terms alone.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from models.contract import ContractTerms
from models.minimum_commitment import commitment_progress
from models.periods import Period, billing_periods
from models.spend_limits import limit_split, period_limits
from tests.support.lifecycle_outcome import Outcome

USAGE_KINDS = ("usage", "late_usage", "minimum", "maximum")


def _d(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def _setup(o: Outcome) -> tuple[ContractTerms, list[dict[str, Any]], dict[date, Period]] | None:
    snap = o.ledger
    if snap is None or snap.contract is None:
        return None
    terms = ContractTerms.model_validate(snap.contract["terms"])
    if terms.cycle_anchor != terms.starts_on or terms.term_end <= terms.starts_on:
        return None
    finalized = sorted((i for i in snap.invoices if i["kind"] == "usage"
                        and i["number"] is not None and i["status"] != "void"),
                       key=lambda i: (i["period_start"], i["id"]))
    grid = billing_periods(terms.starts_on, terms.term_end, terms.billing_cycle,
                           terms.billing_anchor, terms.timezone)
    return terms, finalized, {p.start_date: p for p in grid}


def spend_limits_hold(o: Outcome) -> list[str]:
    """SPEC 12: per period and limited meter, its finalized lines (usage and
    late usage with their minimum and maximum lines, on every invoice) net to
    the gross clamped to the period's limits; unlimited meters get no such line."""
    setup = _setup(o)
    if setup is None or o.ledger is None:
        return []
    terms, finalized, grid = setup
    by_id = {i["id"]: i for i in finalized}
    gross: dict[tuple[date, str], Decimal] = {}
    adjusted: dict[tuple[date, str], Decimal] = {}
    for ln in o.ledger.lines:
        inv = by_id.get(ln["invoice_id"])
        if inv is None or ln["meter"] is None or ln["kind"] not in USAGE_KINDS:
            continue
        own = ln["kind"] == "usage" or ln["line_period_start"] is None
        key = (inv["period_start"] if own else ln["line_period_start"], ln["meter"])
        into = gross if ln["kind"] in ("usage", "late_usage") else adjusted
        into[key] = into.get(key, Decimal(0)) + _d(ln["amount"])
    out = []
    for (start, meter) in sorted(set(gross) | set(adjusted)):
        period = grid.get(start)
        if period is None:
            continue
        limits = period_limits(terms, period).get(meter)
        g, a = gross.get((start, meter), Decimal(0)), adjusted.get((start, meter), Decimal(0))
        if limits is None:
            if a:
                out.append(f"{start} {meter}: minimum/maximum lines {a} without limits")
            continue
        below, above = limit_split(g, limits)
        if g + a != g + below + above:
            out.append(f"{start} {meter}: gross {g} nets to {g + a}, limits "
                       f"{limits.minimum}..{limits.maximum} say {g + below + above}")
    # a period with a minimum bills it even without usage
    for inv in finalized:
        period = grid.get(inv["period_start"])
        if period is None or period.end_date != inv["period_end"]:
            continue
        for meter, limits in period_limits(terms, period).items():
            key = (inv["period_start"], meter)
            if limits.minimum and key not in gross and key not in adjusted:
                out.append(f"{inv['key']}: no {meter} minimum line ({limits.minimum})")
    return out[:8]


def true_ups_match(o: Outcome) -> list[str]:
    """SPEC 12: each usage invoice's true-up is the shortfall of its spend (per
    billing period) or, on the final invoice, of the term's spend (per term);
    never paid with credits."""
    setup = _setup(o)
    if setup is None or o.ledger is None:
        return []
    terms, finalized, grid = setup
    lines: dict[int, list[dict[str, Any]]] = {}
    for ln in o.ledger.lines:
        lines.setdefault(ln["invoice_id"], []).append(ln)

    def spend_of(inv: dict[str, Any]) -> Decimal:
        return sum((_d(ln["amount"]) for ln in lines.get(inv["id"], [])
                    if ln["kind"] in USAGE_KINDS), Decimal(0))

    # The term's true-up is computed once, when the final invoice is issued,
    # against the invoices live then (SPEC 12). A later void or reissue (SPEC
    # 11) changes spend from then on, not that invoice. So "before" is the
    # spend of the other usage invoices finalized before it and not voided by
    # then (both instants are the database's clock; a void and its reissue are
    # one transaction, so the voided invoice is gone for its reissue).
    voided_at = {r["invoice_key"]: r["created_at"] for r in o.ledger.corrections
                 if r["kind"] == "void"}
    usage = [i for i in o.ledger.invoices if i["kind"] == "usage" and i["number"] is not None]

    def spend_before(inv: dict[str, Any]) -> Decimal:
        at = inv["finalized_at"]
        return sum((spend_of(x) for x in usage
                    if (x["finalized_at"], x["id"]) < (at, inv["id"])
                    and not (x["key"] in voided_at and voided_at[x["key"]] <= at)), Decimal(0))

    out = []
    for inv in finalized:
        own = lines.get(inv["id"], [])
        spend = spend_of(inv)
        before = spend_before(inv)
        got = sum((_d(ln["amount"]) for ln in own if ln["kind"] == "true_up"), Decimal(0))
        period = grid.get(inv["period_start"])
        if period is not None and period.end_date == inv["period_end"]:
            progress = commitment_progress(terms, period, spend, before,
                                           is_final=period.end_date == terms.term_end)
            want = Decimal(0) if progress is None else progress.true_up
            if got != want:
                out.append(f"{inv['key']}: true-up {got}, spend {spend} (before {before}) "
                           f"says {want}")
            if [ln["kind"] for ln in own if ln["kind"] == "true_up"] and (
                    own[-1]["kind"] != "true_up"):
                out.append(f"{inv['key']}: the true-up is not the last line")
        if _d(inv["credits_applied"]) > spend:
            out.append(f"{inv['key']}: credits {inv['credits_applied']} pay more than the "
                       f"usage-kind lines {spend}")
    return out[:8]
