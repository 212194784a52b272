"""Payment ids: scoped to their contract, and never blind to content (SPEC 10).

The same id with the same content answers what the first call answered; the
same id for another invoice or amount is a conflict naming the field; another
contract may use the same id for its own payment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from models.operations import PaymentRequest
from tests.ledger.test_ledger_activities import Ledger, count, run


@pytest.fixture
async def ledger(db: AsyncEngine) -> AsyncIterator[Ledger]:
    """A contract with two open invoices: the commitment (1200.00) and January (500.00)."""
    ledger = Ledger(db)
    await ledger.register()
    await run(ledger.acts.grant_credits, ledger.commitment_request())
    await run(ledger.acts.close_period, ledger.close_request(0))
    yield ledger


def pay(key: str, invoice: str, amount: str, contract: str = "c-1") -> PaymentRequest:
    return PaymentRequest(contract_id=contract, invoice_key=invoice, payment_key=key,
                          amount=Decimal(amount), received_on=date(2027, 2, 3))


async def test_a_resend_answers_what_the_first_call_answered(ledger: Ledger) -> None:
    first = await run(ledger.acts.record_payment, pay("p-1", "usage:2027-01-01", "200.00"))
    # another payment moves the invoice on before the resend arrives
    await run(ledger.acts.record_payment, pay("p-2", "usage:2027-01-01", "300.00"))
    again = await run(ledger.acts.record_payment, pay("p-1", "usage:2027-01-01", "200"))
    assert first.applied and first.amount_paid == Decimal("200.00")
    assert again == first  # applied, 200.00 paid, still open: the first answer
    assert await count(ledger.engine, "payments") == 2
    async with ledger.engine.connect() as conn:
        paid = await conn.scalar(text(
            "SELECT amount_paid FROM invoices WHERE key = 'usage:2027-01-01'"))
    assert paid == Decimal("500.00")  # recorded once each


async def test_the_same_id_for_another_invoice_is_a_conflict(ledger: Ledger) -> None:
    await run(ledger.acts.record_payment, pay("ref-7", "commitment:2027-01-01", "1200.00"))
    with pytest.raises(ApplicationError) as raised:
        await run(ledger.acts.record_payment, pay("ref-7", "usage:2027-01-01", "500.00"))
    assert raised.value.type == "PaymentConflict" and raised.value.non_retryable
    assert "invoice" in str(raised.value) and "usage:2027-01-01" in str(raised.value)
    assert await count(ledger.engine, "payments") == 1
    assert await count(ledger.engine, "invoices", "key = 'usage:2027-01-01' AND amount_paid = 0")


async def test_the_same_id_with_another_amount_is_a_conflict(ledger: Ledger) -> None:
    await run(ledger.acts.record_payment, pay("ref-8", "usage:2027-01-01", "100.00"))
    with pytest.raises(ApplicationError) as raised:
        await run(ledger.acts.record_payment, pay("ref-8", "usage:2027-01-01", "150.00"))
    assert raised.value.type == "PaymentConflict"
    assert "amount" in str(raised.value) and "150.00" in str(raised.value)
    async with ledger.engine.connect() as conn:
        paid = await conn.scalar(text(
            "SELECT amount_paid FROM invoices WHERE key = 'usage:2027-01-01'"))
    assert paid == Decimal("100.00")


async def test_two_contracts_may_use_the_same_payment_id(ledger: Ledger) -> None:
    other = Ledger(ledger.engine, "c-2", "cust-2")
    await other.register()
    await run(other.acts.close_period, other.close_request(0))
    mine = await run(ledger.acts.record_payment, pay("INV-REF-1", "usage:2027-01-01", "500.00"))
    theirs = await run(
        other.acts.record_payment, pay("INV-REF-1", "usage:2027-01-01", "500.00", "c-2"))
    assert (mine.applied, mine.status) == (True, "paid")
    assert (theirs.applied, theirs.status, theirs.amount_paid) == (True, "paid", Decimal("500.00"))
    assert await count(ledger.engine, "payments") == 2
    assert await count(ledger.engine, "journal_entries", "kind = 'payment'") == 2
