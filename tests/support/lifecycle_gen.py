"""Random contract lifecycles for the property test (billow issue 11, "The proof").

A `Lifecycle` is plain JSON-able data: a catalog, a contract document and a
timeline of actions (amendments, payments, usage batches) at instants. The
strategies here draw them the way SPEC.md sections 1-8 describe the inputs,
valid and invalid alike:

- contracts of every cycle and anchor, in several time zones (half-hour and
  45-minute offsets, DST, +14:00), starting on month ends and leap days,
  with commitments, credit grants (priced and promotional), rate overrides
  and values at and just past the SPEC.md section 6 bounds;
- amendments of every kind, sent exactly at the term start, at boundaries,
  at the term end, a second either side, before the term opens and after it
  ends; duplicated (same id and content) and conflicting (same id, other
  content);
- payments named by what they pay (``usage#2``, ``commitment``, ``top_up#0``)
  and by how much (``outstanding``, ``half``, ``over``), resolved against the
  workflow's state when they are sent, so a shrunk example still pays the
  invoice it meant;
- usage at and around boundaries (a microsecond before, exactly at), outside
  the term, late after finalization, with the catalog's ``group_by``
  dimensions, unpriced values, and quantities at the bounds;
- corrections (SPEC.md section 11): void (with or without reissue), reissue
  and credit notes (line by line or one amount; every reason; refund or
  customer credit), named like payments and resolved when sent, also long
  after the term (the ledger takes them then); resent with the same id and
  content, with the same id and other content, and the refusals (credit more
  than is uncredited, void a paid invoice, credit a void one, reissue one
  that is not void).

Instants are drawn as (anchor, offset) pairs so that shrinking moves them
towards the term start. Everything is computed with the pure ``models``
package: no I/O here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from models.corrections import REASONS
from models.periods import (
    BillingAnchor,
    BillingCycle,
    billing_periods,
    local_midnight_utc,
    term_end_date,
)

# --- the catalog -------------------------------------------------------------

CURRENCIES = ("USD", "EUR", "JPY")
PLAN = "p"
# tokens: sum, no fallback entry, so model "claude" is unpriced (held invoice).
# requests: count with a graduated flat fee. seats: unique_count. storage: max.
PRICED_MODELS = ("gpt-4", "gpt-3.5")
UNPRICED_MODELS = ("claude",)
REGIONS = ("eu", "us")
STORAGE_TIERS = ("hot", "cold")
ADDITIVE_METERS = ("tokens", "requests")


# Catalog variants, as bits: requests' tiers per group, requests' tiers in
# volume mode, storage as a ``latest`` meter instead of ``max``.
PER_GROUP, VOLUME, LATEST = 1, 2, 4


def catalog_doc(currency: str, fee: str | None, variant: int = 0) -> dict[str, Any]:
    fees = [] if fee is None else [{"key": "platform", "name": "Platform", "monthly_amount": fee}]
    doc = _catalog(currency, fees)
    requests, storage = doc["meters"][1], doc["meters"][3]
    if variant & PER_GROUP:
        requests["tiers_per_group"] = True
    if variant & VOLUME:
        requests["rate_card"][0]["tiers"]["mode"] = "volume"
    if variant & LATEST:
        storage["aggregation"] = "latest"
    return doc


def _catalog(currency: str, fees: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "meters": [
            {"key": "tokens", "name": "Tokens", "aggregation": "sum", "group_by": ["model"],
             "rate_card": [{"match": {"model": "gpt-4"}, "unit_price": "0.03"},
                           {"match": {"model": "gpt-3.5"}, "unit_price": "0.002"}]},
            {"key": "requests", "name": "Requests", "aggregation": "count",
             "group_by": ["region"],
             "rate_card": [{"match": {}, "tiers": {"mode": "graduated", "steps": [
                 {"up_to": "2", "unit_price": "0"},
                 {"unit_price": "0.5", "flat_fee": "3"}]}}]},
            {"key": "seats", "name": "Seats", "aggregation": "unique_count",
             "unique_by": "user", "rate_card": [{"match": {}, "unit_price": "10"}]},
            {"key": "storage", "name": "Storage", "aggregation": "max", "group_by": ["tier"],
             "rate_card": [{"match": {}, "package": {"size": "100", "price": "7"}}]},
        ],
        "plans": [{
            "key": PLAN, "name": "Fuzz plan", "currency": currency,
            "meters": ["tokens", "requests", "seats", "storage"],
            "billing_cycle": "monthly", "payment_terms_days": 30, "auto_pay": False,
            "recurring_fees": fees,
        }],
    }


# --- the lifecycle -----------------------------------------------------------


@dataclass(frozen=True)
class Lifecycle:
    """One generated example: what is created, then what happens when."""

    currency: str
    fee: str | None
    contract: dict[str, Any]
    actions: tuple[dict[str, Any], ...]  # sorted by "at"; each has "at" and "do"
    card_declines: int = 0  # auto-pay charges the simulated card declines first
    gateway_failures: int = 0  # calls to the card gateway that fail (it is down)
    # No workflow cache: every workflow task replays the whole history, so
    # any nondeterminism (a validator or query that changes state, say) fails.
    replay: bool = False
    variant: int = 0  # catalog variant bits (PER_GROUP, VOLUME, LATEST)

    @property
    def catalog(self) -> dict[str, Any]:
        return catalog_doc(self.currency, self.fee, self.variant)

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency, "fee": self.fee, "card_declines": self.card_declines,
            "gateway_failures": self.gateway_failures, "replay": self.replay,
            "variant": self.variant,
            "contract": self.contract, "actions": list(self.actions),
        }

    def fingerprint(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, default=str)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- contract ----------------------------------------------------------------

TIMEZONES = (
    "UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "Australia/Lord_Howe",
    "America/St_Johns", "Pacific/Kiritimati", "Pacific/Pago_Pago", "Europe/London",
)
# Month ends, a leap day and plain firsts; all after the machine's "now".
START_DATES = (
    date(2027, 3, 1), date(2027, 1, 31), date(2028, 2, 29), date(2027, 3, 31),
    date(2027, 12, 31), date(2027, 4, 30), date(2028, 1, 30), date(2027, 2, 28),
    date(2027, 11, 15), date(2028, 8, 31),
)
# (valid, invalid) choices: a contract is drawn "bad" one time in four, and
# only a bad one takes invalid values (each field then one time in three), so
# most examples get past creation and live a whole term.
TERM_MONTHS = ((1, 2, 3, 12, 6, 13, 24, 1200), (1201,))
PAYMENT_TERMS = ((None, 0, 30, 45, 3650), (3651,))
GRACE_HOURS = (None, "0", "2", "48", "0.5")
ID_LENGTH = ((-1, -1, -1, 0), (1,))  # short, exactly 256 / 257 characters
MAX_ID = 256


def pick(draw: st.DrawFn, choices: tuple[tuple[Any, ...], tuple[Any, ...]], bad: bool) -> Any:
    valid, invalid = choices
    if bad and invalid and draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(invalid))
    return draw(st.sampled_from(valid))


def _id(prefix: str, n: int, long: int) -> str:
    """Short ids, or ids exactly at (``long`` = 0) and past (1) the 256 bound."""
    base = f"{prefix}{n}"
    if long < 0:
        return base
    return base + "x" * (MAX_ID + long - len(base))


def money(currency: str, whole: int, cents: int = 0) -> str:
    if currency == "JPY":
        return str(whole)
    return f"{whole}.{cents:02d}"


@st.composite
def commitments(draw: st.DrawFn, currency: str, starts_on: date, term_end: date,
                bad: bool) -> dict[str, Any] | None:
    if not draw(st.booleans()):
        return None
    amount = pick(draw, ((money(currency, 1000), money(currency, 12000), money(currency, 99, 99),
                          "999999999999999999"), ("1000000000000000000",)), bad)
    doc: dict[str, Any] = {"amount": amount}
    form = draw(st.sampled_from(["none", "bonus", "discount", "credits"]))
    if form == "bonus":
        doc["bonus_percent"] = draw(st.sampled_from(["10", "0", "33.333"]))
    elif form == "discount":
        doc["discount_percent"] = draw(st.sampled_from(["20", "99.9", "12.5"]))
    elif form == "credits":
        doc["credits"] = pick(draw, (("10", money(currency, 15000)), ("0.001",)), bad)
    # at_start / before / after_end: windows outside the term (known case 3)
    expires = pick(draw, (("none", "none", "mid"), ("at_start", "before", "after_end")), bad)
    if expires == "mid":
        doc["expires_on"] = (starts_on + timedelta(days=20)).isoformat()
    elif expires == "at_start":
        doc["expires_on"] = starts_on.isoformat()
    elif expires == "before":
        doc["expires_on"] = (starts_on - timedelta(days=3)).isoformat()
    elif expires == "after_end":
        doc["expires_on"] = (term_end + timedelta(days=40)).isoformat()
    if draw(st.booleans()):
        doc["priority"] = draw(st.sampled_from([0, 1, -1]))
    return doc


@st.composite
def contract_grants(draw: st.DrawFn, currency: str, starts_on: date,
                    bad: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(draw(st.integers(0, 2))):
        g: dict[str, Any] = {
            "id": pick(draw, ((f"g{n}",), ("commitment", "g0")), bad),
            "credits": pick(draw, ((money(currency, 500), "100000"), ("0.005",)), bad),
        }
        price = draw(st.sampled_from([None, None, "0", money(currency, 400)]))  # known case 5
        if price is not None:
            g["price"] = price
        window = pick(draw, (("term", "term", "later", "instant"), ("empty",)), bad)
        if window == "later":
            g["effective"] = (starts_on + timedelta(days=45)).isoformat()
        elif window == "empty":  # expires <= effective: known case 3
            g["effective"] = (starts_on + timedelta(days=10)).isoformat()
            g["expires"] = (starts_on + timedelta(days=10)).isoformat()
        elif window == "instant":
            g["expires"] = f"{(starts_on + timedelta(days=31)).isoformat()}T12:00:00Z"
        if draw(st.booleans()):
            g["priority"] = draw(st.sampled_from([0, 2, -1]))
        out.append(g)
    return out


OVERRIDES: tuple[dict[str, Any], ...] = (
    {"meter": "tokens", "match": {"model": "claude"}, "unit_price": "0.01"},
    {"discount_percent": "10"},
    {"meter": "tokens", "discount_percent": "100"},
    {"meter": "tokens", "match": {"model": "gpt-4"}, "unit_price": "0"},
    {"meter": "requests", "tiers": {"mode": "volume", "steps": [
        {"up_to": "1", "unit_price": "1"}, {"unit_price": "0.25", "flat_fee": "1"}]}},
    {"meter": "storage", "match": {"tier": "hot"}, "package": {"size": "10", "price": "1"}},
    # spend limits per period (SPEC 12): whole amounts, valid in every currency
    {"meter": "tokens", "minimum_amount": "5"},
    {"meter": "requests", "maximum_amount": "4"},
    {"meter": "storage", "minimum_amount": "2", "maximum_amount": "9"},
)
# unknown meter, dimension not in group_by, no price, discount over 100
BAD_OVERRIDES: tuple[dict[str, Any], ...] = (
    {"meter": "nope", "unit_price": "1"},
    {"meter": "tokens", "match": {"region": "eu"}, "unit_price": "1"},
    {"meter": "tokens"},
    {"discount_percent": "150"},
    {"meter": "tokens", "minimum_amount": "5", "maximum_amount": "1"},  # minimum above maximum
    {"meter": "seats", "maximum_amount": "-1"},
)


@st.composite
def rate_overrides(draw: st.DrawFn, term_start: datetime, bad: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        ov = dict(pick(draw, (OVERRIDES, BAD_OVERRIDES), bad))
        if draw(st.integers(0, 3)) == 0:
            ov["effective"] = iso(term_start + timedelta(days=draw(st.sampled_from([0, 15, 40]))))
        if draw(st.integers(0, 3)) == 0:
            ov["until"] = iso(term_start + timedelta(days=draw(st.sampled_from([15, 59]))))
        out.append(ov)
    return out


@st.composite
def contracts(draw: st.DrawFn, currency: str) -> dict[str, Any]:
    bad = draw(st.integers(0, 3)) == 0
    starts_on = draw(st.one_of(
        st.sampled_from(START_DATES), st.dates(date(2027, 2, 1), date(2028, 12, 31))))
    term_months = pick(draw, TERM_MONTHS, bad)
    tz = draw(st.sampled_from(TIMEZONES))
    doc: dict[str, Any] = {
        "id": _id("c", 1, pick(draw, ID_LENGTH, bad)),
        "customer": {"id": _id("cust", 1, pick(draw, ID_LENGTH, bad)), "name": "Fuzz customer"},
        "plan": PLAN,
        "starts_on": starts_on.isoformat(),
        "term_months": term_months,
        "timezone": tz,
    }
    if (cycle := draw(st.sampled_from([None, *BillingCycle]))) is not None:
        doc["billing_cycle"] = str(cycle)
    if draw(st.booleans()):
        doc["billing_anchor"] = str(draw(st.sampled_from(list(BillingAnchor))))
    if (terms := pick(draw, PAYMENT_TERMS, bad)) is not None:
        doc["payment_terms_days"] = terms
    if (auto_pay := draw(st.sampled_from([None, None, True, False]))) is not None:
        doc["auto_pay"] = auto_pay
    if (grace := draw(st.sampled_from(GRACE_HOURS))) is not None:
        doc["usage_grace_hours"] = grace
    end = term_end_date(starts_on, min(term_months, 1200))
    if (commitment := draw(commitments(currency, starts_on, end, bad))) is not None:
        doc["commitment"] = commitment
    if grants := draw(contract_grants(currency, starts_on, bad)):
        doc["credit_grants"] = grants
    if overrides := draw(rate_overrides(local_midnight_utc(starts_on, tz), bad)):
        doc["rate_overrides"] = overrides
    if (minimum := draw(minimum_commitments(currency, bad))) is not None:
        doc["minimum_commitment"] = minimum
    return doc


@st.composite
def minimum_commitments(draw: st.DrawFn, currency: str, bad: bool) -> dict[str, Any] | None:
    """SPEC 12: a postpaid minimum per term or billing period; bad ones in another
    currency, negative or with more decimals than the currency has."""
    if draw(st.integers(0, 2)):
        return None
    doc: dict[str, Any] = {
        "amount": pick(draw, ((money(currency, 50), money(currency, 2000), "1"),
                              ("-5", "0.0001")), bad),
        "per": draw(st.sampled_from(["term", "billing_period"])),
    }
    if draw(st.booleans()):
        doc["prorate_on_termination"] = draw(st.booleans())
    if bad and draw(st.integers(0, 2)) == 0:
        doc["currency"] = "GBP"
    return doc


# --- instants ----------------------------------------------------------------

# Offsets from an anchor instant: exactly at it, a second either side, a
# microsecond before (the last instant of a period), an hour and a day later
# (after a 0/0.5/2 h grace window: the period is finalized).
OFFSETS = (
    timedelta(0), timedelta(seconds=1), timedelta(seconds=-2), timedelta(microseconds=-1),
    timedelta(hours=1), timedelta(hours=12), timedelta(days=1), timedelta(days=3),
    timedelta(days=-1), timedelta(days=-10),
)
# Usage timestamps also take the last second of a period. Actions do not:
# they are delivered one second after their instant (see lifecycle_run), and
# one landing exactly on a timer of the workflow trips the time-skipping
# server's "invalid history builder state for action" (worker/simulate.py).
EVENT_OFFSETS = (*OFFSETS, timedelta(seconds=-1))
MAX_ANCHOR_PERIODS = 6


def anchors(contract: dict[str, Any]) -> list[tuple[str, datetime]]:
    """Named instants of the contract as written: term start, the first
    boundaries, the term end."""
    starts_on = date.fromisoformat(contract["starts_on"])
    tz = contract.get("timezone", "UTC")
    months = min(int(contract["term_months"]), 1200)
    end = term_end_date(starts_on, months)
    cycle = BillingCycle(contract.get("billing_cycle", "monthly"))
    anchor = BillingAnchor(contract.get("billing_anchor", "start"))
    short_end = min(end, term_end_date(starts_on, min(months, 24)))
    periods = billing_periods(starts_on, short_end, cycle, anchor, tz, cycle_anchor=starts_on)
    out = [("start", local_midnight_utc(starts_on, tz))]
    out += [(f"b{i + 1}", p.end) for i, p in enumerate(periods[:MAX_ANCHOR_PERIODS])]
    out.append(("end", local_midnight_utc(end, tz)))
    return out


@st.composite
def instants(draw: st.DrawFn, points: list[tuple[str, datetime]],
             offsets: tuple[timedelta, ...] = OFFSETS) -> datetime:
    _, base = draw(st.sampled_from(points))
    if draw(st.integers(0, 4)) == 0:  # somewhere inside the following days
        return base + timedelta(minutes=draw(st.integers(0, 60 * 24 * 20)))
    return base + draw(st.sampled_from(offsets))


# --- actions -----------------------------------------------------------------


@st.composite
def amendments(draw: st.DrawFn, n: int, currency: str, points: list[tuple[str, datetime]],
               grant_ids: list[str]) -> dict[str, Any]:
    kind = draw(st.sampled_from([
        "rate_override", "grant_credits", "grant_credits", "change_billing_cycle",
        "change_payment_terms", "set_auto_pay", "extend_term", "terminate", "terminate",
        "set_minimum_commitment"]))
    a: dict[str, Any] = {"id": _id("a", n, draw(st.sampled_from([-1] * 18 + [0, 1]))),
                         "kind": kind}
    if draw(st.integers(0, 2)) == 0:
        a["effective"] = iso(draw(instants(points)))
    if kind == "rate_override":
        a["override"] = dict(draw(st.sampled_from(OVERRIDES + BAD_OVERRIDES)))
    elif kind == "grant_credits":
        a["credits"] = draw(st.sampled_from([money(currency, 100), money(currency, 20000),
                                             "0.001", "0", "999999999999999999"]))
        if (price := draw(st.sampled_from([None, "0", money(currency, 90),
                                           money(currency, 18000)]))) is not None:
            a["price"] = price
        if draw(st.booleans()):
            a["priority"] = draw(st.sampled_from([0, 1, -5]))
        expires = draw(st.sampled_from(["none", "none", "instant", "date"]))
        if expires == "instant":
            a["expires"] = iso(draw(instants(points)))
        elif expires == "date":
            a["expires"] = draw(instants(points)).date().isoformat()
        if draw(st.integers(0, 3)) == 0:
            a["grant_id"] = draw(st.sampled_from(["commitment", *grant_ids, "shared-grant"]))
    elif kind == "change_billing_cycle":
        a["billing_cycle"] = str(draw(st.sampled_from(list(BillingCycle))))
    elif kind == "change_payment_terms":
        a["payment_terms_days"] = draw(st.sampled_from([0, 15, 3650, 3651, 3_000_000]))
    elif kind == "set_auto_pay":
        a["auto_pay"] = draw(st.booleans())
    elif kind == "extend_term":
        a["term_months"] = draw(st.sampled_from([1, 3, 12, 1200, 120_000]))
    elif kind == "set_minimum_commitment":
        a["minimum_commitment"] = draw(st.one_of(
            st.none(), minimum_commitments(currency, draw(st.integers(0, 3)) == 0)))
    return a


PAY_REFS = ("usage#0", "usage#1", "usage#2", "commitment", "top_up#0", "latest", "latest",
            "paid", "unknown")
PAY_AMOUNTS = ("outstanding", "outstanding", "half", "over", "0", "-1", "0.001",
               "1000000000000000000")


@st.composite
def events(draw: st.DrawFn, n0: int, points: list[tuple[str, datetime]],
           customer: str, arrival: datetime) -> list[dict[str, Any]]:
    out = []
    for n in range(n0, n0 + draw(st.integers(1, 4))):
        meter = draw(st.sampled_from(["tokens", "tokens", "requests", "seats", "storage"]))
        dims: dict[str, str] = {}
        if meter == "tokens":
            dims["model"] = draw(st.sampled_from(PRICED_MODELS + PRICED_MODELS + UNPRICED_MODELS))
        elif meter == "requests":
            if draw(st.integers(0, 5)):  # sometimes the group_by dimension is missing
                dims["region"] = draw(st.sampled_from(REGIONS))
        elif meter == "seats":
            dims["user"] = draw(st.sampled_from(["u1", "u2", "u3"]))
        else:
            dims["tier"] = draw(st.sampled_from(STORAGE_TIERS))
        if draw(st.integers(0, 6)) == 0:
            dims["extra"] = "ignored"
        out.append({
            "id": _id("e", n, draw(st.sampled_from([-1] * 18 + [0, 1]))),
            "customer": customer,
            "meter": meter,
            "timestamp": iso(draw(event_times(points, arrival))),
            "quantity": draw(st.sampled_from(QUANTITIES)),
            "dimensions": dims,
        })
    return out


@st.composite
def event_times(draw: st.DrawFn, points: list[tuple[str, datetime]],
                arrival: datetime) -> datetime:
    """Mostly before the batch arrives (some of it late for a closed period),
    sometimes at an anchor (boundaries to the microsecond) wherever it is."""
    if draw(st.integers(0, 2)):
        return arrival - timedelta(minutes=draw(st.integers(0, 60 * 24 * 40)))
    return draw(instants(points, EVENT_OFFSETS))


QUANTITIES = ("1", "1000", "250.5", "0", "0.000000000001", "0.0000000000001",
              "999999999999999999", "1000000000000000000", "3")


# --- corrections (SPEC.md section 11) -------------------------------------------

# Invoices are named by what they are, resolved against the workflow's state
# (the ledger once it has completed) when sent, as payments are:
# ``usage#1`` is the second finalized usage invoice the correction applies to
# (open or overdue for a void, not void for a credit, void for a reissue;
# else of all of them); ``paid``/``void``/``reissued`` one in that state (the
# refusal, or the reissue's own correction, is the point).
CORRECT_REFS = ("usage#0", "usage#1", "usage#2", "commitment", "top_up#0", "latest", "latest",
                "latest", "paid", "void", "reissued", "unknown")
# Amounts by what they mean on the invoice when sent: all that is uncredited,
# half of it, one minor unit, what is still owed, one minor unit too much, a
# fraction of a minor unit, zero.
CREDIT_AMOUNTS = ("all", "all", "half", "half", "cent", "outstanding", "over", "tiny", "zero")
LINE_AMOUNTS = ("all", "all", "half", "cent", "over", "tiny")
LINE_REFS = ("first", "last", "usage", "usage", "fee", "grant", "beyond")
# After the term: once the workflow has completed, corrections go to the ledger.
AFTER_END = (timedelta(days=40), timedelta(days=75), timedelta(days=120))
# A correction names a finalized invoice: mostly after a boundary and its grace
# window (0 to 48 hours), while the invoice it finalized is open or overdue.
AFTER_BOUNDARY = tuple(timedelta(hours=h) for h in (3, 12, 26, 50, 24 * 5, 24 * 12, 24 * 40))


@st.composite
def corrections(draw: st.DrawFn, n: int, points: list[tuple[str, datetime]],
                at: datetime) -> dict[str, Any]:
    """One void, reissue or credit, its invoice and amounts named symbolically."""
    kind = draw(st.sampled_from(["void", "void", "reissue", "credit", "credit", "credit",
                                 "credit"]))
    c: dict[str, Any] = {"do": "correct", "kind": kind,
                         "id": _id("k", n, draw(st.sampled_from([-1] * 18 + [0, 1])))}
    when = draw(st.integers(0, 5))
    if when == 0 and points[-1][1] - points[0][1] < timedelta(days=5 * 365):
        at = points[-1][1] + draw(st.sampled_from(AFTER_END))
    elif when in (1, 2, 3) and len(points) > 2:
        at = draw(st.sampled_from(points[1:-1]))[1] + draw(st.sampled_from(AFTER_BOUNDARY))
    c["at"] = iso(at)
    # A reissue mostly names a void invoice (else it is refused: not void).
    # A credit names a paid one more often: what is left after the amount owed
    # is then refunded or kept as customer credit.
    refs = {"reissue": ("void",) * 4, "credit": ("paid",) * 2}.get(kind, ()) + CORRECT_REFS
    c["invoice"] = draw(st.sampled_from(refs))
    if kind == "void":
        c["reissue"] = draw(st.booleans())
    elif kind == "credit":
        c["reason"] = draw(st.sampled_from(REASONS + REASONS + ("oops",)))
        if draw(st.booleans()):
            c["amount"] = draw(st.sampled_from(CREDIT_AMOUNTS))
        else:
            c["lines"] = [{"line": draw(st.sampled_from(LINE_REFS)),
                           "amount": draw(st.sampled_from(LINE_AMOUNTS))}
                          for _ in range(draw(st.sampled_from([1, 1, 1, 2])))]
        if (remainder := draw(st.sampled_from([None, "refund", "credit", "credit"]))):
            c["remainder"] = remainder
    return c


@st.composite
def actions(draw: st.DrawFn, contract: dict[str, Any], currency: str) -> list[dict[str, Any]]:
    points = anchors(contract)
    customer = contract["customer"]["id"]
    grant_ids = [g["id"] for g in contract.get("credit_grants", [])]
    out: list[dict[str, Any]] = []
    sent_amendments: list[dict[str, Any]] = []
    pay_ids: list[str] = []
    sent_events: list[dict[str, Any]] = []
    sent_corrections: list[dict[str, Any]] = []
    n_events = 0
    for n in range(draw(st.integers(0, 12))):
        at = draw(instants(points))
        what = draw(st.sampled_from(["amend", "amend", "amend", "pay", "usage", "usage",
                                     "resend", "compact", "correct"]))
        if what == "correct":
            correction = draw(corrections(n, points, at))
            if sent_corrections and draw(st.integers(0, 3)) == 0:
                original = draw(st.sampled_from(sent_corrections))
                if draw(st.booleans()):  # the same id and content again: a resend
                    correction = original | {"at": correction["at"]}
                else:  # the same id, other content: a conflict
                    correction["id"] = original["id"]
            if correction["kind"] == "reissue" and draw(st.booleans()):
                # A void first (a day before), so the reissue has one to rate again.
                void = {"do": "correct", "kind": "void", "id": f"{correction['id']}v",
                        "invoice": draw(st.sampled_from(["latest", "latest", "usage#0"])),
                        "reissue": False, "at": iso(datetime.fromisoformat(
                            correction["at"].replace("Z", "+00:00")) - timedelta(days=1))}
                correction["invoice"] = "void"
                sent_corrections.append(void)
                out.append(void)
            sent_corrections.append(correction)
            out.append(correction)
        elif what == "resend" and sent_amendments:
            original = draw(st.sampled_from(sent_amendments))
            amendment = dict(original)
            if draw(st.booleans()):  # same id, other content: a conflict (known case 13)
                amendment = draw(amendments(n, currency, points, grant_ids)) | {
                    "id": original["id"]}
            out.append({"at": iso(at), "do": "amend", "via": "update", "amendment": amendment})
        elif what in ("amend", "resend"):
            amendment = draw(amendments(n, currency, points, grant_ids))
            if amendment["kind"] == "grant_credits":
                grant_ids.append(amendment.get("grant_id", amendment["id"]))
            sent_amendments.append(amendment)
            via = draw(st.sampled_from(["update"] * 5 + ["signal"]))
            if amendment["kind"] == "extend_term":
                # The time-skipping server wedges when a signal's task continues
                # as new (a renewal) while cancelling a timer; a real server
                # does not (checked on the dev server). Renewals go as updates.
                via = "update"
            out.append({"at": iso(at), "do": "amend", "via": via, "amendment": amendment})
        elif what == "pay":
            pid = draw(st.sampled_from([None, f"p{n}", *pay_ids]))
            if pid is not None:
                pay_ids.append(pid)
            via = "signal" if pid is not None and draw(st.integers(0, 5)) == 0 else "update"
            out.append({"at": iso(at), "do": "pay", "invoice": draw(st.sampled_from(PAY_REFS)),
                        "amount": draw(st.sampled_from(PAY_AMOUNTS)), "payment_id": pid,
                        "via": via})
        elif what == "compact":  # the nightly compactor folds the past UTC days
            out.append({"at": iso(at), "do": "compact"})
        else:
            batch = draw(events(n_events, points, customer, at))
            n_events += len(batch)
            if sent_events and draw(st.integers(0, 4)) == 0:  # an earlier event id again
                earlier = draw(st.sampled_from(sent_events))
                batch.append(earlier if draw(st.booleans()) else earlier | {"quantity": "7"})
            sent_events += batch
            out.append({"at": iso(at), "do": "usage", "events": batch})
    return sorted(out, key=lambda a: a["at"])


@st.composite
def lifecycles(draw: st.DrawFn) -> Lifecycle:
    currency = draw(st.sampled_from(CURRENCIES))
    fee = draw(st.sampled_from([None, money(currency, 500), money(currency, 0, 1)]))
    contract = draw(contracts(currency))
    timeline = draw(actions(contract, currency))
    auto_pay = contract.get("auto_pay") or any(
        a.get("amendment", {}).get("auto_pay") for a in timeline)
    declines = draw(st.sampled_from([0, 0, 1, 5])) if auto_pay else 0
    down = draw(st.sampled_from([0] * 6 + [2, 1000])) if auto_pay else 0  # known case 9
    # Without a cache every workflow task replays the whole history, so a run's
    # cost grows with the square of its periods: replay terms of a year or so.
    replay = draw(st.integers(0, 3)) == 0 and int(contract["term_months"]) <= 13
    return Lifecycle(currency=currency, fee=fee, contract=contract, actions=tuple(timeline),
                     card_declines=declines, gateway_failures=down,
                     replay=replay, variant=draw(st.integers(0, 7)))
