"""Amendments, payments and collection through the running contract workflow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.payments import SimulatedCardGateway
from models.periods import add_months, local_date
from tests.support.scenario import ContractRun, at, contract_doc, event


async def test_mid_period_rate_override_splits_the_lines(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.send_usage(
            [
                event("e1", "2027-01-05T00:00:00Z", "1000"),
                event("e2", "2027-01-20T00:00:00Z", "1000"),
            ]
        )
        await run.advance_to(at("2027-01-10"))
        await run.amend(
            {
                "id": "cheaper-gpt4",
                "kind": "rate_override",
                "effective": "2027-01-15T00:00:00Z",
                "override": {"meter": "tokens", "match": {"model": "gpt-4"}, "unit_price": "0.01"},
            }
        )
        await run.advance_to(at("2027-02-01", 2))
        jan = await run.invoice("usage:2027-01-01")
    usage = [ln for ln in jan["lines"] if ln["kind"] == "usage"]
    assert [
        (ln["part_start"][:10], ln["part_end"][:10], ln["unit_price"], ln["amount"]) for ln in usage
    ] == [
        ("2027-01-01", "2027-01-15", "0.03", "30.00"),
        ("2027-01-15", "2027-02-01", "0.01", "10.00"),
    ]
    assert jan["total"] == "540.00"


async def test_top_up_issues_its_invoice_and_its_credits_pay_usage(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=4)) as run:
        await run.send_usage([event("e1", "2027-03-20T00:00:00Z", "100000")])  # 3000.00
        await run.advance_to(at("2027-03-10", 9))
        await run.amend(
            {"id": "topup-1", "kind": "grant_credits", "credits": "20000.00", "price": "18000.00"}
        )
        await run.advance_to(at("2027-04-01", 2))
        top_up = await run.invoice("top_up:2027-03-10")
        march = await run.invoice("usage:2027-03-01")
        report = await run.report()
    assert (top_up["kind"], top_up["total"], top_up["issued_on"], top_up["due_on"]) == (
        "top_up",
        "18000.00",
        "2027-03-10",
        "2027-04-09",
    )
    assert top_up["period"] == {"start": "2027-03-10", "end": "2027-05-01"}
    assert (march["subtotal"], march["credits_applied"], march["total"]) == (
        "3500.00",
        "3000.00",
        "500.00",
    )
    assert report["credits"]["consumed"] == "3000.00"
    # 3000 credits bought at 0.9 each recognize 2700.00 of usage revenue.
    assert Decimal(report["revenue"]["usage_from_credits"]) == Decimal("2700.00")
    assert Decimal(report["revenue"]["deferred_balance"]) == Decimal("15300.00")


async def test_payment_terms_change_applies_to_invoices_issued_after_it(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=3)) as run:
        await run.advance_to(at("2027-02-10"))
        result = await run.amend(
            {
                "id": "net60",
                "kind": "change_payment_terms",
                "payment_terms_days": 60,
                "effective": "2027-02-15T00:00:00Z",
            }
        )
        await run.advance_to(at("2027-03-01", 2))
        invoices = await run.invoices()
    assert result.status == "scheduled"
    assert [(i["issued_on"], i["due_on"]) for i in invoices] == [
        ("2027-02-01", "2027-03-03"),  # net-30, issued before the change
        ("2027-03-01", "2027-04-30"),  # net-60
    ]


async def test_early_termination_prorates_the_last_period_and_expires_credits(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(commitment={"amount": "12000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "100000")])  # 3000.00
        await run.advance_to(at("2027-03-10"))  # exactly when a reminder falls due
        await run.amend({"id": "bye", "kind": "terminate", "effective": "2027-03-15T00:00:00Z"})
        await run.advance_to(at("2027-03-15", 3))
        invoices = await run.invoices()
        report = await run.report()
        state = await run.state()
    assert [(i["key"], i["period"]["end"], i["total"]) for i in invoices] == [
        ("commitment:2027-01-01", "2028-01-01", "12000.00"),
        ("usage:2027-01-01", "2027-02-01", "500.00"),
        ("usage:2027-02-01", "2027-03-01", "500.00"),
        ("usage:2027-03-01", "2027-03-15", "225.81"),  # 500 x 14/31
    ]
    assert report["credits"] == {
        "granted": "12000.00",
        "consumed": "3000.00",
        "expired": "9000.00",
        "balance": "0.00",
    }
    assert Decimal(report["revenue"]["breakage"]) == Decimal("9000.00")
    assert Decimal(report["revenue"]["deferred_balance"]) == 0
    assert state.status == "terminated"


async def test_auto_pay_declined_then_accepted_on_retry(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    gateway = SimulatedCardGateway(declines={"cust-1": 1})
    async with ContractRun(
        ts_env, db, contract_doc(term_months=1, auto_pay=True), gateway=gateway
    ) as run:
        await run.advance_to(at("2027-02-01", 2))
        after_decline = await run.invoice("usage:2027-01-01")
        await run.advance_to(at("2027-02-02", 2))
        after_retry = await run.invoice("usage:2027-01-01")
        method = await run.scalar("SELECT method FROM payments")
        payments = await run.scalar("SELECT count(*) FROM payments")
    assert (after_decline["status"], after_decline["paid_on"]) == ("open", None)
    assert (after_retry["status"], after_retry["paid_on"]) == ("paid", "2027-02-02")
    assert (method, payments) == ("simulated_card", 1)


async def test_invalid_amendment_is_refused_and_changes_nothing(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-01-10"))
        with pytest.raises(WorkflowUpdateFailedError) as failure:
            await run.amend(
                {
                    "id": "bad",
                    "kind": "rate_override",
                    "override": {"meter": "storage", "unit_price": "1"},
                }
            )
        state = await run.state()
        recorded = await run.scalar("SELECT count(*) FROM amendments")
    assert "storage" in str(failure.value.cause)
    assert state.applied_amendment_ids == []
    assert recorded == 0


async def test_backdated_contract_catches_up_period_by_period(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    now = await ts_env.get_current_time()
    today = local_date(now, "UTC")
    starts = [add_months(today.replace(day=1), k) for k in (-3, -2, -1)]
    async with ContractRun(ts_env, db, contract_doc(starts_on=starts[0].isoformat())) as run:
        ts = datetime.combine(starts[0], datetime.min.time(), tzinfo=UTC) + timedelta(days=3)
        await run.send_usage([event("b1", ts, "1000")])  # 30.00 in the first period
        await run.advance_to(now + timedelta(hours=2))
        invoices = await run.invoices()
        grace = timedelta(hours=float((await run.state()).terms.usage_grace_hours))
    assert [i["period"]["start"] for i in invoices] == [d.isoformat() for d in starts]
    # Issued when the catch-up closes run, one grace window after creation: the
    # next day when the test runs within that window of midnight UTC.
    issued = local_date(now + grace, "UTC")
    assert [i["issued_on"] for i in invoices] == [issued.isoformat()] * 3
    assert [i["total"] for i in invoices] == ["530.00", "500.00", "500.00"]
    assert [i["number"] for i in invoices] == ["INV-000001", "INV-000002", "INV-000003"]


async def test_billing_cycle_change_takes_effect_at_the_next_boundary(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc()) as run:
        await run.advance_to(at("2027-02-10"))
        result = await run.amend(
            {"id": "quarterly", "kind": "change_billing_cycle", "billing_cycle": "quarterly"}
        )
        await run.advance_to(at("2028-01-01", 2))
        invoices = await run.invoices()
    assert (result.status, result.effective) == ("scheduled", at("2027-03-01"))
    assert [(i["period"]["start"], i["period"]["end"], i["total"]) for i in invoices] == [
        ("2027-01-01", "2027-02-01", "500.00"),
        ("2027-02-01", "2027-03-01", "500.00"),  # the open period keeps its monthly terms
        ("2027-03-01", "2027-06-01", "1500.00"),
        ("2027-06-01", "2027-09-01", "1500.00"),
        ("2027-09-01", "2027-12-01", "1500.00"),
        ("2027-12-01", "2028-01-01", "510.99"),  # 1500 x 31/91 (to 2028-03-01, leap year)
    ]


async def test_a_second_top_up_on_the_same_day_is_refused(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=2)) as run:
        await run.advance_to(at("2027-01-10", 9))
        await run.amend({"id": "t1", "kind": "grant_credits", "credits": "100", "price": "90"})
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await run.amend({"id": "t2", "kind": "grant_credits", "credits": "50", "price": "45"})
        # A promotional grant (no price, no invoice) the same day is fine.
        promo = await run.amend({"id": "t3", "kind": "grant_credits", "credits": "10"})
        state = await run.state()
    assert "top_up:2027-01-10" in str(refused.value.cause)
    assert promo.status == "applied"
    assert state.credit_balance == Decimal("110")


async def test_amendments_sent_before_the_term_starts_apply_from_its_first_instant(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=1, commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.advance_to(at("2026-12-15"))  # the contract is still scheduled
        scheduled = await run.state()
        result = await run.amend({"id": "net10", "kind": "change_payment_terms",
                                  "payment_terms_days": 10})
        await run.advance_to(at("2027-01-02"))
        commitment = await run.invoice("commitment:2027-01-01")
    assert scheduled.status == "scheduled"
    assert (result.status, result.effective) == ("scheduled", at("2027-01-01"))
    assert commitment["due_on"] == "2027-01-11"  # net-10, not the plan's net-30


async def test_amendments_that_cannot_take_effect_in_the_term_are_refused(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=1, commitment={"amount": "1000.00"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.advance_to(at("2027-01-10"))
        with pytest.raises(WorkflowUpdateFailedError) as late_grant:
            await run.amend({"id": "g1", "kind": "grant_credits", "credits": "100",
                             "price": "90", "effective": "2027-02-15T00:00:00Z"})
        with pytest.raises(WorkflowUpdateFailedError) as reused:
            await run.amend({"id": "g2", "kind": "grant_credits", "grant_id": "commitment",
                             "credits": "100", "price": "90"})
        with pytest.raises(WorkflowUpdateFailedError) as sub_cent:
            await run.amend({"id": "g3", "kind": "grant_credits", "credits": "100",
                             "price": "90.005"})
        await run.advance_to(at("2027-02-02"))
        state = await run.state()
    assert "effective: at or after the term end" in str(late_grant.value.cause)
    assert "grant_id: a grant 'commitment' exists already" in str(reused.value.cause)
    assert "price: more decimals than USD has" in str(sub_cent.value.cause)
    assert state.status == "ended" and state.applied_amendment_ids == []


async def test_terminating_a_held_contract_ends_it_now_not_at_the_held_period(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=3)) as run:
        await run.send_usage([event("e1", "2027-01-05T00:00:00Z", "1000", model="claude")])
        await run.advance_to(at("2027-02-10", 9))
        ended = await run.amend({"id": "bye", "kind": "terminate"})
        await run.amend({"id": "price", "kind": "rate_override", "override": {
            "meter": "tokens", "match": {"model": "claude"}, "unit_price": "0.01"}})
        await run.advance_to(at("2027-02-11", 3))
        invoices = await run.invoices()
    assert ended.effective is not None and ended.effective.date().isoformat() == "2027-02-10"
    assert [(i["period"]["start"], i["period"]["end"], i["total"]) for i in invoices] == [
        ("2027-01-01", "2027-02-01", "510.00"),  # the held January, priced and billed
        ("2027-02-01", "2027-02-11", "178.57"),  # 500 x 10/28 up to the termination
    ]


async def test_late_usage_without_a_price_holds_the_next_invoice(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=3)) as run:
        await run.advance_to(at("2027-02-01", 2))  # January is finalized
        await run.send_usage([event("late", "2027-01-20T00:00:00Z", "5000", model="claude")])
        await run.advance_to(at("2027-03-01", 2))
        held = await run.state()
    assert held.status == "needs_attention"
    assert held.attention is not None and "claude" in held.attention
