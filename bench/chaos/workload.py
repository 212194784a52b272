"""The seeded workload: backdated contracts of every kind, their usage, amendments
and payments (pure: no I/O, the same plan for the same seed and day).

Every mutating request is planned with its own ``Idempotency-Key`` and is sent
twice with it (some pairs concurrently): billow must record it once and answer
both sends the same way.

Determinism between the control and the fault run is what makes them
comparable, so the plan only asks for things whose outcome cannot depend on
timing (faults, how far a contract has caught up):

* usage is sent right after its contract is created, well inside the usage
  grace window (``grace_hours``), so every event is on time;
* amendments take effect at explicit instants inside the current period
  (never before the open period, so never clamped) or later: a
  ``change_payment_terms`` or ``set_auto_pay`` only in the future, since they
  would otherwise apply to whichever catch-up invoices come after them;
* a ``change_billing_cycle`` (effective at the open period's end) is sent
  only once the contract has caught up;
* payment amounts are fractions of the invoice total, resolved when the
  invoice shows up in ``GET /v1/invoices``;
* corrections (void, reissue, credit notes: `correction_plan`) are sent once
  their contract has settled, after its payments.

Both runs must happen on the same UTC day (``today``): invoices are issued
and due relative to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from bench.chaos.correction_plan import (
    CorrectionPlan,
    PaidTargets,
    picked_indexes,
    plan_corrections,
)
from models.catalog import load_catalog
from models.contract import ContractTerms, load_contract, resolve_terms
from models.periods import Period, add_months, billing_periods

CATALOG: dict[str, Any] = {
    "meters": [
        {"key": "tokens", "name": "LLM tokens", "aggregation": "sum", "group_by": ["model"],
         "rate_card": [{"match": {"model": "gpt-4"}, "unit_price": "0.03"},
                       {"match": {"model": "gpt-3.5"}, "unit_price": "0.002"}]},
        {"key": "requests", "name": "API requests", "aggregation": "sum",
         "group_by": ["region"],
         "rate_card": [{"match": {"region": "eu"}, "unit_price": "0.0012"},
                       {"match": {}, "unit_price": "0.001"}]},
        {"key": "calls", "name": "Support calls", "aggregation": "count",
         "rate_card": [{"match": {}, "tiers": {"mode": "graduated", "steps": [
             {"up_to": "3", "unit_price": "5.00"}, {"unit_price": "2.50"}]}}]},
    ],
    "plans": [
        {"key": "pro", "name": "Pro", "currency": "USD",
         "meters": ["tokens", "requests", "calls"], "billing_cycle": "monthly",
         "payment_terms_days": 30,
         "recurring_fees": [{"key": "platform", "name": "Platform fee",
                             "monthly_amount": "500.00"}]},
        {"key": "team", "name": "Team", "currency": "EUR", "meters": ["tokens", "calls"],
         "billing_cycle": "quarterly", "payment_terms_days": 45,
         "recurring_fees": [{"key": "seat", "name": "Seats", "monthly_amount": "120.00"}]},
    ],
}
# Meters whose line quantities add up to their events (sum: quantities; count:
# events): the "every event billed exactly once" check runs on these.
ADDITIVE_METERS = {"tokens": "sum", "requests": "sum", "calls": "count"}
GROUP_BY = {"tokens": ["model"], "requests": ["region"], "calls": []}
_PLAN_METERS = {"pro": ["tokens", "requests", "calls"], "team": ["tokens", "calls"]}
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Send:
    """One mutating request, sent twice with the same ``Idempotency-Key``."""

    label: str
    method: str
    path: str
    body: dict[str, Any]
    key: str
    concurrent: bool
    valid: bool = True  # False: truly invalid, billow must answer 4xx and change nothing


@dataclass(frozen=True)
class PaymentPlan:
    """A payment of (a fraction of) an invoice, resolved once the invoice exists."""

    invoice_key: str
    # Fraction of the invoice total; None: the rest after the earlier planned ones.
    fraction: Decimal | None
    payment_id: str | None  # None: the Idempotency-Key is its only id
    key: str
    concurrent: bool
    # Truly invalid variants (billow must answer 4xx): "overpay" asks for more than
    # the invoice owes; "key_reuse" sends this key again with another amount.
    invalid: str | None = None


@dataclass
class ContractPlan:
    index: int
    kind: str
    contract_id: str
    customer_id: str
    document: dict[str, Any]
    terms: ContractTerms
    past_usage_keys: list[str]  # usage invoices of the periods ended by today
    usage_batches: list[list[dict[str, Any]]] = field(default_factory=list)
    amend_early: list[Send] = field(default_factory=list)  # right after the usage
    amend_late: list[Send] = field(default_factory=list)  # once caught up
    payments: list[PaymentPlan] = field(default_factory=list)
    corrections: list[CorrectionPlan] = field(default_factory=list)  # once settled

    @property
    def auto_pay(self) -> bool:
        return self.terms.auto_pay

    @property
    def events(self) -> int:
        return sum(len(b) for b in self.usage_batches)


@dataclass
class Workload:
    seed: int
    today: date
    grace_hours: Decimal
    catalog: dict[str, Any]
    contracts: list[ContractPlan]

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.contracts:
            out[c.kind] = out.get(c.kind, 0) + 1
        return out


def grace_hours_for(seconds: float) -> Decimal:
    """A grace window in hours as a contract field takes it (whole seconds)."""
    return (Decimal(int(seconds)) / 3600).quantize(Decimal("0.000001"))


def build_workload(
    seed: int, contracts: int, today: date, grace_hours: Decimal, events_per_contract: int = 30
) -> Workload:
    rng = random.Random(seed)
    # Drawn from their own seeds: the rest of the workload is as it was before corrections.
    correcting = picked_indexes(seed, contracts, KINDS)
    plans = [
        _plan(i, KINDS[i % len(KINDS)], rng, today, grace_hours, events_per_contract,
              seed if i in correcting else None)
        for i in range(contracts)
    ]
    return Workload(seed=seed, today=today, grace_hours=grace_hours, catalog=CATALOG,
                    contracts=plans)


# --- the kinds ------------------------------------------------------------------------


class _Ctx:
    """What a kind's builder needs: the contract so far, dates, id makers."""

    def __init__(self, index: int, kind: str, rng: random.Random, today: date) -> None:
        self.index, self.kind, self.rng, self.today = index, kind, rng, today
        self.cid = f"c{index:04d}-{kind.replace('_', '-')}"
        self.t0 = datetime.combine(today, time(), tzinfo=UTC)  # today's UTC midnight
        self.doc: dict[str, Any] = {}
        self.amend_early: list[Send] = []
        self.amend_late: list[Send] = []
        self.payments: list[PaymentPlan] = []
        self._n = 0

    def start(self, months_back: tuple[int, int], day: int | None = None) -> date:
        first = add_months(self.today.replace(day=1), -self.rng.randint(*months_back))
        return first.replace(day=day or self.rng.randint(1, 28))

    def periods(self) -> list[Period]:
        """The periods of the contract as written so far."""
        return _resolve(_jsonable(self.doc))[1]

    def next_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self.cid}-{self._n}"

    def concurrent(self) -> bool:
        return self.rng.random() < 0.35

    def amend(self, body: dict[str, Any], late: bool = False, valid: bool = True,
              amendment_id: str | None = None) -> str:
        aid = amendment_id or self.next_id("am")
        send = Send(label=f"amend {body['kind']}", method="POST",
                    path=f"/v1/contracts/{self.cid}/amendments", body={"id": aid, **body},
                    key=self.next_id("key"), concurrent=self.concurrent(), valid=valid)
        (self.amend_late if late else self.amend_early).append(send)
        return aid

    def pay(self, invoice_key: str, fraction: Decimal | None = Decimal(1), with_id: bool = True,
            invalid: str | None = None) -> None:
        self.payments.append(PaymentPlan(
            invoice_key=invoice_key, fraction=fraction,
            payment_id=self.next_id("pay") if with_id else None, key=self.next_id("key"),
            concurrent=self.concurrent(), invalid=invalid))


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def _current(periods: list[Period], t0: datetime) -> Period | None:
    return next((p for p in periods if p.start <= t0 < p.end), None)


def _in_current(periods: list[Period], t0: datetime, days_in: int) -> datetime:
    """An instant ``days_in`` days into the current period, at most today's midnight:
    never before any open period (not clamped), already due (applied at once)."""
    cur = _current(periods, t0)
    start = cur.start if cur else t0
    return min(start + timedelta(days=days_in), t0)


def _k_commitment(c: _Ctx) -> None:
    c.doc.update(plan="pro", starts_on=c.start((3, 6)), term_months=12,
                 commitment={"amount": "6000.00", "bonus_percent": "20"})
    c.pay(f"commitment:{c.doc['starts_on']}", with_id=True)
    c.pay("usage#0", with_id=True)


def _k_grants(c: _Ctx) -> None:
    starts = c.start((5, 9), day=c.rng.randint(2, 27))
    c.doc.update(plan="team", starts_on=starts, term_months=24, billing_anchor="calendar",
                 credit_grants=[
                     {"id": "welcome", "credits": "150.00", "priority": 1},
                     {"id": "promo", "credits": "80.00",
                      "expires": add_months(starts, 4).isoformat()}])
    c.pay("usage#0", Decimal("0.4"), with_id=False)
    c.pay("usage#0", None, with_id=True)


def _k_priced_grant(c: _Ctx) -> None:
    starts = c.start((3, 6))
    effective = add_months(starts, 1)
    c.doc.update(plan="pro", starts_on=starts, term_months=12, credit_grants=[
        {"id": "pack", "credits": "1200.00", "price": "1000.00",
         "effective": effective.isoformat()}])
    c.pay(f"top_up:{effective.isoformat()}", with_id=True)
    c.pay("usage#0", invalid="overpay")


def _k_overrides(c: _Ctx) -> None:
    c.doc.update(plan="pro", starts_on=c.start((3, 6)), term_months=12)
    periods = c.periods()
    p1 = periods[0]
    p2 = periods[1]
    mid1 = p1.start + (p1.end - p1.start) / 2
    mid2 = p2.start + (p2.end - p2.start) / 2
    c.doc["rate_overrides"] = [
        {"discount_percent": "10"},
        {"meter": "tokens", "match": {"model": "gpt-4"}, "unit_price": "0.025",
         "effective": _iso(mid1.replace(microsecond=0)),
         "until": _iso(mid2.replace(microsecond=0))},
    ]
    body = {"kind": "rate_override", "effective": _iso(_in_current(periods, c.t0, 1)),
            "override": {"meter": "requests", "discount_percent": "25"}}
    aid = c.amend(body)
    # The same amendment id with other content: a conflict, nothing changes.
    c.amend({**body, "override": {"meter": "requests", "discount_percent": "30"}},
            valid=False, amendment_id=aid)
    c.pay("usage#1", with_id=False)


def _k_terminate(c: _Ctx) -> None:
    c.doc.update(plan="pro", starts_on=c.start((3, 5)), term_months=12,
                 commitment={"amount": "3000.00", "credits": "3300.00"})
    # Today's midnight: the final period ends today and closes during the run.
    c.amend({"kind": "terminate", "effective": _iso(c.t0)})
    c.pay(f"commitment:{c.doc['starts_on']}", with_id=True)


def _k_extend(c: _Ctx) -> None:
    c.doc.update(plan="pro", starts_on=c.start((4, 8)), term_months=12,
                 billing_cycle="quarterly")
    c.amend({"kind": "extend_term", "term_months": 12})
    # Future instants: scheduled, they change no invoice of this run.
    c.amend({"kind": "change_payment_terms", "payment_terms_days": 45,
             "effective": _iso(c.t0 + timedelta(days=3))})
    c.amend({"kind": "set_auto_pay", "auto_pay": True,
             "effective": _iso(c.t0 + timedelta(days=5))})
    c.pay("usage#0", with_id=True)


def _k_ended(c: _Ctx) -> None:
    starts = c.start((8, 11))
    c.doc.update(plan="pro", starts_on=starts, term_months=6,
                 commitment={"amount": "2000.00", "discount_percent": "10",
                             "expires_on": add_months(starts, 4).isoformat()})
    c.pay(f"commitment:{starts}", with_id=True)
    c.pay("usage#-1", with_id=True)


def _k_auto_pay(c: _Ctx) -> None:
    c.doc.update(plan="pro", starts_on=c.start((3, 6)), term_months=12, auto_pay=True,
                 commitment={"amount": "1500.00"})


def _k_grant_amendments(c: _Ctx) -> None:
    c.doc.update(plan="team", starts_on=c.start((4, 9)), term_months=18)
    cur = _current(c.periods(), c.t0)
    start = cur.start if cur else c.t0
    priced_at = start if start == c.t0 else c.t0 - timedelta(days=1)
    c.amend({"kind": "grant_credits", "credits": "300.00", "effective": _iso(c.t0)})
    c.amend({"kind": "grant_credits", "credits": "500.00", "price": "450.00",
             "grant_id": "topup-1", "effective": _iso(priced_at)})
    c.pay(f"top_up:{priced_at.date().isoformat()}", with_id=True)


def _k_cycle_change(c: _Ctx) -> None:
    c.doc.update(plan="pro", starts_on=c.start((3, 6)), term_months=12)
    # Effective at the open period's end: sent once caught up, so that is today's period.
    c.amend({"kind": "change_billing_cycle", "billing_cycle": "quarterly"}, late=True)
    c.pay("usage#-1", Decimal("0.5"), with_id=True)


def _k_month_end(c: _Ctx) -> None:
    first = add_months(c.today.replace(day=1), -c.rng.randint(3, 7))
    while add_months(first, 1) - first != timedelta(days=31):
        first = add_months(first, -1)
    c.doc.update(plan="pro", starts_on=first.replace(day=31), term_months=12,
                 commitment={"amount": "1000.00"})
    c.pay("usage#0", with_id=False)
    c.pay("usage#1", with_id=True, invalid="key_reuse")


_KINDS: dict[str, Callable[[_Ctx], None]] = {
    "commitment": _k_commitment,
    "grants": _k_grants,
    "priced_grant": _k_priced_grant,
    "overrides": _k_overrides,
    "terminate": _k_terminate,
    "extend": _k_extend,
    "ended": _k_ended,
    "auto_pay": _k_auto_pay,
    "grant_amendments": _k_grant_amendments,
    "cycle_change": _k_cycle_change,
    "month_end": _k_month_end,
}
KINDS = list(_KINDS)
_CATALOG = load_catalog(CATALOG)


def _resolve(doc: dict[str, Any]) -> tuple[ContractTerms, list[Period]]:
    terms = resolve_terms(load_contract(_jsonable(doc)), _CATALOG)
    periods = billing_periods(terms.starts_on, terms.term_end, terms.billing_cycle,
                              terms.billing_anchor, terms.timezone,
                              cycle_anchor=terms.cycle_anchor)
    return terms, periods


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in doc.items()}


def _plan(index: int, kind: str, rng: random.Random, today: date, grace_hours: Decimal,
          events: int, corrections_seed: int | None) -> ContractPlan:
    c = _Ctx(index, kind, rng, today)
    c.doc = {"id": c.cid, "customer": {"id": f"cust-{index:04d}", "name": f"Customer {index}"},
             "usage_grace_hours": str(grace_hours)}
    _KINDS[kind](c)
    doc = _jsonable(c.doc)
    terms, periods = _resolve(doc)
    past = [p for p in periods if p.end <= c.t0]
    past_keys = [f"usage:{p.start_date.isoformat()}" for p in past]
    payments = [p for p in (_resolve_payment(p, past_keys) for p in c.payments)
                if p is not None]
    corrections: list[CorrectionPlan] = []
    if corrections_seed is not None:
        grant_keys = ([f"commitment:{doc['starts_on']}"] if "commitment" in doc else []) + [
            p.invoice_key for p in payments if p.invoice_key.startswith("top_up:")]
        paid = PaidTargets.of([(p.invoice_key, p.fraction, p.invalid != "overpay")
                               for p in payments])
        corrections = plan_corrections(corrections_seed, c.cid, past_keys, grant_keys, paid)
    return ContractPlan(
        index=index, kind=kind, contract_id=c.cid, customer_id=doc["customer"]["id"],
        document=doc, terms=terms, past_usage_keys=past_keys,
        usage_batches=_usage(c, terms, periods, events),
        amend_early=c.amend_early, amend_late=c.amend_late,
        payments=payments, corrections=corrections,
    )


def _resolve_payment(p: PaymentPlan, past_keys: list[str]) -> PaymentPlan | None:
    """``usage#k`` names the k-th past usage invoice (negative from the end)."""
    if not p.invoice_key.startswith("usage#"):
        return p
    k = int(p.invoice_key.removeprefix("usage#"))
    if not -len(past_keys) <= k < len(past_keys):
        return None
    return PaymentPlan(invoice_key=past_keys[k], fraction=p.fraction, payment_id=p.payment_id,
                       key=p.key, concurrent=p.concurrent, invalid=p.invalid)


def _usage(c: _Ctx, terms: ContractTerms, periods: list[Period],
           count: int) -> list[list[dict[str, Any]]]:
    """Events over the term up to today's midnight, some exactly on a boundary,
    split into 1-3 batches; a later batch resends one event of an earlier one."""
    start = terms.term_start_at
    end = min(terms.term_end_at, c.t0)
    span = int((end - start).total_seconds())
    if span <= 0:
        return []
    meters = _PLAN_METERS[terms.plan_key]
    stamps = [start + timedelta(seconds=c.rng.randrange(span)) for _ in range(count)]
    stamps[: min(2, len(periods))] = [p.start for p in periods[:2] if p.start < end]
    events = []
    for n, ts in enumerate(sorted(stamps)):
        meter = meters[n % len(meters)]
        ev: dict[str, Any] = {"id": f"{c.cid}-e{n:04d}", "customer": terms.customer.id,
                              "meter": meter, "timestamp": _iso(ts)}
        if meter == "tokens":
            ev["dimensions"] = {"model": c.rng.choice(["gpt-4", "gpt-3.5"])}
            ev["quantity"] = str(Decimal(c.rng.randint(100, 400_000)) / 10)
        elif meter == "requests":
            ev["dimensions"] = {"region": c.rng.choice(["eu", "us", "ap"])}
            ev["quantity"] = str(c.rng.randint(1, 50_000))
        events.append(ev)
    c.rng.shuffle(events)  # producers do not send in time order
    cuts = sorted(c.rng.sample(range(1, len(events)), min(c.rng.randint(0, 2), len(events) - 1)))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    if len(batches) > 1:
        batches[-1] = [*batches[-1], batches[0][0]]
    return batches


def payment_amount(plan: PaymentPlan, total: Decimal, earlier: Decimal) -> Decimal:
    """What a planned payment pays of an invoice of ``total`` with ``earlier`` planned
    payments before it; 0 when nothing is left to pay."""
    if plan.fraction is None:
        return max(total - earlier, Decimal(0))
    share = (total * plan.fraction).quantize(_CENT)
    return min(share, max(total - earlier, Decimal(0)))
