"""The random-lifecycle checks of SPEC.md section 12 are not vacuous: a known run
with spend limits, late usage and a minimum commitment keeps them, and each
fires when the record is broken the way it guards against."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support.lifecycle_checks import violations
from tests.support.lifecycle_fuzz import Harness, describe, summary_of
from tests.support.lifecycle_gen import Lifecycle
from tests.support.lifecycle_outcome import Outcome


@pytest.fixture(scope="module")
def harness(database_url: str) -> Iterator[Harness]:
    h = Harness(database_url, budget_s=180.0)
    yield h
    h.close()


def event(eid: str, ts: str, quantity: str, meter: str = "tokens", **dims: str) -> dict[str, Any]:
    return {"id": eid, "customer": "cust-min", "meter": meter, "timestamp": ts,
            "quantity": quantity, "dimensions": dims}


KNOWN = Lifecycle(
    currency="USD", fee="500.00",
    contract={"id": "c-min", "customer": {"id": "cust-min", "name": "Min"}, "plan": "p",
              "starts_on": "2027-03-01", "term_months": 2, "usage_grace_hours": "2",
              "commitment": {"amount": "100.00"},
              "minimum_commitment": {"amount": "300.00", "per": "billing_period"},
              "rate_overrides": [{"meter": "tokens", "maximum_amount": "40.00"},
                                 {"meter": "seats", "minimum_amount": "25.00"}]},
    actions=(
        {"at": "2027-03-01T01:00:00Z", "do": "usage", "events": [
            event("e1", "2027-03-02T00:00:00Z", "2000", model="gpt-4"),  # 60.00: capped at 40
            event("e2", "2027-03-03T00:00:00Z", "1", meter="seats", user="u1")]},  # 10.00
        {"at": "2027-04-01T05:00:00Z", "do": "usage", "events": [  # late for March
            event("e3", "2027-03-20T00:00:00Z", "1", meter="seats", user="u2")]},  # 10.00
    ),
)


def _line(o: Outcome, kind: str) -> dict[str, Any]:
    assert o.ledger is not None
    return next(ln for ln in o.ledger.lines if ln["kind"] == kind)


MUTATIONS = {
    "spend_limits_hold": lambda o: _line(o, "maximum").update(amount=Decimal("-10.00")),
    "true_ups_match": lambda o: _line(o, "true_up").update(amount=Decimal("1.00")),
}


def test_the_minimum_checks_hold_and_catch_a_broken_run(harness: Harness) -> None:
    outcome, found = harness.run(KNOWN)
    assert found == {}, describe(KNOWN, found, summary_of(harness, KNOWN))
    assert outcome.ledger is not None
    kinds = [(ln["invoice_key"], ln["kind"], ln["meter"], ln["amount"])
             for ln in outcome.ledger.lines if ln["kind"] in ("minimum", "maximum", "true_up")]
    assert kinds == [
        ("usage:2027-03-01", "maximum", "tokens", Decimal("-20.00")),
        ("usage:2027-03-01", "minimum", "seats", Decimal("15.00")),
        # spend 40 + 25 = 65 of 300 (credits paid 65 of it: still spend)
        ("usage:2027-03-01", "true_up", None, Decimal("235.00")),
        ("usage:2027-04-01", "minimum", "seats", Decimal("25.00")),
        ("usage:2027-04-01", "minimum", "seats", Decimal("-10.00")),  # late seat fills March's
        ("usage:2027-04-01", "true_up", None, Decimal("275.00")),  # 25 + 10 - 10 = 25 spend
    ]
    missed = []
    for check, mutate in MUTATIONS.items():
        broken = copy.deepcopy(outcome)
        mutate(broken)
        if check not in violations(broken):
            missed.append(check)
    assert missed == []
