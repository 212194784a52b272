"""Loaders: every bad input is rejected with the exact field path and reason."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from models.amendments import (
    GrantCreditsAmendment,
    RateOverrideAmendment,
    TerminateAmendment,
    parse_amendment,
)
from models.catalog import Catalog, load_catalog, parse_catalog_text
from models.contract import (
    ContractTerms,
    load_contract,
    parse_contract_text,
    resolve_terms,
)
from models.errors import BillowValidationError
from models.timeline import AmendAction, PayAction, parse_timeline_text
from models.usage import parse_usage_jsonl
from tests.support.paths import ACME


def _problems(fn: Any, *args: Any) -> list[tuple[str, str]]:
    with pytest.raises(BillowValidationError) as info:
        fn(*args)
    return info.value.problems


def _meter(**kw: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "key": "t",
        "name": "T",
        "aggregation": "sum",
        "rate_card": [{"match": {}, "unit_price": "1"}],
    }
    m.update(kw)
    return m


GOOD_PLAN = {"key": "p", "name": "P", "currency": "USD", "meters": ["t"]}

CATALOG_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "unknown meter in plan",
        {"meters": [_meter()], "plans": [{**GOOD_PLAN, "meters": ["t", "foo"]}]},
        "plans[0].meters[1]",
        "unknown meter 'foo'",
    ),
    (
        "equally specific identical",
        {
            "meters": [
                _meter(
                    group_by=["m"],
                    rate_card=[
                        {"match": {"m": "a"}, "unit_price": "1"},
                        {"match": {"m": "a"}, "unit_price": "2"},
                    ],
                )
            ]
        },
        "meters[0].rate_card[1]",
        "equally specific as rate_card[0]",
    ),
    (
        "equally specific overlapping",
        {
            "meters": [
                _meter(
                    group_by=["m", "r"],
                    rate_card=[
                        {"match": {"m": "a"}, "unit_price": "1"},
                        {"match": {"r": "eu"}, "unit_price": "2"},
                    ],
                )
            ]
        },
        "meters[0].rate_card[1]",
        "equally specific as rate_card[0]",
    ),
    (
        "two fallbacks",
        {"meters": [_meter(rate_card=[{"unit_price": "1"}, {"match": {}, "unit_price": "2"}])]},
        "meters[0].rate_card[1]",
        "equally specific",
    ),
    (
        "match on dimension not grouped",
        {"meters": [_meter(rate_card=[{"match": {"model": "x"}, "unit_price": "1"}])]},
        "meters[0].rate_card[0].match.model",
        "not in the meter's group_by",
    ),
    (
        "unordered tiers",
        {
            "meters": [
                _meter(
                    rate_card=[
                        {
                            "tiers": {
                                "mode": "graduated",
                                "steps": [
                                    {"up_to": "100", "unit_price": "1"},
                                    {"up_to": "50", "unit_price": "1"},
                                    {"unit_price": "1"},
                                ],
                            }
                        }
                    ]
                )
            ]
        },
        "meters[0].rate_card[0].tiers.steps[1].up_to",
        "increasing order",
    ),
    (
        "open tier not last",
        {
            "meters": [
                _meter(
                    rate_card=[
                        {
                            "tiers": {
                                "mode": "volume",
                                "steps": [{"unit_price": "1"}, {"up_to": "50", "unit_price": "1"}],
                            }
                        }
                    ]
                )
            ]
        },
        "meters[0].rate_card[0].tiers.steps[0].up_to",
        "only the last step",
    ),
    (
        "closed last tier",
        {
            "meters": [
                _meter(
                    rate_card=[
                        {"tiers": {"mode": "volume", "steps": [{"up_to": "50", "unit_price": "1"}]}}
                    ]
                )
            ]
        },
        "meters[0].rate_card[0].tiers.steps[0].up_to",
        "last step must not have up_to",
    ),
    (
        "bad tier mode",
        {
            "meters": [
                _meter(rate_card=[{"tiers": {"mode": "stairs", "steps": [{"unit_price": "1"}]}}])
            ]
        },
        "meters[0].rate_card[0].tiers.mode",
        "graduated",
    ),
    (
        "negative price",
        {"meters": [_meter(rate_card=[{"unit_price": "-0.01"}])]},
        "meters[0].rate_card[0].unit_price",
        "must not be negative",
    ),
    (
        "float price",
        {"meters": [_meter(rate_card=[{"unit_price": 0.03}])]},
        "meters[0].rate_card[0].unit_price",
        "decimals are strings",
    ),
    (
        "non-decimal price",
        {"meters": [_meter(rate_card=[{"unit_price": "three cents"}])]},
        "meters[0].rate_card[0].unit_price",
        "not a decimal number",
    ),
    (
        "no price",
        {"meters": [_meter(rate_card=[{"match": {}}])]},
        "meters[0].rate_card[0]",
        "exactly one of unit_price, tiers or package",
    ),
    (
        "two prices",
        {
            "meters": [
                _meter(rate_card=[{"unit_price": "1", "package": {"size": "10", "price": "1"}}])
            ]
        },
        "meters[0].rate_card[0]",
        "exactly one of",
    ),
    (
        "zero package size",
        {"meters": [_meter(rate_card=[{"package": {"size": "0", "price": "1"}}])]},
        "meters[0].rate_card[0].package.size",
        "greater than zero",
    ),
    (
        "unique_count without unique_by",
        {"meters": [_meter(aggregation="unique_count")]},
        "meters[0].unique_by",
        "required when aggregation is unique_count",
    ),
    (
        "unique_by on sum",
        {"meters": [_meter(unique_by="user")]},
        "meters[0].unique_by",
        "only allowed",
    ),
    ("bad aggregation", {"meters": [_meter(aggregation="avg")]}, "meters[0].aggregation", "'sum'"),
    ("unknown field", {"meters": [_meter(colour="red")]}, "meters[0].colour", "unknown field"),
    (
        "unknown currency",
        {"meters": [_meter()], "plans": [{**GOOD_PLAN, "currency": "XYZ"}]},
        "plans[0].currency",
        "unknown currency 'XYZ'",
    ),
    (
        "negative terms",
        {"meters": [_meter()], "plans": [{**GOOD_PLAN, "payment_terms_days": -1}]},
        "plans[0].payment_terms_days",
        "greater than or equal to 0",
    ),
    (
        "bad cycle",
        {"meters": [_meter()], "plans": [{**GOOD_PLAN, "billing_cycle": "weekly"}]},
        "plans[0].billing_cycle",
        "'monthly'",
    ),
    (
        "duplicate meter",
        {"meters": [_meter(), _meter()]},
        "meters[1].key",
        "duplicate meter key 't'",
    ),
    (
        "negative fee",
        {
            "meters": [_meter()],
            "plans": [
                {**GOOD_PLAN, "recurring_fees": [{"key": "f", "name": "F", "monthly_amount": "-5"}]}
            ],
        },
        "plans[0].recurring_fees[0].monthly_amount",
        "must not be negative",
    ),
]


@pytest.mark.parametrize(
    ("data", "path", "reason"), [c[1:] for c in CATALOG_CASES], ids=[c[0] for c in CATALOG_CASES]
)
def test_catalog_errors_name_the_field(data: dict[str, Any], path: str, reason: str) -> None:
    problems = _problems(load_catalog, data)
    assert any(p == path and reason in r for p, r in problems), problems


def test_yaml_unquoted_float_is_rejected_with_hint() -> None:
    text = """
meters:
  - key: t
    name: T
    aggregation: sum
    rate_card:
      - match: {}
        unit_price: 0.03
"""
    with pytest.raises(BillowValidationError) as info:
        parse_catalog_text(text)
    assert str(info.value) == (
        "meters[0].rate_card[0].unit_price: decimals are strings: write '0.03' in quotes "
        "(a bare number is read as a binary float and is rejected)"
    )


def test_multiple_problems_are_all_listed() -> None:
    data = {
        "meters": [_meter(rate_card=[{"unit_price": 0.5}])],
        "plans": [{**GOOD_PLAN, "meters": ["nope"]}],
    }
    problems = _problems(load_catalog, data)
    # field errors stop the catalog validator; both field errors are reported
    assert "meters[0].rate_card[0].unit_price" in [p for p, _ in problems]


def test_bad_yaml_and_json() -> None:
    assert "cannot parse yaml" in _problems(parse_catalog_text, "meters: [")[0][1]
    assert "cannot parse json" in _problems(parse_catalog_text, "{", "json")[0][1]


def test_acme_catalog_yaml_and_json_agree() -> None:
    text = (ACME / "catalog.yaml").read_text()
    from_yaml = parse_catalog_text(text)
    from_json = parse_catalog_text(json.dumps(yaml.safe_load(text)), "json")
    assert from_yaml == from_json
    assert from_yaml.meters_for("pro")[0].key == "tokens"
    assert from_yaml.plan("pro").recurring_fees[0].monthly_amount == Decimal("500.00")
    # JSON round trip of the model itself
    assert Catalog.model_validate_json(from_yaml.model_dump_json()) == from_yaml


# --- contracts ------------------------------------------------------------------------

BASE_CONTRACT: dict[str, Any] = {
    "id": "c",
    "customer": {"id": "a", "name": "A"},
    "plan": "p",
    "starts_on": "2027-01-01",
    "term_months": 12,
}

CONTRACT_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("starts_on not a date", {"starts_on": "soon"}, "starts_on", "must be a date"),
    ("starts_on impossible", {"starts_on": "2027-02-30"}, "starts_on", "date"),
    ("starts_on instant", {"starts_on": "2027-01-01T00:00:00Z"}, "starts_on", "must be a date"),
    ("term zero", {"term_months": 0}, "term_months", "greater than 0"),
    ("term float", {"term_months": 1.5}, "term_months", "whole number"),
    ("unknown timezone", {"timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
    ("bad anchor", {"billing_anchor": "end"}, "billing_anchor", "'start'"),
    (
        "bonus and discount",
        {"commitment": {"amount": "100", "bonus_percent": "10", "discount_percent": "5"}},
        "commitment.discount_percent",
        "not allowed together with bonus_percent",
    ),
    (
        "bonus and credits",
        {"commitment": {"amount": "100", "bonus_percent": "10", "credits": "5"}},
        "commitment.credits",
        "not allowed together with bonus_percent",
    ),
    (
        "discount 100",
        {"commitment": {"amount": "100", "discount_percent": "100"}},
        "commitment.discount_percent",
        "less than 100",
    ),
    (
        "negative commitment",
        {"commitment": {"amount": "-1"}},
        "commitment.amount",
        "greater than zero",
    ),
    (
        "override without meter",
        {"rate_overrides": [{"unit_price": "1"}]},
        "rate_overrides[0].meter",
        "required with an explicit price",
    ),
    (
        "discount over 100",
        {"rate_overrides": [{"discount_percent": "120"}]},
        "rate_overrides[0].discount_percent",
        "between 0 and 100",
    ),
    (
        "discount and price",
        {"rate_overrides": [{"meter": "t", "unit_price": "1", "discount_percent": "5"}]},
        "rate_overrides[0].discount_percent",
        "not allowed with an explicit price",
    ),
    ("empty override", {"rate_overrides": [{"meter": "t"}]}, "rate_overrides[0]", "needs a price"),
    (
        "match without meter",
        {"rate_overrides": [{"match": {"m": "a"}, "discount_percent": "5"}]},
        "rate_overrides[0].match",
        "requires meter",
    ),
    (
        "until before effective",
        {
            "rate_overrides": [
                {
                    "discount_percent": "5",
                    "effective": "2027-02-01T00:00:00Z",
                    "until": "2027-01-01T00:00:00Z",
                }
            ]
        },
        "rate_overrides[0].until",
        "must be after effective",
    ),
    (
        "naive override instant",
        {"rate_overrides": [{"discount_percent": "5", "effective": "2027-02-01T00:00:00"}]},
        "rate_overrides[0].effective",
        "timezone",
    ),
    (
        "duplicate grant id",
        {"credit_grants": [{"id": "g", "credits": "1"}, {"id": "g", "credits": "1"}]},
        "credit_grants[1].id",
        "duplicate",
    ),
    (
        "reserved grant id",
        {"credit_grants": [{"id": "commitment", "credits": "1"}]},
        "credit_grants[0].id",
        "reserved",
    ),
    (
        "two priced grants taking effect the same day (one top-up invoice a day)",
        {"credit_grants": [{"id": "a", "credits": "10", "price": "9"},
                           {"id": "b", "credits": "20", "price": "18"}]},
        "credit_grants[1].effective",
        "one top-up invoice per day",
    ),
    ("unknown field", {"colour": "red"}, "colour", "unknown field"),
    ("bad currency", {"currency": "usd"}, "currency", "unknown currency"),
]


@pytest.mark.parametrize(
    ("extra", "path", "reason"), [c[1:] for c in CONTRACT_CASES], ids=[c[0] for c in CONTRACT_CASES]
)
def test_contract_errors_name_the_field(extra: dict[str, Any], path: str, reason: str) -> None:
    problems = _problems(load_contract, {**BASE_CONTRACT, **extra})
    assert any(p == path and reason in r for p, r in problems), problems


def _catalog() -> Catalog:
    return load_catalog(
        {
            "meters": [_meter(group_by=["model"]), {**_meter(), "key": "u"}],
            "plans": [{**GOOD_PLAN, "meters": ["t"]}, {**GOOD_PLAN, "key": "q", "currency": "EUR"}],
        }
    )


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        ({"plan": "gold"}, "plan", "unknown plan 'gold'"),
        (
            {"rate_overrides": [{"discount_percent": "5"}, {"meter": "u", "unit_price": "1"}]},
            "rate_overrides[1].meter",
            "meter 'u' is not in plan 'p'",
        ),
        (
            {"rate_overrides": [{"meter": "t", "match": {"region": "eu"}, "unit_price": "1"}]},
            "rate_overrides[0].match.region",
            "not in the meter's group_by",
        ),
        ({"currency": "EUR"}, "currency", "differs from plan currency USD"),
    ],
)
def test_resolve_terms_errors(extra: dict[str, Any], path: str, reason: str) -> None:
    problems = _problems(resolve_terms, load_contract({**BASE_CONTRACT, **extra}), _catalog())
    assert any(p == path and reason in r for p, r in problems), problems


def test_resolve_terms_defaults_from_plan() -> None:
    terms = resolve_terms(load_contract(BASE_CONTRACT), _catalog())
    assert terms.billing_cycle == "monthly"
    assert terms.payment_terms_days == 30
    assert terms.auto_pay is False
    assert terms.usage_grace_hours == 1
    assert terms.currency == "USD"
    assert terms.term_end == date(2028, 1, 1)
    assert [m.key for m in terms.meters] == ["t"]
    # self-contained and JSON round-trippable (carried in workflow state)
    assert ContractTerms.model_validate_json(terms.model_dump_json()) == terms


def test_contract_overrides_plan_zero_terms() -> None:
    terms = resolve_terms(
        load_contract(
            {
                **BASE_CONTRACT,
                "payment_terms_days": 0,
                "auto_pay": True,
                "usage_grace_hours": "0",
                "billing_cycle": "annual",
            }
        ),
        _catalog(),
    )
    assert (
        terms.payment_terms_days,
        terms.auto_pay,
        terms.usage_grace_hours,
        terms.billing_cycle.months,
    ) == (0, True, Decimal(0), 12)


@pytest.mark.parametrize(
    ("commitment", "credits"),
    [
        ({"amount": "100000.00", "bonus_percent": "20"}, "120000.00"),
        ({"amount": "70", "discount_percent": "30"}, "100.00"),
        ({"amount": "100", "discount_percent": "30"}, "142.86"),  # 142.857... rounded
        ({"amount": "100", "credits": "250"}, "250.00"),
        ({"amount": "100"}, "100.00"),
    ],
)
def test_commitment_credits(commitment: dict[str, Any], credits: str) -> None:
    c = load_contract({**BASE_CONTRACT, "commitment": commitment}).commitment
    assert c is not None
    assert c.credits_for("USD") == Decimal(credits)


def test_acme_contract_yaml() -> None:
    c = parse_contract_text((ACME / "contract.yaml").read_text())
    assert c.starts_on == date(2027, 1, 1)
    assert c.rate_overrides[0].discount_percent == 50
    assert c.timezone == "UTC"


# --- usage ----------------------------------------------------------------------------


def test_usage_jsonl_errors_name_line_and_field() -> None:
    lines = [
        '{"id": "a", "customer": "c", "meter": "t", "timestamp": "2027-01-01T00:00:00Z"}',
        '{"id": "b", "customer": "c", "meter": "t", "timestamp": "2027-01-01T00:00:00"}',
        "",
        '{"id": "c", "customer": "c", "meter": "t", "timestamp": "2027-01-01T00:00:00Z",'
        ' "quantity": 1.5}',
        "not json",
        '{"id": "d", "customer": "c", "meter": "t", "timestamp": "2027-01-01T01:00:00+01:00",'
        ' "quantity": "2", "dimensions": {"m": "x"}, "extra": 1}',
    ]
    events, errors = parse_usage_jsonl("\n".join(lines))
    assert [e.id for e in events] == ["a"]
    assert events[0].quantity == 1
    got = [(e.line, e.path) for e in errors]
    assert got == [(2, "timestamp"), (4, "quantity"), (5, ""), (6, "extra")]
    assert "timezone" in errors[0].reason
    assert "decimals are strings" in errors[1].reason
    assert str(errors[2]).startswith("line 5: invalid JSON")


def test_usage_timestamp_normalized_to_utc() -> None:
    events, _ = parse_usage_jsonl(
        '{"id": "a", "customer": "c", "meter": "t", "timestamp": "2027-01-01T01:00:00+01:00"}'
    )
    assert events[0].timestamp == datetime(2027, 1, 1, tzinfo=UTC)
    assert events[0].timestamp.utcoffset() is not None


# --- amendments and timeline ----------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "path", "reason"),
    [
        ({"id": "a", "kind": "nope"}, "kind", "does not match"),
        ({"id": "a"}, "kind", ""),
        ({"id": "", "kind": "terminate"}, "id", "at least 1 character"),
        (
            {"id": "a", "kind": "terminate", "effective": "2027-01-01T00:00:00"},
            "effective",
            "timezone",
        ),
        (
            {"id": "a", "kind": "rate_override", "override": {"meter": "t"}},
            "override",
            "needs a price",
        ),
        ({"id": "a", "kind": "grant_credits", "credits": 1.5}, "credits", "decimals are strings"),
        ({"id": "a", "kind": "grant_credits", "credits": "0"}, "credits", "greater than zero"),
        ({"id": "a", "kind": "grant_credits", "credits": "1", "expires": "soon"}, "expires", ""),
        (
            {"id": "a", "kind": "change_billing_cycle", "billing_cycle": "weekly"},
            "billing_cycle",
            "'monthly'",
        ),
        (
            {"id": "a", "kind": "change_payment_terms", "payment_terms_days": -3},
            "payment_terms_days",
            "greater than or equal to 0",
        ),
        ({"id": "a", "kind": "extend_term", "term_months": 0}, "term_months", "greater than 0"),
        ({"id": "a", "kind": "set_auto_pay"}, "auto_pay", "required"),
        ({"id": "a", "kind": "terminate", "foo": 1}, "foo", "unknown field"),
    ],
)
def test_amendment_errors(obj: dict[str, Any], path: str, reason: str) -> None:
    problems = _problems(parse_amendment, obj)
    assert any(p == path and reason in r for p, r in problems), problems


def test_amendments_parse() -> None:
    a = parse_amendment(
        {
            "id": "x",
            "kind": "rate_override",
            "effective": "2027-04-15T00:00:00Z",
            "override": {"meter": "tokens", "match": {"model": "gpt-4"}, "unit_price": "0.01"},
        }
    )
    assert isinstance(a, RateOverrideAmendment)
    assert a.override.unit_price == Decimal("0.01")
    g = parse_amendment(
        {
            "id": "g",
            "kind": "grant_credits",
            "credits": "20000.00",
            "price": "18000.00",
            "expires": "2027-12-01",
        }
    )
    assert isinstance(g, GrantCreditsAmendment)
    assert g.expires == date(2027, 12, 1) and g.effective is None
    g2 = parse_amendment(
        {"id": "g", "kind": "grant_credits", "credits": "1", "expires": "2027-12-01T05:00:00+01:00"}
    )
    assert isinstance(g2, GrantCreditsAmendment)
    assert g2.expires == datetime(2027, 12, 1, 4, tzinfo=UTC)
    assert isinstance(parse_amendment({"id": "t", "kind": "terminate"}), TerminateAmendment)


SPEC_TIMELINE = """
- at: 2027-08-15T00:00:00Z
  action: amend
  amendment: {id: crm-amend-0045, kind: terminate, effective: 2027-08-15T00:00:00Z}
- at: 2027-04-15T00:00:00Z
  action: amend
  amendment:
    id: crm-amend-0042
    kind: rate_override
    effective: 2027-04-15T00:00:00Z
    override: {meter: tokens, match: {model: gpt-4}, unit_price: "0.01"}
- at: 2027-08-01T00:00:00Z
  action: amend
  amendment: {id: crm-amend-0043, kind: grant_credits, credits: "20000.00", price: "18000.00"}
- at: 2027-08-01T00:00:00Z
  action: pay
  invoice: usage:2027-07-01
  amount: "5.00"
- at: 2027-08-10T00:00:00Z
  action: amend
  amendment: {id: crm-amend-0044, kind: change_payment_terms, payment_terms_days: 60}
"""


def test_timeline_sorted_stably() -> None:
    actions = parse_timeline_text(SPEC_TIMELINE)
    assert [a.at.date().isoformat() for a in actions] == [
        "2027-04-15",
        "2027-08-01",
        "2027-08-01",
        "2027-08-10",
        "2027-08-15",
    ]
    # same instant: file order kept (amend before pay here)
    assert isinstance(actions[1], AmendAction) and isinstance(actions[2], PayAction)


def test_timeline_errors() -> None:
    text = (
        "- {at: 2027-01-01T00:00:00Z, action: amend, amendment: "
        "{id: a, kind: rate_override, override: {meter: t, unit_price: 0.5}}}\n"
        "- {at: 2027-01-01T00:00:00Z, action: payy}\n"
        "- {at: 2027-01-01T00:00:00, action: pay, invoice: x, amount: '1'}\n"
    )
    paths = [p for p, _ in _problems(parse_timeline_text, text)]
    assert paths == ["[0].amendment.override.unit_price", "[1].action", "[2].at"]


def test_acme_timeline() -> None:
    from models.timeline import load_timeline_file

    actions = load_timeline_file(ACME / "timeline.yaml")
    assert [a.action for a in actions] == ["pay", "pay"]
    assert isinstance(actions[0], PayAction)
    assert actions[0].invoice == "commitment:2027-01-01"


def test_loaders_accept_paths() -> None:
    from models.catalog import load_catalog_file
    from models.contract import load_contract
    from models.timeline import load_timeline

    assert load_catalog(ACME / "catalog.yaml") == load_catalog_file(str(ACME / "catalog.yaml"))
    assert load_contract(ACME / "contract.yaml").id == "acme-2027"
    assert len(load_timeline(ACME / "timeline.yaml")) == 2
    assert load_timeline(None) == []


@pytest.mark.parametrize("value", [20270101, True, "2027-1-1"])
def test_starts_on_rejects_non_dates(value: object) -> None:
    problems = _problems(load_contract, {**BASE_CONTRACT, "starts_on": value})
    assert [p for p, _ in problems] == ["starts_on"]


def test_negative_usage_rejected() -> None:
    _, errors = parse_usage_jsonl(
        '{"id": "a", "customer": "c", "meter": "t", "timestamp": "2027-01-01T00:00:00Z",'
        ' "quantity": "-5"}'
    )
    assert [(e.line, e.path) for e in errors] == [(1, "quantity")]
