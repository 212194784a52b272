"""A grant used up over several invoices recognizes exactly its price."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from models.credits import CreditGrant
from models.revenue import Account, recognized_by_grant, summarize, usage_invoiced

GRANT = CreditGrant(
    id="g",
    credits=Decimal("30"),
    price=Decimal("100.00"),
    effective=datetime(2027, 1, 1, tzinfo=UTC),
    expires=datetime(2028, 1, 1, tzinfo=UTC),
)


def _recognize(consumed: list[str], exhausted_on_last: bool) -> list[Decimal]:
    entries = []
    amounts = []
    for i, c in enumerate(consumed):
        last = i == len(consumed) - 1
        new = usage_invoiced(
            f"inv-{i}",
            currency="USD",
            usage_billed=Decimal(0),
            fees=Decimal(0),
            consumption=[(GRANT, Decimal(c))],
            recognized_so_far=recognized_by_grant(entries),
            exhausted={"g"} if last and exhausted_on_last else set(),
        )
        entries += new
        amounts.append(sum((e.net(Account.USAGE_REVENUE) for e in new), Decimal(0)))
    return amounts


def test_the_last_invoice_of_a_used_up_grant_takes_the_rounding_cents() -> None:
    # 10 credits at 100/30 each is 33.333... -> 33.33, three times 99.99.
    assert _recognize(["10", "10", "10"], exhausted_on_last=True) == [
        Decimal("33.33"),
        Decimal("33.33"),
        Decimal("33.34"),
    ]


def test_without_exhaustion_recognition_stays_proportional() -> None:
    assert _recognize(["10", "10"], exhausted_on_last=False) == [Decimal("33.33"), Decimal("33.33")]


def test_recognized_never_exceeds_the_price() -> None:
    entries = usage_invoiced(
        "inv",
        currency="USD",
        usage_billed=Decimal(0),
        fees=Decimal(0),
        consumption=[(GRANT, Decimal("30"))],
        recognized_so_far={},
        exhausted={"g"},
    )
    assert summarize(entries).usage_from_credits == Decimal("100.00")
