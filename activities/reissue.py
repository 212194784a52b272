"""Reissue of a voided usage invoice (SPEC.md section 11).

The correction path after a backdated ``rate_override``: the voided period is
rated again and issued as ``usage:<period start>/2`` (``/3``, ...), dated,
due and numbered on the day of the reissue. Rated again means:

- the same events the voided invoice billed (its usage watermark, and the
  late events between the watermark before it and its own), so nothing is
  billed twice or lost: later invoices continue from the same watermark;
- with every rate override that covers the period, each from the
  ``effective`` it was sent with (open periods applied it from their start at
  the earliest; a reissue does not);
- its fees as before (copied from the voided invoice);
- paid by the credits in force at the period end, with their balances now
  (the void gave back what the voided invoice had consumed).

Runs inside `activities.corrections.apply_correction`'s transaction; the
caller numbers the invoice last.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.exceptions import ApplicationError

from activities.invoice_store import store_finalized
from activities.invoiced_periods import invoiced_periods, period_of_row
from activities.ledger_store import (
    insert_ledger_entry,
    load_credit_state,
    load_journal,
    post_journal,
)
from activities.spend import term_spend
from activities.usage_invoice import late_usage_lines, raw_connection, usage_parts
from models.amendments import RateOverrideAmendment, parse_amendment
from models.contract import Contract, ContractTerms, add_rate_override
from models.corrections import CorrectionRequest, reissue_key
from models.invoices import (
    FeeLine,
    InvoiceKind,
    InvoicePeriod,
    InvoiceStatus,
    Line,
    build_invoice,
    due_on,
)
from models.minimum_commitment import commitment_progress, true_up_lines
from models.periods import Period, local_midnight_utc
from models.rating import rate_period
from models.revenue import recognized_by_grant, usage_invoiced
from models.spend_limits import with_limit_lines

__all__ = ["reissue_invoice", "reissue_terms"]


def _refuse(field: str, reason: str) -> ApplicationError:
    return ApplicationError(f"{field}: {reason}", [{"field": field, "reason": reason}],
                            type="InvalidCorrection", non_retryable=True)


async def reissue_terms(conn: AsyncConnection, cid: str, terms: ContractTerms) -> ContractTerms:
    """``terms`` with its rate overrides rebuilt from the contract's own and every
    ``rate_override`` amendment, each from the instant it was sent for (its
    ``effective``, else when billow received it), not clamped to a period start."""
    document = await conn.scalar(text("SELECT document FROM contracts WHERE id = :id"),
                                 {"id": cid})
    rebuilt = terms.model_copy(
        update={"rate_overrides": list(Contract.model_validate(document).rate_overrides)})
    rows = (
        await conn.execute(
            text("SELECT effective, document FROM amendments WHERE contract_id = :cid "
                 "AND kind = 'rate_override' ORDER BY id"),
            {"cid": cid},
        )
    ).all()
    for row in rows:
        amendment = parse_amendment(row.document)
        assert isinstance(amendment, RateOverrideAmendment)
        sent: datetime = amendment.effective or amendment.received_at or row.effective
        rebuilt = add_rate_override(rebuilt, amendment.override, sent)
    return rebuilt


async def _period(conn: AsyncConnection, req: CorrectionRequest,
                  voided: Any) -> tuple[Period, list[Period]]:
    """The voided invoice's period, as its close billed it, and the invoiced
    periods before it."""
    t = req.terms
    if req.invoiced_periods is None:
        invoiced = (await invoiced_periods(conn, t)).periods
    else:  # sent by a workflow from before migration 0010
        invoiced = list(req.invoiced_periods)
    known = {p.start_date: p for p in invoiced}
    period = known.get(voided.period_start) or period_of_row(t, voided)
    if period.end_date != voided.period_end:  # shortened by a termination after it
        period = period.model_copy(update={
            "end": local_midnight_utc(voided.period_end, t.timezone),
            "end_date": voided.period_end})
    earlier = [p for p in invoiced if p.end_date <= period.start_date]
    return period, earlier


async def reissue_invoice(conn: AsyncConnection, req: CorrectionRequest,
                          voided: Any) -> tuple[int, str]:
    """Rate the voided invoice's period again and store it (unnumbered).

    Returns the new invoice's id (for the caller to number) and its key.
    """
    cid = req.contract_id
    live = await conn.scalar(
        text("SELECT key FROM invoices WHERE contract_id = :cid AND kind = 'usage' "
             "AND period_start = :start AND number IS NOT NULL AND status <> 'void' LIMIT 1"),
        {"cid": cid, "start": voided.period_start},
    )
    if live is not None:
        raise _refuse("invoice", f"the period of {voided.key} is already invoiced by {live}")
    if voided.usage_watermark is None:
        raise _refuse("invoice", f"{voided.key} has no usage watermark to rate again from")
    existing = await conn.scalar(
        text("SELECT count(*) FROM invoices WHERE contract_id = :cid AND key LIKE :prefix"),
        {"cid": cid, "prefix": voided.key.split("/", 1)[0] + "/%"},
    )
    key = reissue_key(voided.key, int(existing or 0))
    terms = await reissue_terms(conn, cid, req.terms)
    period, earlier = await _period(conn, req, voided)
    raw = await raw_connection(conn)
    watermark = int(voided.usage_watermark)
    previous = await conn.scalar(
        text("SELECT max(usage_watermark) FROM invoices WHERE contract_id = :cid "
             "AND kind = 'usage' AND number IS NOT NULL AND usage_watermark < :wm"),
        {"cid": cid, "wm": watermark},
    )
    rating = rate_period(terms, period, await usage_parts(raw, terms, period, watermark))
    late, late_unpriced = await late_usage_lines(conn, raw, terms, earlier, previous, watermark)
    unpriced = [*rating.unpriced, *late_unpriced]
    if unpriced:
        groups = "; ".join(f"{u.meter} {u.dimensions}" for u in unpriced)
        raise _refuse("reissue", f"usage of the period has no price: {groups}")
    fees = [FeeLine.model_validate(r.document) for r in (await conn.execute(
        text("SELECT document FROM invoice_lines WHERE invoice_id = :id AND kind = 'fee' "
             "ORDER BY position"), {"id": voided.id})).all()]
    # The rules of the period's close (activities/usage_invoice.compute_usage_invoice):
    # each limited meter's minimum or maximum line after its lines, credits for
    # usage-kind lines, then the minimum commitment's true-up (never credit-paid),
    # against the spend of the other live invoices (the voided one is void now).
    usage_lines: list[Line] = [*with_limit_lines(terms, period, rating.lines), *late]
    state = await load_credit_state(conn, cid)
    usage_amount = sum((ln.amount for ln in usage_lines), Decimal(0))
    state, application = state.apply(usage_amount, period.end)
    progress = commitment_progress(terms, period, usage_amount, await term_spend(conn, cid),
                                   is_final=voided.period_end >= terms.term_end)
    doc = build_invoice(
        key=key, kind=InvoiceKind.USAGE, currency=terms.currency,
        period=InvoicePeriod(start=voided.period_start, end=voided.period_end),
        lines=[*usage_lines, *fees, *true_up_lines(progress)],
        credits_applied=application.applied_total,
        issued_on=req.on, status=InvoiceStatus.DRAFT,
    )
    invoice_id = await store_finalized(conn, cid, doc, req.on,
                                       due_on(req.on, terms.payment_terms_days),
                                       watermark=watermark,
                                       full_period=(period.full_start_date, period.full_end_date))
    await conn.execute(text("UPDATE invoices SET reissue_of = :of WHERE id = :id"),
                       {"of": voided.key, "id": invoice_id})
    for part in application.per_grant:
        await insert_ledger_entry(
            conn, entry_key=f"consume:{cid}:{key}:{part.grant_id}", contract_id=cid,
            grant_id=part.grant_id, kind="consume", amount=-part.amount, invoice_key=key)
    grants = {g.id: g for g in state.grants}
    entries = usage_invoiced(
        key, currency=terms.currency, usage_billed=doc.usage_billed, fees=doc.fee_amount,
        consumption=[(grants[p.grant_id], p.amount) for p in application.per_grant],
        recognized_so_far=recognized_by_grant(await load_journal(conn, cid)),
        exhausted={b.grant_id for b in state.balances if b.remaining == 0 and b.expired == 0},
    )
    await post_journal(conn, cid, entries, req.on, key)
    return invoice_id, key
