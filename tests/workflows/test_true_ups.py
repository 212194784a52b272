"""Minimum commitments with true-up through the real workflow and ledger (SPEC 12)."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.ledger_correction import correct_in_ledger
from models.corrections import CorrectReissue
from tests.support.scenario import PRO_CATALOG, ContractRun, at, contract_doc, event


def _true_ups(invoices: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["key"], ln["amount"]) for i in invoices for ln in i["lines"]
            if ln["kind"] == "true_up"]


async def test_a_term_minimum_is_trued_up_on_the_final_invoice_only(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=3, minimum_commitment={"amount": "1000.00", "per": "term"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([
            event("jan", "2027-01-10T00:00:00Z", "10000"),  # 300.00
            event("mar", "2027-03-10T00:00:00Z", "5000"),  # 150.00
        ])
        await run.advance_to(at("2027-02-03"))
        await run.send_usage([event("late", "2027-01-20T00:00:00Z", "1000")])  # 30.00 late
        await run.advance_to(at("2027-04-02"))
        invoices = [i for i in await run.invoices() if i["kind"] == "usage"]
        report = await run.report()
        state = await run.state()

    # spend 300 + 30 (late, on February's invoice) + 150 = 480: true-up 520 on March's
    assert _true_ups(invoices) == [("usage:2027-03-01", "520.00")]
    mar = invoices[-1]
    assert [ln["kind"] for ln in mar["lines"]] == ["usage", "fee", "true_up"]  # last
    assert mar["lines"][-1] == {"kind": "true_up", "amount": "520.00"}
    assert (mar["subtotal"], mar["total"]) == ("1170.00", "1170.00")
    # the true-up is usage revenue: 300 + 30 + 150 + 520
    assert report["revenue"]["usage_billed"] == "1000.00"
    assert state.commitment is not None
    assert (state.commitment.spend, state.commitment.true_up) == (Decimal("480.00"),
                                                                 Decimal("520.00"))


async def test_a_per_period_minimum_counts_credit_paid_usage_and_is_not_paid_by_credits(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(
        term_months=2,
        commitment={"amount": "300.00"},  # 300 prepaid credits
        minimum_commitment={"amount": "500.00", "per": "billing_period"},
    )
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([
            event("jan", "2027-01-10T00:00:00Z", "10000"),  # 300.00, all paid by credits
            event("feb", "2027-02-10T00:00:00Z", "20000"),  # 600.00: above the minimum
        ])
        await run.advance_to(at("2027-03-02"))
        invoices = [i for i in await run.invoices() if i["kind"] == "usage"]
        report = await run.report()
    jan, feb = invoices
    # credit-paid usage is spend: 300 of 500, true-up 200 that credits do not pay
    assert [(ln["kind"], ln["amount"]) for ln in jan["lines"]] == [
        ("usage", "300.00"), ("fee", "500.00"), ("true_up", "200.00")]
    assert (jan["credits_applied"], jan["total"]) == ("300.00", "700.00")
    assert _true_ups([feb]) == []
    assert (feb["credits_applied"], feb["total"]) == ("0.00", "1100.00")
    assert report["revenue"]["usage_from_credits"] == "300.00"
    assert report["revenue"]["usage_billed"] == "800.00"  # 200 true-up + 600 February


@pytest.mark.parametrize(("prorate", "true_up"), [(True, "1449.45"), (False, "11970.00")])
async def test_an_early_termination_prorates_the_term_minimum_only_if_asked(
    ts_env: WorkflowEnvironment, db: AsyncEngine, prorate: bool, true_up: str
) -> None:
    doc = contract_doc(minimum_commitment={"amount": "12000.00", "per": "term",
                                           "prorate_on_termination": prorate})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("jan", "2027-01-10T00:00:00Z", "1000")])  # 30.00
        await run.amend({"id": "end", "kind": "terminate", "effective": "2027-02-15T00:00:00Z"})
        await run.advance_to(at("2027-02-16"))
        invoices = [i for i in await run.invoices() if i["kind"] == "usage"]
    # prorated: 45 of 365 days, 12000 x 45/365 = 1479.45, minus the 30.00 spent
    assert _true_ups(invoices) == [("usage:2027-02-01", true_up)]


async def test_set_minimum_commitment_takes_effect_from_the_next_boundary(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=4,
                       minimum_commitment={"amount": "500.00", "per": "billing_period"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("jan", "2027-01-10T00:00:00Z", "3333")])  # 99.99
        await run.advance_to(at("2027-02-10"))
        raised = await run.amend({
            "id": "raise", "kind": "set_minimum_commitment",
            "minimum_commitment": {"amount": "1000.00", "per": "billing_period"}})
        await run.advance_to(at("2027-03-15"))
        removed = await run.amend({"id": "remove", "kind": "set_minimum_commitment",
                                   "minimum_commitment": None})
        await run.advance_to(at("2027-05-02"))
        invoices = [i for i in await run.invoices() if i["kind"] == "usage"]
        state = await run.state()
    assert (raised.status, raised.effective) == ("scheduled", at("2027-03-01"))
    assert (removed.status, removed.effective) == ("scheduled", at("2027-04-01"))
    # January and February keep the minimum of their start; March gets the new
    # one; April none.
    assert _true_ups(invoices) == [("usage:2027-01-01", "400.01"),
                                   ("usage:2027-02-01", "500.00"),
                                   ("usage:2027-03-01", "1000.00")]
    assert state.terms.minimum_commitment is None
    assert state.commitment is None  # April had no minimum


@pytest.mark.parametrize(
    ("amendment", "field", "reason_part"),
    [
        ({"minimum_commitment": {"amount": "100.00", "per": "term", "currency": "EUR"}},
         "minimum_commitment.currency", "EUR differs from the contract's currency USD"),
        ({"minimum_commitment": {"amount": "100.001", "per": "term"}},
         "minimum_commitment.amount", "more decimals than USD"),
        # the last period is open: there is no boundary left to take effect from
        ({"minimum_commitment": {"amount": "100.00", "per": "term"},
          "effective": "2027-02-10T00:00:00Z"}, "effective", "no period is left"),
        # a contract cap below the plan's minimum for the meter
        ({"kind": "rate_override", "override": {"meter": "tokens", "maximum_amount": "10"}},
         "override.maximum_amount", "minimum 20 above maximum 10"),
    ],
)
async def test_an_invalid_minimum_is_refused_at_the_door_naming_the_field(
    ts_env: WorkflowEnvironment, db: AsyncEngine, amendment: dict[str, Any], field: str,
    reason_part: str,
) -> None:
    catalog = copy.deepcopy(PRO_CATALOG)
    catalog["plans"][0]["meter_limits"] = [{"meter": "tokens", "minimum_amount": "20"}]
    async with ContractRun(ts_env, db, contract_doc(term_months=2), catalog=catalog) as run:
        await run.advance_to(at("2027-01-10"))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await run.amend({"id": "bad", "kind": "set_minimum_commitment", **amendment})
        state = await run.state()
        recorded = await run.scalar("SELECT count(*) FROM amendments")
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidAmendment"
    reasons = {d["field"]: d["reason"] for d in cause.details[0]}
    assert field in reasons, cause.details
    assert reason_part in reasons[field]
    assert state.applied_amendment_ids == [] and recorded == 0  # nothing changed
    assert state.terms.minimum_commitments == [] and state.terms.rate_overrides == []


async def test_a_termination_at_an_invoiced_boundary_cannot_drop_the_term_true_up(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Found by the fuzz (session 6): after a boundary's invoice was finalized, a
    terminate effective at that boundary ended the term there. The invoice just
    issued became the term's last without the term minimum's true-up, and it was
    never billed. Refused, naming `effective` and the way out: void the invoice
    first, and its reissue (now the final invoice) carries the true-up."""
    doc = contract_doc(term_months=3, minimum_commitment={"amount": "1000.00", "per": "term"})
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("jan", "2027-01-10T00:00:00Z", "10000")])  # 300.00
        await run.advance_to(at("2027-02-01", 2))  # January is invoiced
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await run.amend({"id": "end", "kind": "terminate",
                             "effective": "2027-02-01T00:00:00Z"})
        jan = (await run.state()).invoices[-1]
        await run.correct({"id": "v1", "kind": "void", "invoice": jan.key})
        ended = await run.amend({"id": "end", "kind": "terminate",
                                 "effective": "2027-02-01T00:00:00Z"})
        await run.advance_to(at("2027-02-05"))
        # Nothing is owed any more, so the workflow has completed: the reissue
        # goes to the ledger, as the API sends it then.
        reissued = await correct_in_ledger(db, "c-1", CorrectReissue(
            id="r1", kind="reissue", invoice=jan.key), at("2027-02-05"))
        invoices = [i for i in await run.invoices() if i["kind"] == "usage"]
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidAmendment"
    reasons = {d["field"]: d["reason"] for d in cause.details[0]}
    assert "true-up" in reasons["effective"] and jan.number in reasons["effective"]
    assert ended.status == "applied"
    assert reissued.reissued is not None
    # 1000 minimum, 300 spent: the reissue is the term's final invoice
    assert _true_ups(invoices) == [(reissued.reissued.key, "700.00")]
