"""Credit engine (SPEC 4)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from billing_fixtures import D, catalog_with, terms_for, utc
from hypothesis import given, settings
from hypothesis import strategies as st

from models.credits import CreditGrant, CreditState, initial_grants

T0, T_END = utc(2027, 1, 1), utc(2028, 1, 1)


def g(
    id: str,
    credits: str,
    *,
    priority: int = 0,
    effective: datetime = T0,
    expires: datetime = T_END,
    price: str = "0",
) -> CreditGrant:
    return CreditGrant(
        id=id,
        credits=D(credits),
        price=D(price),
        priority=priority,
        effective=effective,
        expires=expires,
    )


def state(*grants: CreditGrant) -> CreditState:
    s = CreditState()
    for x in grants:
        s = s.grant(x)
    return s


def test_burn_order_priority_then_expiry_then_effective_then_creation() -> None:
    s = state(
        g("late-expiry", "10", expires=utc(2027, 12, 1)),
        g("high-priority", "10", priority=5, expires=utc(2027, 2, 1)),
        g("early-expiry", "10", expires=utc(2027, 6, 1)),
        g("same-but-later-effective", "10", effective=utc(2027, 1, 2), expires=utc(2027, 6, 1)),
        g("same-created-later", "10", effective=utc(2027, 1, 2), expires=utc(2027, 6, 1)),
    )
    order = []
    for _ in range(5):
        s, app = s.apply(D(10), utc(2027, 1, 15))
        order.append(app.per_grant[0].grant_id)
    assert order == [
        "early-expiry",
        "same-but-later-effective",
        "same-created-later",
        "late-expiry",
        "high-priority",
    ]


def test_apply_partial_and_exhaust() -> None:
    s = state(g("a", "30"), g("b", "20", priority=1))
    s, app = s.apply(D("45.50"), utc(2027, 3, 1))
    assert app.applied_total == D("45.50")
    assert [(x.grant_id, x.amount) for x in app.per_grant] == [("a", D(30)), ("b", D("15.50"))]
    s, app = s.apply(D(10), utc(2027, 4, 1))
    assert app.applied_total == D("4.50")
    assert s.summary().balance == 0
    s, app = s.apply(D(10), utc(2027, 5, 1))
    assert app.applied_total == 0 and app.per_grant == []


def test_only_grants_in_force_at_period_end_pay() -> None:
    s = state(
        g("expired-mid-period", "10", expires=utc(2027, 3, 15)),
        g("not-yet", "10", effective=utc(2027, 4, 2)),
        g("at-boundary", "10", effective=utc(2027, 4, 1)),  # effective at the boundary: pays
        g("expires-at-boundary", "10", expires=utc(2027, 4, 1)),  # pays, then expires
    )
    at = utc(2027, 4, 1)
    assert s.available(at) == D(20)
    s, app = s.apply(D(100), at)
    assert {x.grant_id for x in app.per_grant} == {"at-boundary", "expires-at-boundary"}
    s, expired = s.expire(at)
    assert [(x.grant_id, x.amount) for x in expired] == [("expired-mid-period", D(10))]


def test_expire_and_expire_all() -> None:
    s = state(g("a", "10", expires=utc(2027, 6, 1)), g("b", "10"))
    s, exp = s.expire(utc(2027, 5, 31))
    assert exp == []
    s, exp = s.expire(utc(2027, 6, 1))
    assert [(x.grant_id, x.amount) for x in exp] == [("a", D(10))]
    s, exp = s.expire_all()
    assert [(x.grant_id, x.amount) for x in exp] == [("b", D(10))]
    assert s.summary().model_dump() == {
        "granted": D(20),
        "consumed": D(0),
        "expired": D(20),
        "balance": D(0),
    }


def test_errors() -> None:
    s = state(g("a", "10"))
    with pytest.raises(ValueError, match="exists"):
        s.grant(g("a", "1"))
    with pytest.raises(ValueError, match="negative"):
        s.apply(D(-1), T0)
    with pytest.raises(ValueError, match="expires must be after effective"):
        g("x", "1", effective=T_END, expires=T0)


def test_cost_basis_exact_ratio() -> None:
    c = g("c", "120000", price="100000")
    assert c.cost_basis * 6 == pytest.approx(D(5))
    assert g("promo", "50").cost_basis == 0


def test_state_is_json_roundtrippable() -> None:
    s, _ = state(g("a", "10", price="8")).apply(D(3), utc(2027, 2, 1))
    assert CreditState.model_validate_json(s.model_dump_json()) == s


def test_initial_grants_from_contract() -> None:
    terms = terms_for(
        catalog_with(
            [{"key": "m", "name": "M", "aggregation": "sum", "rate_card": [{"unit_price": "1"}]}]
        ),
        timezone="Europe/Paris",
        commitment={
            "amount": "1000",
            "discount_percent": "20",
            "expires_on": "2027-07-01",
            "priority": 2,
        },
        credit_grants=[
            {
                "id": "promo",
                "credits": "50",
                "effective": "2027-02-01",
                "expires": "2027-03-01T12:00:00Z",
            }
        ],
    )
    c, promo = initial_grants(terms)
    assert (c.id, c.credits, c.price, c.priority, c.seq) == (
        "commitment",
        D("1250.00"),
        D(1000),
        2,
        0,
    )
    assert c.effective == utc(2026, 12, 31, 23)  # local midnight in Paris
    assert c.expires == utc(2027, 6, 30, 22)
    assert (promo.price, promo.seq, promo.effective, promo.expires) == (
        D(0),
        1,
        utc(2027, 1, 31, 23),
        utc(2027, 3, 1, 12),
    )
    assert terms.term_end == date(2028, 1, 1)


amounts = st.decimals(min_value=0, max_value=10**5, places=2)


@settings(max_examples=200, deadline=None)
@given(
    grants=st.lists(
        st.tuples(
            st.decimals(min_value="0.01", max_value=10**5, places=2),
            st.integers(0, 3),
            st.integers(0, 11),
            st.integers(1, 12),
        ),
        min_size=1,
        max_size=5,
    ),
    ops=st.lists(
        st.tuples(st.sampled_from(["apply", "expire"]), amounts, st.integers(0, 13)), max_size=15
    ),
)
def test_credit_invariants(
    grants: list[tuple[Decimal, int, int, int]], ops: list[tuple[str, Decimal, int]]
) -> None:
    s = CreditState()
    for i, (credits, prio, eff, length) in enumerate(grants):
        eff_at = T0 + timedelta(days=30 * eff)
        s = s.grant(
            CreditGrant(
                id=f"g{i}",
                credits=credits,
                priority=prio,
                effective=eff_at,
                expires=eff_at + timedelta(days=30 * length),
            )
        )
    granted = sum((c for c, *_ in grants), Decimal(0))
    for op, amount, month in ops:
        at = T0 + timedelta(days=30 * month)
        before = s.summary().balance
        if op == "apply":
            avail = s.available(at)
            s, app = s.apply(amount, at)
            assert app.applied_total == min(amount, avail)
            assert sum((x.amount for x in app.per_grant), Decimal(0)) == app.applied_total
            assert s.summary().balance == before - app.applied_total
        else:
            s, _ = s.expire(at)
        summ = s.summary()
        assert summ.granted == granted
        assert summ.granted == summ.consumed + summ.expired + summ.balance
        for b in s.balances:
            assert min(b.remaining, b.consumed, b.expired) >= 0
    s, _ = s.expire_all()
    assert s.summary().balance == 0
