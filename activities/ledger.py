"""Ledger activities: the contract workflow's side effects on PostgreSQL.

Every activity runs in one transaction, takes the contract's row lock first
(so two attempts of the same step serialise), and is idempotent on a business
key enforced by a unique constraint: running one twice has one effect, and the
second run returns what the first wrote. Billing math is delegated to the pure
``models`` package; this module only loads, calls and stores.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity

from activities import metrics
from activities.breakage import write_expiries_and_breakage
from activities.contract_overlap import overlapping_contract
from activities.contract_rows import register_contract_rows, save_contract_row
from activities.errors import BusinessError, business_errors
from activities.events import emit_contract_event, emit_invoice_event
from activities.invoice_store import (
    credits_low,
    finalized_events,
    hold_invoice,
    open_draft,
    store_finalized,
)
from activities.invoiced_periods import backfill
from activities.ledger_store import (
    find_invoice,
    insert_ledger_entry,
    load_credit_state,
    load_journal,
    lock_contract,
    next_invoice_number,
    post_journal,
)
from activities.payment_record import record_payment_in
from activities.spend import limit_lines_of, progress_of
from activities.usage_invoice import compute_usage_invoice
from models.credits import CreditSummary
from models.events import EventType
from models.invoices import (
    CommitmentLine,
    InvoiceKind,
    InvoicePeriod,
    Line,
    MaximumLine,
    MinimumLine,
    TopUpLine,
    build_invoice,
    invoice_key_usage,
)
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
    PaymentRequest,
    PaymentResult,
    RecordAmendmentRequest,
    RegisterContractRequest,
    ReserveTermRequest,
    UpdateContractRequest,
)
from models.revenue import (
    commitment_invoiced,
    recognized_by_grant,
    top_up_invoiced,
    usage_invoiced,
)


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
                events = await finalized_events(conn, req.contract_id, req.invoice_key)
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
                if req.earlier_periods is not None:  # an attempt before 0010 stored it
                    await backfill(conn, cid, [*req.earlier_periods, period])
                state = await load_credit_state(conn, cid)
                progress = await progress_of(conn, terms, period, key, req.is_final)
                from activities.auto_credit import credits_made_by

                made = await credits_made_by(conn, req, key)
                return ClosePeriodResult(invoice=existing, attention=None,
                                         credits=state.summary(), commitment=progress,
                                         limit_lines=await limit_lines_of(conn, cid, key),
                                         credited=[i for o in made for i in o.invoices],
                                         refunds=[o.refund for o in made
                                                  if o.refund is not None],
                                         periods_in_ledger=True)
            computed = await compute_usage_invoice(
                conn, terms, period, req.earlier_periods, req.issued_on, is_final=req.is_final
            )
            if computed.attention is not None:
                held = await hold_invoice(conn, cid, key, terms, period, computed.attention)
                metrics.invoice_held()
                return ClosePeriodResult(
                    invoice=held, attention=computed.attention,
                    credits=computed.credits_before.summary(),
                )
            assert computed.document is not None and computed.application is not None
            doc, application, state = computed.document, computed.application, computed.state
            invoice_id = await store_finalized(
                conn, cid, doc, req.issued_on, req.due_on, watermark=computed.watermark,
                full_period=(period.full_start_date, period.full_end_date),
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
                                               list(computed.earlier))
                state = await load_credit_state(conn, cid)
            await credits_low(conn, terms, computed.credits_before, state, key)
            events = await finalized_events(conn, cid, key)
            # The number is the transaction's last statement: the series lock
            # it takes is held only until the COMMIT that follows (issue 13).
            issued = await next_invoice_number(conn, invoice_id, events=events)
        metrics.invoice_finalized(issued)
        return ClosePeriodResult(
            invoice=issued, attention=None, credits=state.summary(),
            commitment=computed.commitment,
            limit_lines=[ln for ln in doc.lines if isinstance(ln, MinimumLine | MaximumLine)],
            credited=[i for o in corrected for i in o.invoices],
            refunds=[o.refund for o in corrected if o.refund is not None],
            periods_in_ledger=True)

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
