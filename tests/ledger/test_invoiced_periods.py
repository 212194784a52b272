"""The term's invoiced periods come from the ledger, not from every close request
(issue 13): each usage invoice stores its full cycle period (migration 0010),
invoices from before it are backfilled by the first request that still carries
the periods, and computed from the terms otherwise."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.invoiced_periods import invoiced_periods
from activities.ledger_reports import invoice_documents
from models.operations import ClosePeriodRequest
from tests.ledger.test_ledger_activities import Ledger, run
from tests.support.scenario import event
from worker.simulate import ingest_all

# Calendar-anchored from the 15th: the first period is Jan 15 - Feb 1 of the
# full period Jan 1 - Feb 1 (its fee is prorated 17/31).
MID_MONTH = {"starts_on": "2027-01-15", "billing_anchor": "calendar", "term_months": 3}


async def _ledger(db: AsyncEngine) -> Ledger:
    ledger = Ledger(db, **MID_MONTH)
    await ledger.register()
    return ledger


def _request(ledger: Ledger, index: int, *, carry: bool) -> ClosePeriodRequest:
    request = ledger.close_request(index)
    return request if carry else request.model_copy(update={"earlier_periods": None})


async def _spans(db: AsyncEngine) -> list[tuple[Any, ...]]:
    async with db.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT period_start, period_end, full_period_start, full_period_end "
            "FROM invoices WHERE kind = 'usage' ORDER BY period_start"))).all()
    return [tuple(r) for r in rows]


async def _late_lines(ledger: Ledger, key: str) -> list[tuple[str, str, str]]:
    async with ledger.engine.connect() as conn:
        docs = {d["key"]: d for d in await invoice_documents(conn, ledger.terms.contract_id)}
    return [(ln["quantity"], ln["amount"], ln["period_start"])
            for ln in docs[key]["lines"] if ln["kind"] == "late_usage"]


async def test_a_close_without_periods_bills_late_usage_from_the_ledgers_periods(
    db: AsyncEngine,
) -> None:
    ledger = await _ledger(db)
    await ingest_all(db, [event("e1", "2027-01-20T10:00:00Z", "100")])
    await run(ledger.acts.close_period, _request(ledger, 0, carry=False))
    await ingest_all(db, [event("late", "2027-01-31T23:00:00Z", "50")])  # after Jan's invoice
    await run(ledger.acts.close_period, _request(ledger, 1, carry=False))

    assert await _late_lines(ledger, "usage:2027-02-01") == [("50", "1.50", "2027-01-15")]
    spans = await _spans(db)
    # Each invoice stores the span it billed and its full cycle period; the
    # draft of the next period too.
    assert spans == [
        (date(2027, 1, 15), date(2027, 2, 1), date(2027, 1, 1), date(2027, 2, 1)),
        (date(2027, 2, 1), date(2027, 3, 1), date(2027, 2, 1), date(2027, 3, 1)),
    ]
    async with db.connect() as conn:
        found = await invoiced_periods(conn, ledger.terms)
    assert found.periods == ledger.periods[:2]


async def test_a_request_that_still_carries_the_periods_backfills_invoices_from_before(
    db: AsyncEngine,
) -> None:
    """A workflow started before migration 0010 sends its periods once more;
    the invoices finalized before it get their full periods from them."""
    ledger = await _ledger(db)
    await run(ledger.acts.close_period, _request(ledger, 0, carry=True))
    async with db.begin() as conn:  # as an invoice finalized before 0010
        await conn.execute(text(
            "UPDATE invoices SET full_period_start = NULL, full_period_end = NULL"))
    # Without the periods, the full period is computed from the terms: the
    # calendar grid gives Jan 1 - Feb 1 here.
    async with db.connect() as conn:
        computed = await invoiced_periods(conn, ledger.terms)
    assert computed.periods == ledger.periods[:1]

    await run(ledger.acts.close_period, _request(ledger, 1, carry=True))
    assert (await _spans(db))[0] == (
        date(2027, 1, 15), date(2027, 2, 1), date(2027, 1, 1), date(2027, 2, 1))


async def test_the_ledgers_periods_skip_drafts_and_held_invoices_and_repeat_no_span(
    db: AsyncEngine,
) -> None:
    """A void and its reissue bill one span; an unnumbered invoice billed nothing."""
    ledger = await _ledger(db)
    await run(ledger.acts.close_period, _request(ledger, 0, carry=False))
    async with db.begin() as conn:  # a reissue of January, as the void path writes it
        await conn.execute(text(
            "INSERT INTO invoices (contract_id, key, number, kind, status, currency, "
            "period_start, period_end, subtotal, credits_applied, total, amount_paid, "
            "usage_watermark) SELECT contract_id, 'usage:2027-01-15/2', 'INV-R', kind, "
            "'open', currency, period_start, period_end, 0, 0, 0, 0, usage_watermark "
            "FROM invoices WHERE key = 'usage:2027-01-15'"))
    async with db.connect() as conn:
        found = await invoiced_periods(conn, ledger.terms)
    # February's draft exists but is not invoiced; January counts once.
    assert [p.start_date for p in found.periods] == [date(2027, 1, 15)]
    assert found.periods[0].full_start_date == date(2027, 1, 1)
