"""Spend and true-ups in the ledger activities (SPEC 12): retried closes, void invoices."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.spend import billed_meters, term_spend
from tests.ledger.test_ledger_activities import Ledger, run


async def test_a_retried_close_answers_the_same_commitment_progress(db: AsyncEngine) -> None:
    ledger = Ledger(db, minimum_commitment={"amount": "100.00", "per": "billing_period"},
                    rate_overrides=[{"meter": "tokens", "minimum_amount": "40.00"}])
    await ledger.register()
    first = await run(ledger.acts.close_period, ledger.close_request(0))
    again = await run(ledger.acts.close_period, ledger.close_request(0))
    assert first.commitment is not None
    # no usage: the tokens minimum (40.00) is spend, the true-up the rest
    assert (first.commitment.spend, first.commitment.true_up) == (Decimal("40.00"),
                                                                 Decimal("60.00"))
    assert again.commitment == first.commitment
    assert [(ln.kind, ln.meter, ln.amount) for ln in first.limit_lines] == [
        ("minimum", "tokens", Decimal("40.00"))]
    assert again.limit_lines == first.limit_lines
    assert first.invoice.total == again.invoice.total == Decimal("600.00")  # + the 500 fee


async def test_spend_leaves_out_void_invoices_and_true_ups(db: AsyncEngine) -> None:
    ledger = Ledger(db, minimum_commitment={"amount": "100.00", "per": "billing_period"},
                    rate_overrides=[{"meter": "tokens", "minimum_amount": "40.00"}])
    await ledger.register()
    await run(ledger.acts.close_period, ledger.close_request(0))
    await run(ledger.acts.close_period, ledger.close_request(1))
    async with db.connect() as conn:
        assert await term_spend(conn, "c-1") == Decimal("80.00")  # two minimum lines
        assert (await billed_meters(conn, "c-1", ledger.periods[0]))["tokens"].minimum == (
            Decimal("40.00"))
    async with db.begin() as conn:  # a correction voided January (issue 14's path)
        await conn.execute(text("UPDATE invoices SET status = 'void' "
                                "WHERE key = 'usage:2027-01-01'"))
    async with db.connect() as conn:
        assert await term_spend(conn, "c-1") == Decimal("40.00")
        assert await billed_meters(conn, "c-1", ledger.periods[0]) == {}
