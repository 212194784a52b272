"""Automatic credit notes: a fall in late usage of a non-additive meter (SPEC.md 3, 11).

Events are only ever added, so a ``max`` or ``unique_count`` figure cannot
fall; a ``latest`` one does when a later reading arrives late with a lower
value. Both are tested here through the running contract: a lower ``max``
reading arriving late changes nothing (no line, no note), a lower ``latest``
one is credited.
"""

from __future__ import annotations

import copy
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.correction_store import credit_notes_of
from tests.support.correction_checks import ledger_problems
from tests.support.scenario import PRO_CATALOG, ContractRun, at, contract_doc, event

D = Decimal
CATALOG = copy.deepcopy(PRO_CATALOG)
CATALOG["meters"].append({"key": "nodes", "name": "Nodes", "aggregation": "latest",
                          "group_by": ["cluster"],
                          "rate_card": [{"match": {}, "unit_price": "10"}]})
CATALOG["meters"].append({"key": "disk", "name": "Disk", "aggregation": "max",
                          "group_by": ["cluster"],
                          "rate_card": [{"match": {}, "unit_price": "2"}]})
CATALOG["plans"][0]["meters"] += ["nodes", "disk"]


def nodes(eid: str, ts: str, n: str) -> dict[str, object]:
    return event(eid, ts, n, meter="nodes", cluster="a")


async def test_a_lower_latest_reading_arriving_late_is_credited_once(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    async with ContractRun(ts_env, db, contract_doc(term_months=4), catalog=CATALOG) as run:
        await run.send_usage([nodes("n1", "2027-01-10T00:00:00Z", "50")])  # 500.00
        await run.advance_to(at("2027-02-03"))
        jan = await run.invoice("usage:2027-01-01")
        assert jan["total"] == "1000.00"  # 50 nodes x 10 + the 500.00 fee
        # January's last reading was 30 nodes, sent late: January billed 20 too many.
        await run.send_usage([nodes("n2", "2027-01-20T00:00:00Z", "30")])
        await run.advance_to(at("2027-03-01", 3))
        feb = await run.invoice("usage:2027-02-01")
        jan_after = await run.invoice("usage:2027-01-01")
        state = await run.state()
        # A later reading of 40 raises January again: billed from 30, not from 50.
        await run.send_usage([nodes("n3", "2027-01-25T00:00:00Z", "40")])
        await run.advance_to(at("2027-04-01", 3))
        mar = await run.invoice("usage:2027-03-01")
        async with db.connect() as conn:
            notes = await credit_notes_of(conn, "c-1")
        problems = await ledger_problems(db, "c-1")
    assert feb["total"] == "500.00"  # the fall is not a negative line
    assert [(n.number, n.invoice, n.issued_on.isoformat(), n.reason, n.automatic, n.total,
             n.allocation.outstanding_reduced) for n in notes] == [
        ("CN-000001", "usage:2027-01-01", "2027-03-01", "billing_error", True, D("200.00"),
         D("200.00"))]
    assert (D(jan_after["credited"]), D(jan_after["outstanding"])) == (D("200.00"),
                                                                      D("800.00"))
    jan_state = next(i for i in state.invoices if i.key == "usage:2027-01-01")
    assert jan_state.outstanding == D("800.00")
    late = [(ln["meter"], ln["quantity"], ln["amount"]) for ln in mar["lines"]
            if ln["kind"] == "late_usage"]
    assert late == [("nodes", "10", "100.00")]
    assert problems == []


def disk(eid: str, ts: str, n: str) -> dict[str, object]:
    return event(eid, ts, n, meter="disk", cluster="a")


async def test_a_lower_max_reading_arriving_late_credits_nothing_and_a_higher_one_bills_the_rise(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    """The peak stays the peak: a late reading below it is no fall (nothing credited,
    nothing billed); a late one above it bills only the rise, once."""
    async with ContractRun(ts_env, db, contract_doc(term_months=4), catalog=CATALOG) as run:
        await run.send_usage([disk("d1", "2027-01-10T00:00:00Z", "50")])  # 100.00
        await run.advance_to(at("2027-02-03"))
        jan = await run.invoice("usage:2027-01-01")
        await run.send_usage([disk("d2", "2027-01-20T00:00:00Z", "30")])  # lower, late
        await run.advance_to(at("2027-03-03"))
        feb = await run.invoice("usage:2027-02-01")
        await run.send_usage([disk("d3", "2027-01-25T00:00:00Z", "70")])  # higher, late
        await run.advance_to(at("2027-04-03"))
        mar = await run.invoice("usage:2027-03-01")
        jan_after = await run.invoice("usage:2027-01-01")
        async with db.connect() as conn:
            notes = await credit_notes_of(conn, "c-1")
        problems = await ledger_problems(db, "c-1")
    assert jan["total"] == "600.00"  # 50 x 2 + the 500.00 fee
    assert feb["total"] == "500.00" and not [ln for ln in feb["lines"]
                                             if ln["kind"] == "late_usage"]
    late = [(ln["meter"], ln["quantity"], ln["amount"]) for ln in mar["lines"]
            if ln["kind"] == "late_usage"]
    assert late == [("disk", "20", "40.00")]
    assert notes == []
    assert (D(jan_after["credited"]), D(jan_after["outstanding"])) == (D(0), D("600.00"))
    assert problems == []
