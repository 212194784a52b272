"""Ledger activities: the contract workflow's side effects on PostgreSQL.

Every activity runs in one transaction, takes the contract's row lock first
(so two attempts of the same step serialise), and is idempotent on a business
key enforced by a unique constraint: running one twice has one effect, and the
second run returns what the first wrote. Billing math is delegated to the pure
``models`` package; this module only loads, calls and stores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import metrics
from activities.contract_overlap import overlapping_contract
from activities.errors import BusinessError, business_errors
from activities.events import emit_contract_event, emit_event, emit_invoice_event
from activities.late_usage import LateFall, billed_groups, late_rows, non_additive_late_rows
from activities.ledger_reports import invoice_detail_json
from activities.ledger_store import (
    find_invoice,
    insert_ledger_entry,
    issued_from_row,
    load_credit_state,
    load_journal,
    lock_contract,
    next_invoice_number,
    post_journal,
)
from activities.spend import billed_meters, limit_lines_of, progress_of, term_spend
from activities.usage_query import (
    MeterSpec,
    aggregate_usage,
    read_watermark,
)
from models.contract import ContractTerms
from models.credits import CreditApplication, CreditState, CreditSummary, crossed_low_balance
from models.events import EventType
from models.invoices import (
    CommitmentLine,
    InvoiceDocument,
    InvoiceKind,
    InvoicePeriod,
    InvoiceStatus,
    LateUsageLine,
    Line,
    MaximumLine,
    MinimumLine,
    TopUpLine,
    build_invoice,
    invoice_key_usage,
)
from models.minimum_commitment import CommitmentProgress, commitment_progress, true_up_lines
from models.money import round_money
from models.operations import (
    ActivityName,
    ClosePeriodRequest,
    ClosePeriodResult,
    DunningRequest,
    DunningStep,
    ExpireCreditsRequest,
    GrantRequest,
    GrantResult,
    IssuedInvoice,
    PaymentRequest,
    PaymentResult,
    RecordAmendmentRequest,
    RegisterContractRequest,
    ReserveTermRequest,
    UpdateContractRequest,
)
from models.periods import Period, billing_periods
from models.rating import (
    UnpricedGroup,
    UsageAggregate,
    UsagePart,
    fee_lines,
    rate_period,
    split_points,
)
from models.revenue import (
    breakage,
    commitment_invoiced,
    payment_received,
    recognized_by_grant,
    top_up_invoiced,
    usage_invoiced,
)
from models.spend_limits import late_limit_lines, with_limit_lines

# Credits are in force until the instant they expire; a grant expiring exactly
# at a boundary still pays that boundary's invoice (models/credits.py).
_JUST_BEFORE = timedelta(microseconds=1)


class LedgerActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- contracts ---------------------------------------------------------
    @activity.defn(name=ActivityName.REGISTER_CONTRACT.value)
    @business_errors
    async def register_contract(self, req: RegisterContractRequest) -> None:
        async with self.engine.begin() as conn:
            await register_contract_rows(conn, req)

    @activity.defn(name=ActivityName.UPDATE_CONTRACT.value)
    @business_errors
    async def update_contract(self, req: UpdateContractRequest) -> None:
        async with self.engine.begin() as conn:
            await save_contract_row(conn, req)

    @activity.defn(name=ActivityName.RECORD_AMENDMENT.value)
    @business_errors
    async def record_amendment(self, req: RecordAmendmentRequest) -> None:
        async with self.engine.begin() as conn:
            inserted = await conn.scalar(
                text(
                    """
                    INSERT INTO amendments (contract_id, amendment_id, kind, effective, document)
                    VALUES (:cid, :aid, :kind, :eff, CAST(:doc AS jsonb))
                    ON CONFLICT (contract_id, amendment_id) DO NOTHING RETURNING id
                    """
                ),
                {
                    "cid": req.contract_id,
                    "aid": req.amendment.id,
                    "kind": req.amendment.kind,
                    "eff": req.effective,
                    "doc": req.amendment.model_dump_json(),
                },
            )
            if inserted is not None:
                await emit_contract_event(
                    conn, EventType.CONTRACT_AMENDED, req.contract_id,
                    amendment=req.amendment.model_dump(mode="json"),
                    effective=req.effective.isoformat())

    # --- credits -------------------------------------------------------------
    @activity.defn(name=ActivityName.GRANT_CREDITS.value)
    @business_errors
    async def grant_credits(self, req: GrantRequest) -> GrantResult:
        async with self.engine.begin() as conn:
            await lock_contract(conn, req.contract_id)
            inserted = await conn.scalar(
                text(
                    """
                    INSERT INTO credit_grants (contract_id, grant_id, credits, price, priority,
                        effective, expires, invoice_key)
                    VALUES (:cid, :gid, :credits, :price, :prio, :eff, :exp, :inv)
                    ON CONFLICT (contract_id, grant_id) DO NOTHING RETURNING id
                    """
                ),
                {
                    "cid": req.contract_id,
                    "gid": req.grant_id,
                    "credits": req.credits,
                    "price": req.price,
                    "prio": req.priority,
                    "eff": req.effective,
                    "exp": req.expires,
                    "inv": req.invoice_key,
                },
            )
            if inserted is None:
                await _check_same_grant(conn, req)
            else:
                await insert_ledger_entry(
                    conn,
                    entry_key=f"grant:{req.contract_id}:{req.grant_id}",
                    contract_id=req.contract_id,
                    grant_id=req.grant_id,
                    kind="grant",
                    amount=req.credits,
                    invoice_key=req.invoice_key,
                )
            invoice = None
            unnumbered: int | None = None
            if req.invoice_kind is not None and req.invoice_key is not None:
                await _check_invoice_is_this_grants(conn, req)
                invoice = await find_invoice(conn, req.contract_id, req.invoice_key)
                if invoice is None:
                    unnumbered = await self._issue_grant_invoice(conn, req)
            state = await load_credit_state(conn, req.contract_id)
            if unnumbered is not None:  # last: the series lock is held until COMMIT
                assert req.invoice_key is not None
                events = await _finalized_events(conn, req.contract_id, req.invoice_key)
                invoice = await next_invoice_number(conn, unnumbered, events=events)
        metrics.credits_granted(req, invoice, new=inserted is not None)
        return GrantResult(invoice=invoice, credits=state.summary())

    async def _issue_grant_invoice(self, conn: AsyncConnection, req: GrantRequest) -> int:
        """Store the grant's invoice and journal entry; returns the (unnumbered) invoice id."""
        assert req.invoice_key and req.invoice_period and req.issued_on and req.due_on
        line: Line
        price = round_money(req.price, req.currency)  # "1500" prints as 1500.00
        if req.invoice_kind == "commitment":
            kind, line = InvoiceKind.COMMITMENT, CommitmentLine(amount=price)
            entry = commitment_invoiced(req.invoice_key, price, req.grant_id)
        else:
            kind, line = InvoiceKind.TOP_UP, TopUpLine(amount=price)
            entry = top_up_invoiced(req.invoice_key, price, req.grant_id)
        doc = build_invoice(
            key=req.invoice_key,
            kind=kind,
            currency=req.currency,
            period=InvoicePeriod(start=req.invoice_period[0], end=req.invoice_period[1]),
            lines=[line],
            issued_on=req.issued_on,
        )
        invoice_id = await store_finalized(conn, req.contract_id, doc, req.issued_on, req.due_on)
        await post_journal(
            conn, req.contract_id, [entry] if req.price > 0 else [], req.issued_on, req.invoice_key
        )
        return invoice_id

    @activity.defn(name=ActivityName.EXPIRE_CREDITS.value)
    @business_errors
    async def expire_credits(self, req: ExpireCreditsRequest) -> CreditSummary:
        """Term end: every remaining credit expires; deferred revenue becomes breakage."""
        async with self.engine.begin() as conn:
            await lock_contract(conn, req.contract_id)
            state = await load_credit_state(conn, req.contract_id)
            state, _ = state.expire_all()
            await write_expiries_and_breakage(conn, req.contract_id, state, req.on)
            await save_contract_row(
                conn,
                UpdateContractRequest(
                    contract_id=req.contract_id, status=req.status, terms=req.terms
                ),
            )
        return state.summary()

    @activity.defn(name=ActivityName.RESERVE_TERM_EXTENSION.value)
    @business_errors
    async def reserve_term_extension(self, req: ReserveTermRequest) -> None:
        """Refuse an extension into another contract's term on a shared meter;
        otherwise write the new end under the customer's lock (idempotent)."""
        async with self.engine.begin() as conn:
            other = await overlapping_contract(
                conn, req.customer_id, req.meters, req.start, req.end, exclude_id=req.contract_id
            )
            if other is not None:
                raise BusinessError(
                    f"term_months: the extended term overlaps contract {other!r} of customer "
                    f"{req.customer_id!r} on a shared meter",
                    type="ContractOverlap",
                )
            await conn.execute(
                text("UPDATE contracts SET term_end = GREATEST(term_end, :end), "
                     "updated_at = now() WHERE id = :id"),
                {"end": req.term_end, "id": req.contract_id},
            )

    # --- usage invoices ---------------------------------------------------------
    @activity.defn(name=ActivityName.CLOSE_PERIOD.value)
    @business_errors
    async def close_period(self, req: ClosePeriodRequest) -> ClosePeriodResult:
        terms, period = req.terms, req.period
        cid = terms.contract_id
        key = invoice_key_usage(period.start_date)
        async with self.engine.begin() as conn:
            await lock_contract(conn, cid)
            existing = await find_invoice(conn, cid, key)
            if existing is not None and existing.number is not None:
                state = await load_credit_state(conn, cid)
                progress = await progress_of(conn, terms, period, key, req.is_final)
                return ClosePeriodResult(invoice=existing, attention=None,
                                         credits=state.summary(), commitment=progress,
                                         limit_lines=await limit_lines_of(conn, cid, key))
            computed = await compute_usage_invoice(
                conn, terms, period, req.earlier_periods, req.issued_on, is_final=req.is_final
            )
            if computed.attention is not None:
                held = await _hold(conn, cid, key, terms, period, computed.attention)
                metrics.invoice_held()
                return ClosePeriodResult(
                    invoice=held, attention=computed.attention,
                    credits=computed.credits_before.summary(),
                )
            assert computed.document is not None and computed.application is not None
            doc, application, state = computed.document, computed.application, computed.state
            invoice_id = await store_finalized(
                conn, cid, doc, req.issued_on, req.due_on, watermark=computed.watermark
            )
            for part in application.per_grant:
                await insert_ledger_entry(
                    conn,
                    entry_key=f"consume:{cid}:{key}:{part.grant_id}",
                    contract_id=cid,
                    grant_id=part.grant_id,
                    kind="consume",
                    amount=-part.amount,
                    invoice_key=key,
                )
            grants = {g.id: g for g in state.grants}
            # What credits recognized so far matters only to the grants this
            # invoice consumed: without any, the journal is not read (issue 13).
            recognized = (recognized_by_grant(await load_journal(conn, cid))
                          if application.per_grant else {})
            entries = usage_invoiced(
                key,
                currency=terms.currency,
                usage_billed=doc.usage_billed,
                fees=doc.fee_amount,
                consumption=[(grants[p.grant_id], p.amount) for p in application.per_grant],
                recognized_so_far=recognized,
                exhausted={b.grant_id for b in state.balances
                           if b.remaining == 0 and b.expired == 0},
            )
            await post_journal(conn, cid, entries, req.issued_on, key)
            if computed.expired_before:
                await write_expiries_and_breakage(conn, cid, state, req.issued_on)
            if req.next_period is not None:
                await open_draft(conn, terms, req.next_period)
            corrected = []
            if computed.falls:
                # A fall in late usage is credited, dated this invoice's day
                # (SPEC.md section 11); the notes take their numbers here.
                from activities.auto_credit import credit_falls

                corrected = await credit_falls(conn, req, key, computed.falls,
                                               list(req.earlier_periods))
                state = await load_credit_state(conn, cid)
            await _credits_low(conn, terms, computed.credits_before, state, key)
            events = await _finalized_events(conn, cid, key)
            # The number is the transaction's last statement: the series lock
            # it takes is held only until the COMMIT that follows (issue 13).
            issued = await next_invoice_number(conn, invoice_id, events=events)
        metrics.invoice_finalized(issued)
        return ClosePeriodResult(
            invoice=issued, attention=None, credits=state.summary(),
            commitment=computed.commitment,
            limit_lines=[ln for ln in doc.lines if isinstance(ln, MinimumLine | MaximumLine)],
            credited=[i for o in corrected for i in o.invoices],
            refunds=[o.refund for o in corrected if o.refund is not None])

    # --- collection ----------------------------------------------------------------
    @activity.defn(name=ActivityName.RECORD_PAYMENT.value)
    @business_errors
    async def record_payment(self, req: PaymentRequest) -> PaymentResult:
        async with self.engine.begin() as conn:
            await lock_contract(conn, req.contract_id)
            return await record_payment_in(conn, req)

    @activity.defn(name=ActivityName.DUNNING_STEP.value)
    @business_errors
    async def dunning_step(self, req: DunningRequest) -> None:
        async with self.engine.begin() as conn:
            await lock_contract(conn, req.contract_id)
            inserted = await conn.scalar(
                text(
                    """
                    INSERT INTO dunning_events (event_key, contract_id, invoice_key, kind,
                        occurred_on)
                    VALUES (:key, :cid, :inv, :kind, :on)
                    ON CONFLICT (event_key) DO NOTHING RETURNING id
                    """
                ),
                {
                    "key": f"dunning:{req.contract_id}:{req.invoice_key}:{req.step.value}",
                    "cid": req.contract_id,
                    "inv": req.invoice_key,
                    "kind": req.step.value,
                    "on": req.on,
                },
            )
            if req.step is DunningStep.OVERDUE:
                went_overdue = await conn.scalar(
                    text(
                        "UPDATE invoices SET status = 'overdue' "
                        "WHERE contract_id = :cid AND key = :key AND status = 'open' "
                        "RETURNING id"
                    ),
                    {"cid": req.contract_id, "key": req.invoice_key},
                )
                if went_overdue is not None:
                    await emit_invoice_event(conn, EventType.INVOICE_OVERDUE, req.contract_id,
                                             req.invoice_key)
            elif inserted is not None:
                # Delivery (e-mail, CRM task) hangs off this row; billow records it.
                activity.logger.info(
                    "reminder %s for invoice %s of contract %s",
                    req.step.value,
                    req.invoice_key,
                    req.contract_id,
                )
        metrics.dunning_recorded(req.step, new=inserted is not None)


async def _check_invoice_is_this_grants(conn: AsyncConnection, req: GrantRequest) -> None:
    """An invoice key already paying for another grant is never taken as this
    grant's invoice: the grant would get its credits without being invoiced."""
    other = await conn.scalar(
        text("SELECT grant_id FROM credit_grants WHERE contract_id = :cid "
             "AND invoice_key = :key AND grant_id <> :gid LIMIT 1"),
        {"cid": req.contract_id, "key": req.invoice_key, "gid": req.grant_id},
    )
    if other is not None:
        raise BusinessError(
            f"effective: invoice {req.invoice_key} already invoices grant {other!r}",
            type="TopUpConflict",
        )


async def _check_same_grant(conn: AsyncConnection, req: GrantRequest) -> None:
    """A stored grant with this id must be this request's (a retry), never another
    grant reusing the id: that would issue an invoice for credits it never gets."""
    row = (
        await conn.execute(
            text(
                "SELECT credits, price, priority, effective, expires, invoice_key "
                "FROM credit_grants WHERE contract_id = :cid AND grant_id = :gid"
            ),
            {"cid": req.contract_id, "gid": req.grant_id},
        )
    ).one()
    wanted = {
        "credits": req.credits, "price": req.price, "priority": req.priority,
        "effective": req.effective, "expires": req.expires, "invoice_key": req.invoice_key,
    }
    differing = [name for name, value in wanted.items() if getattr(row, name) != value]
    if differing:
        raise BusinessError(
            f"grant_id: a grant {req.grant_id!r} exists with other {', '.join(differing)}",
            type="GrantConflict",
        )


async def register_contract_rows(conn: AsyncConnection, req: RegisterContractRequest) -> None:
    """Insert the customer and the contract if absent (idempotent on their ids).

    Called by the API before it starts the workflow (so usage is accepted at
    once) and by the workflow's first activity (so a workflow started any
    other way is registered too).
    """
    t = req.terms
    await conn.execute(
        text("INSERT INTO customers (id, name) VALUES (:id, :name) ON CONFLICT (id) DO NOTHING"),
        {"id": t.customer.id, "name": t.customer.name},
    )
    created = await conn.scalar(
        text(
            """
            INSERT INTO contracts (id, customer_id, plan_key, catalog_version, currency,
                starts_on, term_end, status, terms_digest, document, terms)
            VALUES (:id, :cust, :plan, :ver, :cur, :starts, :end, 'scheduled', :digest,
                CAST(:doc AS jsonb), CAST(:terms AS jsonb))
            ON CONFLICT (id) DO NOTHING RETURNING id
            """
        ),
        {
            "id": t.contract_id,
            "cust": t.customer.id,
            "plan": t.plan_key,
            "ver": req.catalog_version,
            "cur": t.currency,
            "starts": t.starts_on,
            "end": t.term_end,
            "digest": req.terms_digest,
            "doc": req.contract.model_dump_json(),
            "terms": t.model_dump_json(),
        },
    )
    if created is not None:
        await emit_contract_event(conn, EventType.CONTRACT_CREATED, t.contract_id)
    periods = billing_periods(t.starts_on, t.term_end, t.billing_cycle, t.billing_anchor,
                              t.timezone, cycle_anchor=t.cycle_anchor)
    if periods:
        await open_draft(conn, t, periods[0])


@dataclass(frozen=True)
class ComputedInvoice:
    """A period's usage invoice as it would be finalized now (nothing written)."""

    document: InvoiceDocument | None  # None when held for attention
    attention: str | None
    watermark: int
    credits_before: CreditState
    state: CreditState  # credits after this invoice drew them down
    application: CreditApplication | None
    expired_before: bool
    # Spend against the minimum commitment in force (SPEC 12); None without one.
    commitment: CommitmentProgress | None = None
    # Groups of earlier periods whose non-additive figure fell (credited at close).
    falls: tuple[LateFall, ...] = ()


async def compute_usage_invoice(
    conn: AsyncConnection, terms: ContractTerms, period: Period,
    earlier_periods: Sequence[Period], issued_on: date | None, *, is_final: bool = False,
) -> ComputedInvoice:
    """Rate the period (and late usage), apply spend limits, price fees, apply
    credits, true up a minimum commitment (``is_final``: the term's last
    invoice): pure math on what the database holds now. Finalizing stores it;
    a draft preview shows it."""
    cid = terms.contract_id
    raw = await _asyncpg(conn)
    watermark = await read_watermark(raw)
    previous = await conn.scalar(
        text(
            "SELECT max(usage_watermark) FROM invoices "
            "WHERE contract_id = :cid AND kind = 'usage' AND number IS NOT NULL"
        ),
        {"cid": cid},
    )
    rating = rate_period(terms, period, await _usage_parts(raw, terms, period, watermark))
    falls: list[LateFall] = []
    late_lines, late_unpriced = await _late_lines(
        conn, raw, terms, earlier_periods, previous, watermark, falls
    )
    credits_before = await load_credit_state(conn, cid)
    unpriced = [*rating.unpriced, *late_unpriced]
    if unpriced:
        reason = "unpriced usage: " + "; ".join(
            f"{u.meter} {json.dumps(u.dimensions, sort_keys=True)} ({u.quantity})"
            for u in unpriced
        )
        return ComputedInvoice(None, reason, watermark, credits_before, credits_before,
                               None, False)
    # Usage-kind lines (SPEC 12): the period's, each limited meter's minimum or
    # maximum after its lines, then late usage with its limit adjustments.
    usage_lines: list[Line] = [*with_limit_lines(terms, period, rating.lines), *late_lines]
    state, expired = credits_before.expire(period.end - _JUST_BEFORE)
    usage_amount = sum((ln.amount for ln in usage_lines), Decimal(0))
    state, application = state.apply(usage_amount, period.end)
    # The term's spend so far is read only under a minimum commitment (issue 13).
    spent = (await term_spend(conn, cid) if terms.minimum_commitment_at(period.start)
             else Decimal(0))
    progress = commitment_progress(terms, period, usage_amount, spent, is_final=is_final)
    doc = build_invoice(
        key=invoice_key_usage(period.start_date),
        kind=InvoiceKind.USAGE,
        currency=terms.currency,
        period=InvoicePeriod(start=period.start_date, end=period.end_date),
        lines=[*usage_lines, *fee_lines(terms, period), *true_up_lines(progress)],
        credits_applied=application.applied_total,
        issued_on=issued_on,
        status=InvoiceStatus.DRAFT,
    )
    return ComputedInvoice(doc, None, watermark, credits_before, state, application,
                           bool(expired), progress, tuple(falls))


async def open_draft(conn: AsyncConnection, terms: ContractTerms, period: Period) -> None:
    """The draft invoice of a period that has just opened (idempotent).

    A draft has no number and no lines of its own: until it is finalized its
    content is whatever `compute_usage_invoice` says now (see the API's draft
    preview), so it never goes stale.
    """
    await conn.execute(
        text(
            """
            INSERT INTO invoices (contract_id, key, kind, status, currency, period_start,
                period_end, subtotal, credits_applied, total, amount_paid)
            VALUES (:cid, :key, 'usage', 'draft', :cur, :ps, :pe, 0, 0, 0, 0)
            ON CONFLICT (contract_id, key) DO NOTHING
            """
        ),
        {"cid": terms.contract_id, "key": invoice_key_usage(period.start_date),
         "cur": terms.currency, "ps": period.start_date, "pe": period.end_date},
    )


async def save_contract_row(conn: AsyncConnection, req: UpdateContractRequest) -> None:
    """The contract's status and terms in force, for queries after it ends.

    A change of status is an event (contract.activated, .needs_attention,
    .ended), written here, where the status changes: a retry finds the status
    already saved and writes none.
    """
    before = await conn.scalar(
        text("SELECT status FROM contracts WHERE id = :id FOR UPDATE"), {"id": req.contract_id}
    )
    await conn.execute(
        text(
            "UPDATE contracts SET status = :status, terms = CAST(:terms AS jsonb), "
            "term_end = :end, updated_at = now() WHERE id = :id"
        ),
        {
            "status": req.status.value,
            "terms": req.terms.model_dump_json(),
            "end": req.terms.term_end,
            "id": req.contract_id,
        },
    )
    event = _status_event(before, req.status.value)
    if event is not None:
        await emit_contract_event(conn, event, req.contract_id)


def _status_event(before: str | None, after: str) -> EventType | None:
    if before is None or before == after:
        return None
    if after == "active" and before == "scheduled":
        return EventType.CONTRACT_ACTIVATED
    if after == "needs_attention":
        return EventType.CONTRACT_NEEDS_ATTENTION
    if after in ("ended", "terminated"):
        return EventType.CONTRACT_ENDED
    return None


async def record_payment_in(conn: AsyncConnection, req: PaymentRequest) -> PaymentResult:
    """Record a payment inside the caller's transaction, idempotent on its id.

    The id (``payment_key``) is scoped to the contract (SPEC 10). Sending it
    again with the same invoice and amount records nothing and answers what
    the first call answered (stored with the payment); with another invoice
    or amount it is a conflict (`PaymentConflict`, non-retryable; the API's
    409) naming the differing field, and nothing changes.
    """
    row = (
        await conn.execute(
            text("SELECT * FROM invoices WHERE contract_id = :cid AND key = :key FOR UPDATE"),
            {"cid": req.contract_id, "key": req.invoice_key},
        )
    ).one_or_none()
    if row is None:
        raise LookupError(f"invoice {req.invoice_key!r} of contract {req.contract_id!r} not found")
    inserted = await conn.scalar(
        text(
            """
            INSERT INTO payments (payment_key, contract_id, invoice_id, amount, received_on,
                method, gateway_ref)
            VALUES (:key, :cid, :iid, :amount, :on, :method, :ref)
            ON CONFLICT (contract_id, payment_key) DO NOTHING RETURNING id
            """
        ),
        {
            "key": req.payment_key,
            "cid": req.contract_id,
            "iid": row.id,
            "amount": req.amount,
            "on": req.received_on,
            "method": req.method,
            "ref": req.gateway_ref,
        },
    )
    if inserted is None:
        return await _payment_resent(conn, req)
    # What credit notes took off the amount owed is not owed (SPEC.md section 11).
    outstanding = row.total - row.amount_paid - row.credit_allocated
    if row.status in ("paid", "void", "draft", "needs_attention") or req.amount > outstanding:
        # The insert above is rolled back with the caller's transaction.
        raise ApplicationError(
            f"amount: {req.amount} exceeds what {req.invoice_key} still owes ({outstanding}, "
            f"status {row.status})",
            type="PaymentRejected",
            non_retryable=True,
        )
    paid = row.amount_paid + req.amount
    settled = paid + row.credit_allocated >= row.total
    updated = (
        await conn.execute(
            text(
                """
                UPDATE invoices SET amount_paid = :paid,
                    status = CASE WHEN :settled THEN 'paid' ELSE status END,
                    paid_on = CASE WHEN :settled THEN CAST(:on AS date) ELSE paid_on END
                WHERE id = :id RETURNING *
                """
            ),
            {"paid": paid, "settled": settled, "on": req.received_on, "id": row.id},
        )
    ).one()
    await conn.execute(
        text(
            "UPDATE payments SET result_status = :status, result_amount_paid = :paid, "
            "result_paid_on = :paid_on WHERE id = :id"
        ),
        {"status": updated.status, "paid": updated.amount_paid, "paid_on": updated.paid_on,
         "id": inserted},
    )
    await post_journal(
        conn,
        req.contract_id,
        [payment_received(f"payment:{req.payment_key}", req.amount)],
        req.received_on,
        req.invoice_key,
    )
    await emit_event(conn, EventType.PAYMENT_RECORDED, req.contract_id, {
        "payment_id": req.payment_key, "contract_id": req.contract_id,
        "invoice_number": updated.number, "invoice_key": updated.key, "amount": req.amount,
        "currency": updated.currency, "received_on": req.received_on, "method": req.method,
        "invoice_status": updated.status, "invoice_amount_paid": updated.amount_paid,
    })
    if settled:
        await emit_invoice_event(conn, EventType.INVOICE_PAID, req.contract_id, updated.key)
    return PaymentResult(
        invoice_key=updated.key,
        status=updated.status,
        amount_paid=updated.amount_paid,
        paid_on=updated.paid_on,
        applied=True,
    )


async def _payment_resent(conn: AsyncConnection, req: PaymentRequest) -> PaymentResult:
    """The answer to a payment id this contract has recorded already: the first
    call's answer if the content is the same, else a `PaymentConflict`."""
    stored = (
        await conn.execute(
            text(
                """
                SELECT p.amount, p.result_status, p.result_amount_paid, p.result_paid_on,
                       i.key AS invoice_key, i.status, i.amount_paid, i.paid_on
                FROM payments p JOIN invoices i ON i.id = p.invoice_id
                WHERE p.contract_id = :cid AND p.payment_key = :key
                """
            ),
            {"cid": req.contract_id, "key": req.payment_key},
        )
    ).one()
    differing = [
        f"{field}: {theirs} (payment {req.payment_key!r} was recorded with {ours})"
        for field, ours, theirs in (
            ("invoice", stored.invoice_key, req.invoice_key),
            ("amount", stored.amount, req.amount),
        )
        if ours != theirs  # Decimal compares by value: 100 == 100.00
    ]
    if differing:
        raise ApplicationError(
            "; ".join(differing),
            {"fields": [d.split(":", 1)[0] for d in differing]},
            type="PaymentConflict",
            non_retryable=True,
        )
    if stored.result_status is None:  # recorded before results were stored
        return PaymentResult(invoice_key=stored.invoice_key, status=stored.status,
                             amount_paid=stored.amount_paid, paid_on=stored.paid_on, applied=True)
    return PaymentResult(
        invoice_key=stored.invoice_key,
        status=stored.result_status,
        amount_paid=stored.result_amount_paid,
        paid_on=stored.result_paid_on,
        applied=True,
    )


# --- helpers ---------------------------------------------------------------------


async def _asyncpg(conn: AsyncConnection) -> Any:
    """The asyncpg connection under SQLAlchemy's, in the same transaction."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _meter_specs(terms: ContractTerms, period: Period) -> list[MeterSpec]:
    return [MeterSpec.of(m, split_points(terms, period, m.key)) for m in terms.meters]


def _parts(rows: Sequence[Any]) -> list[UsagePart]:
    by_window: dict[tuple[Any, Any], list[UsageAggregate]] = {}
    for r in rows:
        by_window.setdefault((r.part_start, r.part_end), []).append(
            UsageAggregate(
                meter=r.meter, dimensions=r.dimensions, quantity=r.quantity, first_seen=r.first_seen
            )
        )
    return [UsagePart(start=s, end=e, aggregates=a) for (s, e), a in by_window.items()]


async def _usage_parts(
    raw: Any, terms: ContractTerms, period: Period, watermark: int
) -> list[UsagePart]:
    rows = await aggregate_usage(
        raw,
        customer_id=terms.customer.id,
        meters=_meter_specs(terms, period),
        start=period.start,
        end=period.end,
        watermark=watermark,
    )
    return _parts(rows)


async def _late_lines(
    conn: AsyncConnection,
    raw: Any,
    terms: ContractTerms,
    earlier: Sequence[Period],
    previous_watermark: int | None,
    watermark: int,
    falls: list[LateFall] | None = None,
) -> tuple[list[Line], list[UnpricedGroup]]:
    """Events that arrived after their period's invoice: rated at the prices in
    force at their own time, billed once (watermarks never overlap). Late
    usage without a price is returned too: it holds the invoice like any.
    For max/unique_count/latest meters the late quantity is the rise of the
    period's figure over what was billed (`activities.late_usage`); a fall is
    appended to ``falls`` (the close credits it)."""
    if not earlier or previous_watermark is None:
        return [], []
    # Additive meters: the late events' own aggregate is the delta. The
    # others (max, unique_count, latest) re-rate the period (late_usage.py).
    additive = [m for m in terms.meters if str(m.aggregation) in ("sum", "count")]
    by_period: dict[int, list[Any]] = {}
    if additive:
        for row in await late_rows(raw, terms, additive, earlier, previous_watermark, watermark):
            by_period.setdefault(row.period_index, []).append(row)
    others, found = await non_additive_late_rows(
        conn, raw, terms, earlier, previous_watermark, watermark
    )
    if falls is not None:  # a fall is credited by the close that finds it
        falls.extend(found)
    for index, extra in others.items():
        by_period.setdefault(index, []).extend(extra)
    lines: list[Line] = []
    unpriced: list[UnpricedGroup] = []
    for index, period_rows in sorted(by_period.items()):
        period = earlier[index]
        billed = await billed_groups(conn, terms, period)
        result = rate_period(terms, period, _parts(period_rows), late=True, billed=billed)
        late = [ln for ln in result.lines if isinstance(ln, LateUsageLine)]
        # The period's spend limits hold for its late usage too (SPEC 12).
        lines += late_limit_lines(terms, period, late,
                                  await billed_meters(conn, terms.contract_id, period))
        unpriced += result.unpriced
    return lines, unpriced


async def _hold(
    conn: AsyncConnection, cid: str, key: str, terms: ContractTerms, period: Period, reason: str
) -> IssuedInvoice:
    """Keep (or refresh) the period's invoice as needs_attention, without a number."""
    row = (
        await conn.execute(
            text(
                """
                INSERT INTO invoices (contract_id, key, kind, status, currency, period_start,
                    period_end, subtotal, credits_applied, total, amount_paid, attention_reason)
                VALUES (:cid, :key, 'usage', 'needs_attention', :cur, :ps, :pe, 0, 0, 0, 0, :why)
                ON CONFLICT (contract_id, key) DO UPDATE
                    SET attention_reason = EXCLUDED.attention_reason, status = EXCLUDED.status,
                        period_end = EXCLUDED.period_end
                WHERE invoices.number IS NULL
                RETURNING *
                """
            ),
            {
                "cid": cid,
                "key": key,
                "cur": terms.currency,
                "ps": period.start_date,
                "pe": period.end_date,
                "why": reason,
            },
        )
    ).one()
    return issued_from_row(row)


async def store_finalized(
    conn: AsyncConnection,
    cid: str,
    doc: InvoiceDocument,
    issued_on: date,
    due_on: date,
    *,
    watermark: int | None = None,
) -> int:
    """Insert (or finalize a held or draft) invoice with its lines, without a number yet.

    Returns its id; the caller numbers it with `next_invoice_number` as the
    last statement of the same transaction, so nothing outside sees it
    unnumbered and the series lock is not held while the close does its work.
    """
    status = "paid" if doc.total == 0 else "open"
    row = (
        await conn.execute(
            text(
                """
                INSERT INTO invoices (contract_id, key, number, kind, status, currency,
                    period_start, period_end, issued_on, due_on, subtotal, credits_applied,
                    total, amount_paid, paid_on, usage_watermark, finalized_at)
                VALUES (:cid, :key, NULL, :kind, :status, :cur, :ps, :pe, :issued, :due,
                    :sub, :cred, :total, 0, :paid_on, :wm, now())
                ON CONFLICT (contract_id, key) DO UPDATE SET
                    status = EXCLUDED.status,
                    -- a draft opened before a termination shortened its period
                    period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
                    issued_on = EXCLUDED.issued_on, due_on = EXCLUDED.due_on,
                    subtotal = EXCLUDED.subtotal, credits_applied = EXCLUDED.credits_applied,
                    total = EXCLUDED.total, paid_on = EXCLUDED.paid_on,
                    usage_watermark = EXCLUDED.usage_watermark, attention_reason = NULL,
                    finalized_at = now()
                WHERE invoices.number IS NULL
                RETURNING *
                """
            ),
            {
                "cid": cid,
                "key": doc.key,
                "kind": doc.kind.value,
                "status": status,
                "cur": doc.currency,
                "ps": doc.period.start,
                "pe": doc.period.end,
                "issued": issued_on,
                "due": due_on,
                "sub": doc.subtotal,
                "cred": doc.credits_applied,
                "total": doc.total,
                "paid_on": issued_on if status == "paid" else None,
                "wm": watermark,
            },
        )
    ).one()
    await conn.execute(text("DELETE FROM invoice_lines WHERE invoice_id = :id"), {"id": row.id})
    if not doc.lines:  # a period with no usage and no fees: a zero invoice, no lines
        return int(row.id)
    await conn.execute(
        text(
            """
            INSERT INTO invoice_lines (invoice_id, position, kind, meter, fee, dimensions,
                quantity, unit_price, amount, line_period_start, line_period_end, document)
            VALUES (:iid, :pos, :kind, :meter, :fee, CAST(:dims AS jsonb), :q, :up, :amount,
                :lps, :lpe, CAST(:doc AS jsonb))
            """
        ),
        [_line_params(row.id, i, ln) for i, ln in enumerate(doc.lines)],
    )
    return int(row.id)


def _line_params(invoice_id: int, position: int, ln: Line) -> dict[str, Any]:
    meter = getattr(ln, "meter", None)
    dims = getattr(ln, "dimensions", None)
    return {
        "iid": invoice_id,
        "pos": position,
        "kind": ln.kind,
        "meter": meter,
        "fee": getattr(ln, "fee", None),
        "dims": None if dims is None else json.dumps(dims),
        "q": getattr(ln, "quantity", None),
        "up": getattr(ln, "unit_price", None),
        "amount": ln.amount,
        "lps": getattr(ln, "period_start", None),
        "lpe": getattr(ln, "period_end", None),
        "doc": ln.model_dump_json(),
    }


async def write_expiries_and_breakage(
    conn: AsyncConnection, cid: str, state: CreditState, booked_on: date
) -> None:
    """Ledger expiry rows for newly expired credits and breakage for their deferred revenue.

    ``state`` is the credit state after expiring; only what the ledger has not
    recorded as expired yet is written, so a grant can expire again after a
    correction returned credits to it (SPEC.md section 11), and repeating the
    call writes nothing.
    """
    written = {
        r.grant_id: (r.expired, r.n)
        for r in (
            await conn.execute(
                text(
                    "SELECT grant_id, coalesce(sum(-amount), 0) AS expired, count(*) AS n "
                    "FROM credit_ledger WHERE contract_id = :cid AND kind = 'expire' "
                    "GROUP BY grant_id"
                ),
                {"cid": cid},
            )
        ).all()
    }
    journal = await load_journal(conn, cid)
    recognized = recognized_by_grant(journal)
    expired: list[dict[str, Any]] = []
    keys = {e.key for e in journal}
    for grant, balance in zip(state.grants, state.balances, strict=True):
        done, n = written.get(grant.id, (Decimal(0), 0))
        delta = balance.expired - done
        if delta <= 0:
            continue
        if not await insert_ledger_entry(
            conn,
            entry_key=f"expire:{cid}:{grant.id}" if n == 0 else f"expire:{cid}:{grant.id}:{n + 1}",
            contract_id=cid,
            grant_id=grant.id,
            kind="expire",
            amount=-delta,
            invoice_key=None,
        ):
            continue  # written by an earlier call: its breakage and event too
        entry = breakage(grant, recognized.get(grant.id, Decimal(0)))
        if entry is not None:
            if entry.key in keys:  # the grant expired before: this is breakage again
                entry = entry.model_copy(update={"key": f"{entry.key}:{n + 1}"})
            await post_journal(conn, cid, [entry], booked_on)
        expired.append({"grant_id": grant.id, "credits": delta,
                        "breakage": entry.amount if entry is not None else Decimal(0)})
    if expired:
        await emit_event(conn, EventType.CREDITS_EXPIRED, cid, {
            "contract_id": cid, "on": booked_on, "grants": expired,
            "balance": state.summary().balance})


async def _finalized_events(conn: AsyncConnection, cid: str, key: str) -> list[int]:
    """invoice.finalized (and invoice.paid for one paid at issue: a zero total),
    written before the number, which `next_invoice_number` fills in."""
    data = await invoice_detail_json(conn, cid, key)
    if data is None:
        raise LookupError(f"invoice {key!r} of contract {cid!r} not found")
    events = [await emit_event(conn, EventType.INVOICE_FINALIZED, cid, data)]
    if data["status"] == "paid":  # the same invoice, read once for both (issue 13)
        events.append(await emit_event(conn, EventType.INVOICE_PAID, cid, data))
    return events


async def _credits_low(conn: AsyncConnection, terms: ContractTerms, before: CreditState,
                       after: CreditState, invoice_key: str) -> None:
    """credits.low when this invoice took the balance below the contract's threshold."""
    threshold = terms.low_balance_threshold
    if threshold is None:
        return
    was, now = before.summary(), after.summary()
    if crossed_low_balance(threshold, now.granted, was.balance, now.balance):
        await emit_event(conn, EventType.CREDITS_LOW, terms.contract_id, {
            "contract_id": terms.contract_id, "balance": now.balance, "granted": now.granted,
            "threshold": threshold, "invoice_key": invoice_key, "currency": terms.currency})
