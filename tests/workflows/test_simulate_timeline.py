"""``billow simulate`` timelines through the real workflow (SPEC.md sections 7 and 9).

An amendment's default ``effective`` is its action's ``at``, not the instant
the workflow gets to it (simulate delivers actions a second late, see
``worker.simulate.settle``). Refused actions are reported and the rest of the
timeline still runs.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from models.catalog import load_catalog
from models.contract import load_contract
from models.timeline import load_timeline
from tests.support.scenario import PRO_CATALOG, contract_doc, event
from worker.simulate import SimulationInput, SimulationResult, simulate_on

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
