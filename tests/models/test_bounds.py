"""Every input is bounded where it is accepted (SPEC.md section 6, last bullet).

Table tests: for each bounded field, a value at the bound is accepted and one
just past it is refused with the field named. Contracts, catalogs, amendments
and timelines all go through these loaders (the API and the CLI too).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from models.amendments import parse_amendment
from models.bounds import (
    MAX_ID_LENGTH,
    MAX_INVOICE_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAYMENT_TERMS_DAYS,
    MAX_TERM_MONTHS,
    MAX_USAGE_GRACE_HOURS,
)
from models.catalog import load_catalog
from models.contract import (
    CONTRACT_GRANT_AMENDMENT_PREFIX,
    MAX_CONTRACT_GRANT_ID_LENGTH,
    load_contract,
    resolve_terms,
)
from models.errors import BillowValidationError
from models.periods import term_end_date
from models.timeline import load_timeline
from tests.support.paths import ACME

MAX = "999999999999999999"  # the largest whole number below 10^18
PAST = "1000000000000000000"  # 10^18
TWELVE = "0.000000000001"
THIRTEEN = "0.0000000000001"
LONG_ID = "x" * MAX_ID_LENGTH
TOO_LONG_ID = "x" * (MAX_ID_LENGTH + 1)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the dotted/indexed ``path`` set to ``value``."""
    out = copy.deepcopy(doc)
    parts = [p for p in re.split(r"\.|\[(\d+)\]", path) if p]
    node: Any = out
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _problems(fn: Callable[[Any], Any], data: Any) -> list[tuple[str, str]]:
    with pytest.raises(BillowValidationError) as info:
        fn(data)
    return info.value.problems


def _check(fn: Callable[[Any], Any], base: dict[str, Any], field: str, good: Any,
           bad: Any, named: str | None = None) -> None:
    fn(_set(base, field, good))
    problems = _problems(fn, _set(base, field, bad))
    assert [p for p, _ in problems] == [named or field], problems


# --- contracts -------------------------------------------------------------------

CONTRACT: dict[str, Any] = {
    "id": "c-1",
    "customer": {"id": "cust-1", "name": "Customer One"},
    "plan": "pro",
    "starts_on": "2027-01-01",
    "term_months": 12,
    "payment_terms_days": 30,
    "usage_grace_hours": "1",
    "commitment": {"amount": "1000.00", "credits": "1000.00", "priority": 0,
                   "expires_on": "2027-06-01"},
    "credit_grants": [{"id": "promo", "credits": "10.00", "price": "0", "priority": 1,
                       "effective": "2027-01-01", "expires": "2027-06-01"}],
    "rate_overrides": [
        {"meter": "tokens", "match": {"model": "gpt-4"}, "unit_price": "0.01",
         "effective": "2027-02-01T00:00:00Z", "until": "2027-03-01T00:00:00Z"},
        {"meter": "tokens", "tiers": {"mode": "graduated", "steps": [
            {"up_to": "100", "unit_price": "1", "flat_fee": "5"}, {"unit_price": "0.5"}]}},
        {"meter": "requests", "package": {"size": "1000", "price": "2"}},
        {"discount_percent": "10"},
    ],
}

CONTRACT_CASES: list[tuple[str, Any, Any]] = [
    ("id", LONG_ID, TOO_LONG_ID),
    ("customer.id", LONG_ID, TOO_LONG_ID),
    ("customer.name", "n" * MAX_NAME_LENGTH, "n" * (MAX_NAME_LENGTH + 1)),
    ("plan", LONG_ID, TOO_LONG_ID),
    ("term_months", MAX_TERM_MONTHS, MAX_TERM_MONTHS + 1),
    ("payment_terms_days", MAX_PAYMENT_TERMS_DAYS, MAX_PAYMENT_TERMS_DAYS + 1),
    ("payment_terms_days", 0, -1),
    ("usage_grace_hours", str(MAX_USAGE_GRACE_HOURS), f"{MAX_USAGE_GRACE_HOURS}.000000000001"),
    ("usage_grace_hours", "0", "-1"),
    ("commitment.amount", MAX, PAST),
    ("commitment.amount", TWELVE, THIRTEEN),
    ("commitment.credits", MAX, PAST),
    ("commitment.credits", TWELVE, THIRTEEN),
    ("commitment.priority", 2**31 - 1, 2**31),
    ("commitment.priority", -(2**31), -(2**31) - 1),
    # room for the "credit_grants:" prefix of the amendment that makes a priced grant
    ("credit_grants[0].id", "g" * 242, "g" * 243),
    ("credit_grants[0].credits", MAX, PAST),
    ("credit_grants[0].credits", TWELVE, THIRTEEN),
    ("credit_grants[0].price", MAX, PAST),
    ("credit_grants[0].price", TWELVE, THIRTEEN),
    ("credit_grants[0].priority", 2**31 - 1, 2**31),
    ("rate_overrides[0].meter", LONG_ID, TOO_LONG_ID),
    ("rate_overrides[0].unit_price", MAX, PAST),
    ("rate_overrides[0].unit_price", TWELVE, THIRTEEN),
    ("rate_overrides[0].until", "3099-12-31T23:59:59Z", "3100-01-01T00:00:00Z"),
    ("rate_overrides[0].effective", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z"),
    ("rate_overrides[1].tiers.steps[0].up_to", MAX, PAST),
    ("rate_overrides[1].tiers.steps[0].up_to", TWELVE, THIRTEEN),
    ("rate_overrides[1].tiers.steps[0].unit_price", MAX, PAST),
    ("rate_overrides[1].tiers.steps[0].flat_fee", MAX, PAST),
    ("rate_overrides[1].tiers.steps[1].unit_price", TWELVE, THIRTEEN),
    ("rate_overrides[2].package.size", MAX, PAST),
    ("rate_overrides[2].package.size", TWELVE, THIRTEEN),
    ("rate_overrides[2].package.price", MAX, PAST),
    ("rate_overrides[3].discount_percent", "0.000000000001", "0.0000000000001"),
]


@pytest.mark.parametrize(("field", "good", "bad"), CONTRACT_CASES,
                         ids=[f"{f}={b!s:.20}" for f, _, b in CONTRACT_CASES])
def test_contract_bounds(field: str, good: Any, bad: Any) -> None:
    _check(load_contract, CONTRACT, field, good, bad)


def test_a_contract_grant_id_fits_in_the_amendment_that_makes_it() -> None:
    # workflows.contract_state makes a priced contract grant as the grant_credits
    # amendment "credit_grants:<id>": that amendment must itself be valid.
    grant_id = "g" * MAX_CONTRACT_GRANT_ID_LENGTH
    contract = load_contract(_set(CONTRACT, "credit_grants[0].id", grant_id))
    g = contract.credit_grants[0]
    parse_amendment({"id": f"{CONTRACT_GRANT_AMENDMENT_PREFIX}{g.id}", "kind": "grant_credits",
                     "grant_id": g.id, "credits": str(g.credits), "price": "1"})


def test_starts_on_far_future_is_refused_not_an_overflow() -> None:
    # 2999-12-31 + 1200 months is still a date; a start in 9999 would overflow
    # term_end_date (year 10099) and is refused naming the field.
    far = _set(_set(CONTRACT, "starts_on", "2999-12-31"), "term_months", MAX_TERM_MONTHS)
    far = {k: v for k, v in far.items() if k not in ("commitment", "credit_grants",
                                                       "rate_overrides")}
    contract = load_contract(far)
    assert term_end_date(contract.starts_on, contract.term_months).year == 3099
    for starts_on in ("3000-01-01", "9999-01-01"):
        problems = _problems(load_contract, {**far, "starts_on": starts_on})
        assert [p for p, _ in problems] == ["starts_on"], problems
    load_contract({**far, "starts_on": "1970-01-01"})
    for starts_on in ("1969-12-31", "0001-01-01"):
        problems = _problems(load_contract, {**far, "starts_on": starts_on})
        assert [p for p, _ in problems] == ["starts_on"], problems


def test_trailing_zeros_are_not_decimals() -> None:
    c = load_contract(_set(CONTRACT, "commitment.amount", "1000.000000000000000"))
    assert c.commitment is not None and c.commitment.amount == Decimal(1000)


@pytest.mark.parametrize(
    ("commitment", "named"),
    [
        ({"amount": "100000000000000000", "bonus_percent": "900"}, "commitment.bonus_percent"),
        ({"amount": "100000", "discount_percent": "99.999999999999"},
         "commitment.discount_percent"),
    ],
)
def test_commitment_credits_stay_bounded(commitment: dict[str, Any], named: str) -> None:
    # credits = amount x (1 + b/100) or amount / (1 - d/100) must be below 10^18 too
    problems = _problems(load_contract, {**CONTRACT, "commitment": commitment})
    assert [p for p, _ in problems] == [named], problems
    ok = {**commitment, "amount": "1000"}
    load_contract({**CONTRACT, "commitment": ok})


# --- commitment and grant windows (SPEC.md section 1) ------------------------------

WINDOW_CASES: list[tuple[str, str, Any, Any, str | None]] = [
    # commitment.expires_on: after starts_on, at most the term end (2028-01-01)
    ("commitment expires at term end", "commitment.expires_on", "2028-01-01", "2028-01-02",
     None),
    ("commitment expires the day after start", "commitment.expires_on", "2027-01-02",
     "2027-01-01", None),
    ("commitment expires before start", "commitment.expires_on", "2027-01-02", "2026-06-01",
     None),
    # grants: term_start <= effective < expires <= term_end
    ("grant effective at start", "credit_grants[0].effective", "2027-01-01", "2026-12-31",
     None),
    ("grant effective instant before start", "credit_grants[0].effective",
     "2027-01-01T00:00:00Z", "2026-12-31T23:59:59Z", None),
    ("grant effective at or after expires", "credit_grants[0].effective", "2027-05-31",
     "2027-06-01", "credit_grants[0].expires"),
    ("grant expires at term end", "credit_grants[0].expires", "2028-01-01", "2028-01-02",
     None),
    ("grant expires instant after term end", "credit_grants[0].expires",
     "2028-01-01T00:00:00Z", "2028-01-01T00:00:01Z", None),
    ("grant expires before effective", "credit_grants[0].expires", "2027-01-02",
     "2027-01-01", None),
]


@pytest.mark.parametrize(("field", "good", "bad", "named"),
                         [c[1:] for c in WINDOW_CASES], ids=[c[0] for c in WINDOW_CASES])
def test_commitment_and_grant_windows(field: str, good: Any, bad: Any,
                                      named: str | None) -> None:
    _check(load_contract, CONTRACT, field, good, bad, named)


def test_grant_default_window_must_be_inside_the_term() -> None:
    # effective defaults to the term start and expires to the term end
    g = {"id": "g", "credits": "1"}
    load_contract({**CONTRACT, "credit_grants": [{**g, "effective": "2027-12-31"}]})
    problems = _problems(load_contract, {**CONTRACT, "credit_grants": [
        {**g, "effective": "2028-01-01"}]})
    assert [p for p, _ in problems] == ["credit_grants[0].effective"], problems
    problems = _problems(load_contract, {**CONTRACT, "credit_grants": [
        {**g, "expires": "2027-01-01"}]})
    assert [p for p, _ in problems] == ["credit_grants[0].expires"], problems


def test_grant_dates_mean_local_midnight_in_the_contract_timezone() -> None:
    paris = {**CONTRACT, "timezone": "Europe/Paris"}
    # local midnight of 2027-01-01 in Paris is 2026-12-31T23:00Z: the term start
    _check(load_contract, paris, "credit_grants[0].effective",
           "2026-12-31T23:00:00Z", "2026-12-31T22:59:59Z")
    _check(load_contract, paris, "credit_grants[0].expires",
           "2027-12-31T23:00:00Z", "2027-12-31T23:00:01Z")


@pytest.mark.parametrize("tz", ["localtime", "posixrules", "Mars/Olympus", "Etc/../UTC", ""])
def test_host_dependent_or_unknown_timezones_are_refused(tz: str) -> None:
    problems = _problems(load_contract, {**CONTRACT, "timezone": tz})
    assert [p for p, _ in problems] == ["timezone"], problems


# --- catalogs --------------------------------------------------------------------

CATALOG: dict[str, Any] = {
    "meters": [
        {"key": "tokens", "name": "Tokens", "aggregation": "sum", "group_by": ["model"],
         "rate_card": [
             {"match": {"model": "a"}, "unit_price": "0.03"},
             {"match": {"model": "b"}, "tiers": {"mode": "volume", "steps": [
                 {"up_to": "100", "unit_price": "1", "flat_fee": "5"},
                 {"unit_price": "0.5"}]}},
             {"match": {}, "package": {"size": "1000", "price": "2"}},
         ]},
    ],
    "plans": [
        {"key": "pro", "name": "Pro", "currency": "USD", "meters": ["tokens"],
         "payment_terms_days": 30, "usage_grace_hours": "1",
         "recurring_fees": [{"key": "platform", "name": "Platform", "monthly_amount": "500"}]},
    ],
}

CATALOG_CASES: list[tuple[str, Any, Any]] = [
    ("plans[0].key", LONG_ID, TOO_LONG_ID),
    ("plans[0].name", "n" * MAX_NAME_LENGTH, "n" * (MAX_NAME_LENGTH + 1)),
    ("meters[0].name", "n" * MAX_NAME_LENGTH, "n" * (MAX_NAME_LENGTH + 1)),
    ("plans[0].recurring_fees[0].name", "n" * MAX_NAME_LENGTH, "n" * (MAX_NAME_LENGTH + 1)),
    ("plans[0].recurring_fees[0].key", LONG_ID, TOO_LONG_ID),
    ("plans[0].recurring_fees[0].monthly_amount", MAX, PAST),
    ("plans[0].recurring_fees[0].monthly_amount", TWELVE, THIRTEEN),
    ("plans[0].payment_terms_days", MAX_PAYMENT_TERMS_DAYS, MAX_PAYMENT_TERMS_DAYS + 1),
    ("plans[0].payment_terms_days", 0, 3_000_000),
    ("plans[0].usage_grace_hours", str(MAX_USAGE_GRACE_HOURS), "1E+20"),
    ("meters[0].rate_card[0].unit_price", MAX, PAST),
    ("meters[0].rate_card[0].unit_price", TWELVE, THIRTEEN),
    ("meters[0].rate_card[1].tiers.steps[0].up_to", MAX, PAST),
    ("meters[0].rate_card[1].tiers.steps[0].unit_price", MAX, PAST),
    ("meters[0].rate_card[1].tiers.steps[0].flat_fee", MAX, PAST),
    ("meters[0].rate_card[1].tiers.steps[0].flat_fee", TWELVE, THIRTEEN),
    ("meters[0].rate_card[2].package.size", MAX, PAST),
    ("meters[0].rate_card[2].package.price", MAX, PAST),
    ("meters[0].rate_card[2].package.price", TWELVE, THIRTEEN),
]


@pytest.mark.parametrize(("field", "good", "bad"), CATALOG_CASES,
                         ids=[f"{f}={b!s:.20}" for f, _, b in CATALOG_CASES])
def test_catalog_bounds(field: str, good: Any, bad: Any) -> None:
    _check(load_catalog, CATALOG, field, good, bad)


def test_meter_key_is_bounded() -> None:
    long = _set(_set(CATALOG, "meters[0].key", LONG_ID), "plans[0].meters[0]", LONG_ID)
    load_catalog(long)
    too_long = _set(_set(CATALOG, "meters[0].key", TOO_LONG_ID),
                    "plans[0].meters[0]", TOO_LONG_ID)
    problems = _problems(load_catalog, too_long)
    assert "meters[0].key" in [p for p, _ in problems], problems


def test_tiers_must_increase() -> None:
    steps = [{"up_to": "100", "unit_price": "1"}, {"up_to": "100", "unit_price": "1"},
             {"unit_price": "1"}]
    bad = _set(CATALOG, "meters[0].rate_card[1].tiers.steps", steps)
    problems = _problems(load_catalog, bad)
    assert [p for p, _ in problems] == ["meters[0].rate_card[1].tiers.steps[1].up_to"]


def test_acme_still_loads_and_resolves() -> None:
    catalog = load_catalog(ACME / "catalog.yaml")
    resolve_terms(load_contract(ACME / "contract.yaml"), catalog)
    load_timeline(ACME / "timeline.yaml")


# --- amendments -----------------------------------------------------------------

AMENDMENTS: dict[str, dict[str, Any]] = {
    "grant_credits": {"id": "a-1", "kind": "grant_credits", "credits": "100", "price": "90",
                      "priority": 0, "grant_id": "g-1", "effective": "2027-02-01T00:00:00Z",
                      "expires": "2027-06-01"},
    "change_payment_terms": {"id": "a-2", "kind": "change_payment_terms",
                             "payment_terms_days": 60},
    "extend_term": {"id": "a-3", "kind": "extend_term", "term_months": 12},
    "rate_override": {"id": "a-4", "kind": "rate_override",
                      "override": {"meter": "tokens", "unit_price": "0.01"}},
    "terminate": {"id": "a-5", "kind": "terminate", "effective": "2027-08-15T00:00:00Z"},
}

AMENDMENT_CASES: list[tuple[str, str, Any, Any]] = [
    ("terminate", "id", LONG_ID, TOO_LONG_ID),
    ("terminate", "effective", "3099-12-31T23:59:59Z", "3100-01-01T00:00:00Z"),
    ("terminate", "effective", "3099-12-31T23:59:59Z", "9999-12-31T23:00:00-05:00"),
    ("terminate", "received_at", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59Z"),
    ("grant_credits", "credits", MAX, PAST),
    ("grant_credits", "credits", TWELVE, THIRTEEN),
    ("grant_credits", "price", MAX, PAST),
    ("grant_credits", "price", TWELVE, THIRTEEN),
    ("grant_credits", "grant_id", LONG_ID, TOO_LONG_ID),
    ("grant_credits", "priority", 2**31 - 1, 2**31),
    ("grant_credits", "expires", "3099-12-31", "3100-01-01"),
    ("grant_credits", "expires", "3099-12-31T00:00:00Z", "9999-12-31T23:00:00-05:00"),
    ("change_payment_terms", "payment_terms_days", MAX_PAYMENT_TERMS_DAYS,
     MAX_PAYMENT_TERMS_DAYS + 1),
    ("change_payment_terms", "payment_terms_days", 0, 3_000_000),
    ("extend_term", "term_months", MAX_TERM_MONTHS, MAX_TERM_MONTHS + 1),
    ("extend_term", "term_months", 1, 12_000_000),
    ("rate_override", "override.unit_price", MAX, PAST),
    ("rate_override", "override.unit_price", TWELVE, THIRTEEN),
]


@pytest.mark.parametrize(("kind", "field", "good", "bad"), AMENDMENT_CASES,
                         ids=[f"{k}.{f}={b!s:.20}" for k, f, _, b in AMENDMENT_CASES])
def test_amendment_bounds(kind: str, field: str, good: Any, bad: Any) -> None:
    _check(parse_amendment, AMENDMENTS[kind], field, good, bad)


def test_timeline_bounds() -> None:
    def pay(amount: str, invoice: str = "usage:2027-01-01") -> list[dict[str, Any]]:
        return [{"at": "2027-02-01T00:00:00Z", "action": "pay", "invoice": invoice,
                 "amount": amount}]

    load_timeline(pay(MAX))
    assert [p for p, _ in _problems(load_timeline, pay(PAST))] == ["[0].amount"]
    assert [p for p, _ in _problems(load_timeline, pay(THIRTEEN))] == ["[0].amount"]
    load_timeline(pay("1", "k" * MAX_INVOICE_KEY_LENGTH))
    too_long = pay("1", "k" * (MAX_INVOICE_KEY_LENGTH + 1))
    assert [p for p, _ in _problems(load_timeline, too_long)] == ["[0].invoice"]
    amend = [{"at": "2027-02-01T00:00:00Z", "action": "amend",
              "amendment": AMENDMENTS["change_payment_terms"]}]
    load_timeline(amend)
    bad = _set(amend[0], "amendment.payment_terms_days", 3_000_000)
    assert [p for p, _ in _problems(load_timeline, [bad])] == [
        "[0].amendment.payment_terms_days"]


def test_contract_grant_credits_are_whole_minor_units() -> None:
    # like a grant_credits amendment: a credit balance is money in the contract's currency
    catalog = load_catalog(CATALOG)
    base = {k: v for k, v in CONTRACT.items() if k != "rate_overrides"}
    resolve_terms(load_contract(_set(base, "credit_grants[0].credits", "10.01")), catalog)
    with pytest.raises(BillowValidationError) as info:
        resolve_terms(load_contract(_set(base, "credit_grants[0].credits", "10.001")), catalog)
    assert [p for p, _ in info.value.problems] == ["credit_grants[0].credits"]
