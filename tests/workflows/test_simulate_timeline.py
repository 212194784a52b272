"""``billow simulate`` timelines through the real workflow (SPEC.md sections 7 and 9).

An amendment's default ``effective`` is its action's ``at``, not the instant
the workflow gets to it (simulate delivers actions a second late, see
``worker.simulate.settle``). Refused actions are reported and the rest of the
timeline still runs.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from models.catalog import load_catalog
from models.contract import load_contract
from models.timeline import load_timeline
from tests.support.scenario import PRO_CATALOG, contract_doc, event
from worker.simulate import SimulationInput, SimulationResult, default_until, simulate_on

# 100,000 gpt-4 tokens at 0.03 in January: 3,000.00 of usage (+ 500.00 platform fee).
JANUARY_USAGE = [event("jan-1", "2027-01-15T10:00:00Z", "100000")]


async def simulate(
    env: WorkflowEnvironment,
    engine: AsyncEngine,
    timeline: list[dict[str, Any]],
    until: date | None = None,
    **contract: Any,
) -> SimulationResult:
    return await simulate_on(
        env,
        engine,
        SimulationInput(
            catalog=load_catalog(PRO_CATALOG),
            contract=load_contract(contract_doc(**contract)),
            usage=JANUARY_USAGE,
            timeline=load_timeline(timeline),
            until=until,
        ),
    )


def by_key(result: SimulationResult) -> dict[str, dict[str, Any]]:
    return {inv["key"]: inv for inv in result.output["invoices"]}


async def test_grant_sent_at_a_boundary_pays_the_closing_period(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """SPEC.md section 4: a grant effective exactly at the period end is in
    force for that period's invoice. Without `effective`, its `at` is it."""
    result = await simulate(
        ts_env,
        db,
        [
            {
                "at": "2027-02-01T00:00:00Z",
                "action": "amend",
                "amendment": {"id": "g-1", "kind": "grant_credits", "credits": "1000.00"},
            }
        ],
        until=date(2027, 2, 10),
    )
    assert "refused" not in result.output
    january = by_key(result)["usage:2027-01-01"]
    assert Decimal(january["subtotal"]) == Decimal("3500.00")
    assert Decimal(january["credits_applied"]) == Decimal("1000.00")
    assert Decimal(january["total"]) == Decimal("2500.00")
    credits = result.output["credits"]
    assert Decimal(credits["granted"]) == Decimal("1000.00")
    assert Decimal(credits["consumed"]) == Decimal("1000.00")
    assert Decimal(credits["balance"]) == Decimal("0.00")


async def test_priced_top_up_at_a_boundary_pays_the_closing_period(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """The top-up of the issue's wording: bought at the boundary, it pays
    the period that closes there, and its invoice is dated that day."""
    result = await simulate(
        ts_env,
        db,
        [
            {
                "at": "2027-02-01T00:00:00Z",
                "action": "amend",
                "amendment": {
                    "id": "top-1",
                    "kind": "grant_credits",
                    "credits": "2000.00",
                    "price": "1800.00",
                },
            }
        ],
        until=date(2027, 2, 10),
    )
    invoices = by_key(result)
    top_up = invoices["top_up:2027-02-01"]
    assert Decimal(top_up["total"]) == Decimal("1800.00")
    assert top_up["issued_on"] == "2027-02-01"
    january = invoices["usage:2027-01-01"]
    assert Decimal(january["credits_applied"]) == Decimal("2000.00")
    assert Decimal(january["total"]) == Decimal("1500.00")  # 3,500.00 - 2,000.00


async def test_terminate_sent_at_a_boundary_ends_the_term_there(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """No `effective`: the term ends at the `at` boundary, not a day later."""
    result = await simulate(
        ts_env,
        db,
        [
            {
                "at": "2027-03-01T00:00:00Z",
                "action": "amend",
                "amendment": {"id": "t-1", "kind": "terminate"},
            }
        ],
        until=date(2027, 5, 31),
    )
    invoices = by_key(result)
    assert list(invoices) == ["usage:2027-01-01", "usage:2027-02-01"]
    february = invoices["usage:2027-02-01"]
    assert february["period"] == {"start": "2027-02-01", "end": "2027-03-01"}
    assert Decimal(february["total"]) == Decimal("500.00")  # the full month's fee, no usage
    assert Decimal(invoices["usage:2027-01-01"]["total"]) == Decimal("3500.00")
    assert Decimal(result.output["revenue"]["fees"]) == Decimal("1000.00")


# --- refused actions ---------------------------------------------------------------


async def test_refused_actions_are_reported_and_the_timeline_goes_on(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    result = await simulate(
        ts_env,
        db,
        [
            {   # expires before it takes effect: refused, naming `expires`
                "at": "2027-01-10T00:00:00Z",
                "action": "amend",
                "amendment": {"id": "bad-grant", "kind": "grant_credits", "credits": "5.00",
                              "expires": "2027-01-05"},
            },
            {   # more than the invoice owes: refused, naming `amount`
                "at": "2027-02-05T00:00:00Z",
                "action": "pay",
                "invoice": "usage:2027-01-01",
                "amount": "9999.00",
            },
            {   # the rest of the timeline still runs
                "at": "2027-02-06T00:00:00Z",
                "action": "pay",
                "invoice": "usage:2027-01-01",
                "amount": "3500.00",
            },
        ],
        until=date(2027, 2, 10),
    )
    refused = result.output["refused"]
    assert [(r["index"], r["action"], r["at"]) for r in refused] == [
        (0, "amend", "2027-01-10T00:00:00Z"),
        (1, "pay", "2027-02-05T00:00:00Z"),
    ]
    assert refused[0]["kind"] == "grant_credits"
    assert refused[0]["id"] == "bad-grant"
    assert [e["field"] for e in refused[0]["errors"]] == ["expires"]
    assert refused[0]["reason"].startswith("expires: ")
    assert refused[1]["invoice"] == "usage:2027-01-01"
    assert [e["field"] for e in refused[1]["errors"]] == ["amount"]
    assert "9999.00" in refused[1]["reason"]
    january = by_key(result)["usage:2027-01-01"]
    assert january["status"] == "paid"
    assert january["paid_on"] == "2027-02-06"
    assert Decimal(result.output["credits"]["granted"]) == Decimal("0")


async def test_actions_after_an_explicit_until_are_not_sent(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """The output describes the ledger at the end of `until`, nothing later."""
    result = await simulate(
        ts_env,
        db,
        [{"at": "2027-03-01T00:00:00Z", "action": "amend",
          "amendment": {"id": "t-1", "kind": "terminate"}}],
        until=date(2027, 2, 10),
    )
    assert [(r["index"], r["id"], r["errors"][0]["field"]) for r in result.output["refused"]] == [
        (0, "t-1", "at")
    ]
    assert list(by_key(result)) == ["usage:2027-01-01"]
    assert result.output["until"] == "2027-02-10"


# --- the default `until` ------------------------------------------------------------


def amend(at: str, **amendment: Any) -> dict[str, Any]:
    return {"at": at, "action": "amend", "amendment": amendment}


def until_for(*actions: dict[str, Any], **contract: Any) -> date:
    contract_ = load_contract(contract_doc(**contract))
    return default_until(contract_, load_catalog(PRO_CATALOG), load_timeline(list(actions)))


def test_default_until_is_term_end_plus_payment_terms_plus_30_days() -> None:
    # 2028-01-01 term end, net-30 (the plan's), 30 days for the reminders.
    assert until_for() == date(2028, 3, 1)
    assert until_for(payment_terms_days=45) == date(2028, 3, 16)


def test_default_until_follows_extensions_and_terminations() -> None:
    assert until_for(amend("2027-06-01T00:00:00Z", id="x", kind="extend_term", term_months=6)) \
        == date(2028, 7, 1) + timedelta(days=60)
    # Without `effective` a terminate ends the term at its `at` ...
    assert until_for(amend("2027-03-01T00:00:00Z", id="t", kind="terminate")) \
        == date(2027, 3, 1) + timedelta(days=60)
    # ... and mid-day at the next local midnight.
    assert until_for(amend("2027-03-01T00:00:00Z", id="t", kind="terminate",
                           effective="2027-03-15T12:00:00Z")) \
        == date(2027, 3, 16) + timedelta(days=60)
    assert until_for(
        amend("2027-02-01T00:00:00Z", id="x", kind="extend_term", term_months=12),
        amend("2028-03-01T00:00:00Z", id="t", kind="terminate"),
    ) == date(2028, 3, 1) + timedelta(days=60)
    # An extension after a termination is refused by the contract: no effect.
    assert until_for(
        amend("2027-03-01T00:00:00Z", id="t", kind="terminate"),
        amend("2027-04-01T00:00:00Z", id="x", kind="extend_term", term_months=12),
    ) == date(2027, 3, 1) + timedelta(days=60)


def test_default_until_takes_the_longest_payment_terms() -> None:
    assert until_for(
        amend("2027-02-01T00:00:00Z", id="p1", kind="change_payment_terms", payment_terms_days=90),
        amend("2027-05-01T00:00:00Z", id="p2", kind="change_payment_terms", payment_terms_days=10),
    ) == date(2028, 1, 1) + timedelta(days=120)


def test_default_until_reaches_the_last_action() -> None:
    pay = {"at": "2028-06-01T09:00:00Z", "action": "pay", "invoice": "usage:2027-12-01",
           "amount": "500.00"}
    assert until_for(pay) == date(2028, 6, 1)


async def test_simulation_without_until_stops_after_a_terminated_term(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    result = await simulate(ts_env, db, [amend("2027-03-01T00:00:00Z", id="t", kind="terminate")])
    assert result.output["until"] == "2027-04-30"


async def test_a_refused_terminate_does_not_shorten_the_default_until(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """Sent after the term closed, back-dated: refused, so the term end stands."""
    result = await simulate(
        ts_env,
        db,
        [amend("2028-01-05T00:00:00Z", id="late", kind="terminate",
               effective="2027-06-01T00:00:00Z")],
    )
    assert [r["id"] for r in result.output["refused"]] == ["late"]
    assert result.output["until"] == "2028-03-01"
    assert len(result.output["invoices"]) == 12
