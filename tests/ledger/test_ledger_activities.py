"""Ledger activities against a real PostgreSQL: one effect per business key.

Activities run in Temporal's ``ActivityEnvironment`` (a real activity
context, no server): each is run twice and must have one effect; invoice
numbers stay gapless under concurrency; late usage is billed exactly once;
journal and credit ledger balance after every test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment

from activities.catalog_store import apply_catalog
from activities.ledger import LedgerActivities
from activities.ledger_reports import invoice_documents
from models.catalog import load_catalog
from models.contract import COMMITMENT_GRANT_ID, load_contract, resolve_terms
from models.operations import (
    ClosePeriodRequest,
    ContractStatus,
    DunningRequest,
    DunningStep,
    ExpireCreditsRequest,
    GrantRequest,
    PaymentRequest,
    RegisterContractRequest,
)
from models.periods import billing_periods
from tests.support.scenario import PRO_CATALOG, contract_doc, event
from worker.simulate import ingest_all

ENV = ActivityEnvironment()


async def run(fn: Any, arg: Any) -> Any:
    return await ENV.run(fn, arg)


class Ledger:
    """One registered contract and its ledger activities."""

    def __init__(
        self,
        engine: AsyncEngine,
        contract_id: str = "c-1",
        customer: str = "cust-1",
        catalog: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        self.engine = engine
        self.acts = LedgerActivities(engine)
        self.catalog = load_catalog(catalog or PRO_CATALOG)
        doc = contract_doc(id=contract_id, customer={"id": customer, "name": customer}, **overrides)
        self.contract = load_contract(doc)
        self.terms = resolve_terms(self.contract, self.catalog)
        self.periods = billing_periods(
            self.terms.starts_on,
            self.terms.term_end,
            self.terms.billing_cycle,
            self.terms.billing_anchor,
            self.terms.timezone,
        )

    async def register(self) -> None:
        async with self.engine.begin() as conn:
            version, _ = await apply_catalog(conn, self.catalog)
        await run(
            self.acts.register_contract,
            RegisterContractRequest(
                contract=self.contract, terms=self.terms, catalog_version=version, terms_digest="d"
            ),
        )

    def close_request(self, index: int) -> ClosePeriodRequest:
        period = self.periods[index]
        return ClosePeriodRequest(
            terms=self.terms,
            period=period,
            earlier_periods=self.periods[:index],
            issued_on=period.end_date,
            due_on=period.end_date,
            is_final=False,
        )

    def commitment_request(self, amount: str = "1200.00") -> GrantRequest:
        return GrantRequest(
            contract_id=self.terms.contract_id,
            grant_id=COMMITMENT_GRANT_ID,
            credits=Decimal(amount),
            price=Decimal(amount),
            priority=0,
            effective=self.terms.term_start_at,
            expires=self.terms.term_end_at,
            currency="USD",
            invoice_kind="commitment",
            invoice_key="commitment:2027-01-01",
            invoice_period=(self.terms.starts_on, self.terms.term_end),
            issued_on=self.terms.starts_on,
            due_on=date(2027, 1, 31),
        )


@pytest.fixture
async def ledger(db: AsyncEngine) -> AsyncIterator[Ledger]:
    ledger = Ledger(db)
    await ledger.register()
    yield ledger
    async with db.connect() as conn:  # every test leaves balanced books
        unbalanced = await conn.scalar(
            text(
                "SELECT count(*) FROM (SELECT entry_id FROM journal_lines GROUP BY entry_id "
                "HAVING sum(debit) <> sum(credit)) x"
            )
        )
        negative = await conn.scalar(
            text(
                "SELECT count(*) FROM (SELECT grant_id FROM credit_ledger GROUP BY contract_id, "
                "grant_id HAVING sum(amount) < 0) x"
            )
        )
    assert (unbalanced, negative) == (0, 0)


async def count(engine: AsyncEngine, table: str, where: str = "true") -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table} WHERE {where}")) or 0)


async def test_register_twice_writes_one_customer_and_one_contract(ledger: Ledger) -> None:
    """...and opens the first period's draft invoice (no number, no amounts yet)."""
    await ledger.register()
    async with ledger.engine.connect() as conn:
        draft = (await conn.execute(text("SELECT key, status, number FROM invoices"))).one()
    assert tuple(draft) == ("usage:2027-01-01", "draft", None)
    assert (await count(ledger.engine, "customers"), await count(ledger.engine, "contracts")) == (
        1,
        1,
    )


async def test_granting_twice_issues_one_commitment_invoice_and_one_grant(
    ledger: Ledger,
) -> None:
    first = await run(ledger.acts.grant_credits, ledger.commitment_request())
    second = await run(ledger.acts.grant_credits, ledger.commitment_request())
    assert first == second
    assert first.invoice.number == "INV-000001"
    assert first.credits.granted == Decimal("1200.00")
    e = ledger.engine
    assert [await count(e, t) for t in ("credit_grants", "credit_ledger", "journal_entries")] == [
        1,
        1,
        1,
    ]
    assert await count(e, "invoices", "status <> 'draft'") == 1


async def test_closing_a_period_twice_bills_it_once(ledger: Ledger) -> None:
    await run(ledger.acts.grant_credits, ledger.commitment_request("100.00"))
    await ingest_all(ledger.engine, [event("e1", "2027-01-05T00:00:00Z", "10000")])  # 300.00
    first = await run(ledger.acts.close_period, ledger.close_request(0))
    second = await run(ledger.acts.close_period, ledger.close_request(0))
    assert first == second
    inv = first.invoice
    assert (inv.number, inv.subtotal, inv.credits_applied, inv.total) == (
        "INV-000002",
        Decimal("800.00"),
        Decimal("100.00"),
        Decimal("700.00"),
    )
    assert first.credits.balance == 0
    assert await count(ledger.engine, "invoice_lines") == 1 + 2  # commitment + usage + fee
    async with ledger.engine.connect() as conn:
        consumed = await conn.scalar(
            text("SELECT sum(amount) FROM credit_ledger WHERE kind = 'consume'")
        )
    assert consumed == Decimal("-100.00")


async def test_concurrent_finalizations_get_distinct_consecutive_numbers(db: AsyncEngine) -> None:
    ledgers = [Ledger(db, f"c-{i}", f"cust-{i}") for i in range(8)]
    for ledger in ledgers:
        await ledger.register()
    results = await asyncio.gather(
        *(run(lg.acts.close_period, lg.close_request(0)) for lg in ledgers)
    )
    numbers = sorted(r.invoice.number for r in results)
    assert numbers == [f"INV-{n:06d}" for n in range(1, 9)]


async def test_late_events_are_billed_once_on_the_next_invoice(ledger: Ledger) -> None:
    await ingest_all(ledger.engine, [event("e1", "2027-01-05T00:00:00Z", "1000")])  # 30.00
    await run(ledger.acts.close_period, ledger.close_request(0))
    # Arrives after January was finalized.
    await ingest_all(ledger.engine, [event("late-1", "2027-01-20T00:00:00Z", "2000")])  # 60.00
    await ingest_all(ledger.engine, [event("e2", "2027-02-03T00:00:00Z", "100")])  # 3.00
    feb = await run(ledger.acts.close_period, ledger.close_request(1))
    await run(ledger.acts.close_period, ledger.close_request(1))  # retried: no change
    mar = await run(ledger.acts.close_period, ledger.close_request(2))
    async with ledger.engine.connect() as conn:
        docs = {d["key"]: d for d in await invoice_documents(conn, ledger.terms.contract_id)}
    late = [ln for ln in docs["usage:2027-02-01"]["lines"] if ln["kind"] == "late_usage"]
    assert [(ln["quantity"], ln["amount"], ln["period_start"]) for ln in late] == [
        ("2000", "60.00", "2027-01-01")
    ]
    assert feb.invoice.total == Decimal("563.00")  # 3.00 + 60.00 late + 500 fee
    assert mar.invoice.total == Decimal("500.00")  # the late event is not billed again
    assert all(ln["kind"] != "late_usage" for ln in docs["usage:2027-03-01"]["lines"])


async def test_payment_dunning_and_expiry_are_idempotent(ledger: Ledger) -> None:
    await run(ledger.acts.grant_credits, ledger.commitment_request())
    payment = PaymentRequest(
        contract_id="c-1",
        invoice_key="commitment:2027-01-01",
        payment_key="pay-1",
        amount=Decimal("1200.00"),
        received_on=date(2027, 1, 20),
    )
    first = await run(ledger.acts.record_payment, payment)
    second = await run(ledger.acts.record_payment, payment)
    assert second == first  # a resend answers what the first call answered
    assert (second.applied, second.status, second.amount_paid) == (
        True, "paid", Decimal("1200.00"))
    step = DunningRequest(
        contract_id="c-1",
        invoice_key="commitment:2027-01-01",
        step=DunningStep.REMINDER_1,
        on=date(2027, 2, 1),
    )
    await run(ledger.acts.dunning_step, step)
    await run(ledger.acts.dunning_step, step)
    expire = ExpireCreditsRequest(
        contract_id="c-1",
        at=datetime(2028, 1, 1, tzinfo=UTC),
        on=date(2028, 1, 1),
        status=ContractStatus.ENDED,
        terms=ledger.terms,
    )
    summary = await run(ledger.acts.expire_credits, expire)
    again = await run(ledger.acts.expire_credits, expire)
    assert summary == again
    assert (summary.expired, summary.balance) == (Decimal("1200.00"), 0)
    e = ledger.engine
    assert [await count(e, t) for t in ("payments", "dunning_events")] == [1, 1]
    async with e.connect() as conn:
        breakage = await conn.scalar(
            text(
                "SELECT sum(l.credit) FROM journal_lines l JOIN journal_entries j "
                "ON j.id = l.entry_id WHERE j.kind = 'breakage'"
            )
        )
        status = await conn.scalar(text("SELECT status FROM contracts"))
    assert (breakage, status) == (Decimal("1200.00"), "ended")


async def test_late_events_of_several_periods_land_on_one_invoice_each_labelled(
    ledger: Ledger,
) -> None:
    await run(ledger.acts.close_period, ledger.close_request(0))
    await run(ledger.acts.close_period, ledger.close_request(1))
    await ingest_all(
        ledger.engine,
        [
            event("late-jan", "2027-01-31T23:59:59Z", "1000"),  # 30.00, January
            event("late-feb", "2027-02-01T00:00:00Z", "2000"),  # 60.00, February (the boundary)
        ],
    )
    mar = await run(ledger.acts.close_period, ledger.close_request(2))
    async with ledger.engine.connect() as conn:
        docs = {d["key"]: d for d in await invoice_documents(conn, ledger.terms.contract_id)}
    late = [ln for ln in docs["usage:2027-03-01"]["lines"] if ln["kind"] == "late_usage"]
    assert [(ln["period_start"], ln["quantity"], ln["amount"]) for ln in late] == [
        ("2027-01-01", "1000", "30.00"),
        ("2027-02-01", "2000", "60.00"),
    ]
    assert mar.invoice.total == Decimal("590.00")


async def test_a_grant_used_up_over_three_invoices_recognizes_exactly_its_price(
    ledger: Ledger,
) -> None:
    grant = ledger.commitment_request().model_copy(
        update={"credits": Decimal("30.00"), "price": Decimal("100.00")}
    )
    await run(ledger.acts.grant_credits, grant)
    await ingest_all(
        ledger.engine,
        [
            event(f"r{m}", f"2027-0{m}-10T00:00:00Z", "10000", meter="requests", region="us")
            for m in (1, 2, 3)  # 10.00 of usage a month
        ],
    )
    for index in range(3):
        await run(ledger.acts.close_period, ledger.close_request(index))
    async with ledger.engine.connect() as conn:
        recognized = (
            (
                await conn.execute(
                    text(
                        "SELECT l.credit FROM journal_lines l "
                        "JOIN journal_entries j ON j.id = l.entry_id "
                        "WHERE j.kind = 'usage_from_credits' AND l.credit > 0 ORDER BY j.id"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert recognized == [Decimal("33.33"), Decimal("33.33"), Decimal("33.34")]
