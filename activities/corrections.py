"""Corrections in the ledger: void, reissue and credit notes (SPEC.md section 11).

`apply_correction` is the one transaction function of a correction, whoever
sends it: the contract workflow's ``correct`` update (through the
`CorrectionActivities.correct_invoice` local activity) while the workflow
runs, the API directly after it has completed. It takes the contract's row
lock, is idempotent on the correction id (one id space for void, reissue and
credit per contract: the same id with other content is a `CorrectionConflict`),
and writes everything a correction moves in that one transaction, so an
outbox row (``invoice.voided``, ``credit_note.issued``) can be added in it.

Refusals are non-retryable ``ApplicationError``s whose details list
``{field, reason}``; their type says how the API answers:
``InvoiceState`` (the invoice's status forbids it: 409), ``InvalidCorrection``
(the request does not fit the invoice: 422), ``CorrectionConflict`` (409),
``NotFound`` (404). Nothing is written when one is raised.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.breakage import write_expiries_and_breakage
from activities.correction_store import (
    credit_note_rows,
    credit_note_view,
    invoice_consumption,
    invoice_journal,
    invoice_lines_for_credit,
    number_credit_note,
)
from activities.errors import business_errors
from activities.events import emit_event, emit_invoice_event
from activities.ledger_store import (
    insert_ledger_entry,
    issued_from_row,
    load_credit_state,
    load_journal,
    next_invoice_number,
    post_journal,
)
from activities.reissue import reissue_invoice
from models.corrections import (
    CUSTOMER_CREDIT_GRANT_PREFIX,
    CorrectCredit,
    CorrectionOutcome,
    CorrectionRequest,
    CorrectionResult,
    CorrectReissue,
    CorrectVoid,
    RefundRequest,
    correction_digest,
)
from models.credit_notes import (
    GRANT_KINDS,
    CreditNotePlan,
    InvoiceForCredit,
    credit_note_entry,
    credits_removed,
    plan_credit_note,
    return_to_grants,
    reversed_recognition,
)
from models.errors import BillowValidationError
from models.events import EventType
from models.operations import ActivityName, IssuedInvoice
from models.revenue import EntryKind, deferred_by_grant, recognized_by_grant, reversal

__all__ = ["CorrectionActivities", "apply_correction", "refusal"]

# What issuing an invoice posts (a void reverses exactly these).
_ISSUE_KINDS = frozenset({
    EntryKind.USAGE_FROM_CREDITS, EntryKind.USAGE_BILLED, EntryKind.FEES,
    EntryKind.COMMITMENT_INVOICED, EntryKind.TOP_UP_INVOICED,
})


def refusal(kind: str, problems: Iterable[tuple[str, str]]) -> ApplicationError:
    """A business refusal naming its fields (non-retryable: it never passes)."""
    items = list(problems)
    message = "; ".join(f"{f}: {r}" if f else r for f, r in items)
    return ApplicationError(message, [{"field": f, "reason": r} for f, r in items],
                            type=kind, non_retryable=True)


class CorrectionActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @activity.defn(name=ActivityName.CORRECT_INVOICE.value)
    @business_errors
    async def correct_invoice(self, req: CorrectionRequest) -> CorrectionOutcome:
        async with self.engine.begin() as conn:
            return await apply_correction(conn, req)


async def apply_correction(
    conn: AsyncConnection, req: CorrectionRequest,
    automatic: Mapping[int, Decimal] | None = None,
) -> CorrectionOutcome:
    """Apply one correction in the caller's transaction (idempotent on its id).

    ``automatic``: the note is billow's own, for a fall in late usage; per
    credited line (1-based), the quantity it takes back.
    """
    c = req.correction
    cid = req.contract_id
    found = await conn.scalar(
        text("SELECT id FROM contracts WHERE id = :id FOR UPDATE"), {"id": cid})
    if found is None:
        raise refusal("NotFound", [("contract", f"contract {cid!r} is not registered")])
    digest = correction_digest(c)
    prior = (
        await conn.execute(
            text("SELECT digest, result FROM corrections "
                 "WHERE contract_id = :cid AND correction_id = :id"),
            {"cid": cid, "id": c.id},
        )
    ).one_or_none()
    if prior is not None:
        if prior.digest != digest:
            raise refusal("CorrectionConflict", [(
                "id", f"correction {c.id!r} was sent before with other content")])
        return await answer_of(conn, req, prior.result, duplicate=True)
    row = (
        await conn.execute(
            text("SELECT * FROM invoices WHERE contract_id = :cid AND key = :key FOR UPDATE"),
            {"cid": cid, "key": c.invoice},
        )
    ).one_or_none()
    if row is None or row.number is None:
        raise refusal("NotFound", [("invoice", f"no finalized invoice {c.invoice!r} "
                                               f"on contract {cid!r}")])
    stored: dict[str, Any] = {}
    to_number: int | None = None
    if isinstance(c, CorrectCredit):
        stored["note_id"] = await _credit(conn, req, c, row, automatic)
    else:
        if isinstance(c, CorrectVoid):
            await _void(conn, req, row)
        elif row.status != "void":
            raise refusal("InvoiceState", [("invoice", f"{row.key} is {row.status}: only a "
                                                       "void usage invoice is reissued")])
        if isinstance(c, CorrectReissue) or c.reissue:
            if row.kind != "usage":
                raise refusal("InvalidCorrection", [(
                    "reissue", f"{row.key} is a {row.kind} invoice: only usage invoices "
                               "are reissued")])
            to_number, stored["reissued_key"] = await reissue_invoice(conn, req, row)
    await conn.execute(
        text(
            """
            INSERT INTO corrections (contract_id, correction_id, kind, invoice_key, digest,
                document, result)
            VALUES (:cid, :id, :kind, :key, :digest, CAST(:doc AS jsonb), CAST(:res AS jsonb))
            """
        ),
        {"cid": cid, "id": c.id, "kind": c.kind, "key": c.invoice, "digest": digest,
         "doc": c.model_dump_json(), "res": json.dumps(stored)},
    )
    # Events in the same transaction (SPEC.md section 13). The reissue's
    # invoice.finalized is written before its number, which the numbering
    # statement fills in; a credit note's event after its own number.
    if isinstance(c, CorrectVoid):
        await emit_invoice_event(conn, EventType.INVOICE_VOIDED, cid, c.invoice)
    finalized = ([await emit_invoice_event(conn, EventType.INVOICE_FINALIZED, cid,
                                           stored["reissued_key"])]
                 if to_number is not None else [])
    # Numbers last: the series lock is then held only until COMMIT.
    if "note_id" in stored:
        await number_credit_note(conn, stored["note_id"])
        note_rows = await credit_note_rows(conn, note_id=int(stored["note_id"]))
        note = await credit_note_view(conn, note_rows[0])
        await emit_event(conn, EventType.CREDIT_NOTE_ISSUED, cid, note.model_dump(mode="json"))
    if to_number is not None:
        await next_invoice_number(conn, to_number, events=finalized)
    return await answer_of(conn, req, stored, duplicate=False)


async def answer_of(conn: AsyncConnection, req: CorrectionRequest, stored: dict[str, Any],
                    *, duplicate: bool) -> CorrectionOutcome:
    """The correction's answer read back from the rows it wrote."""
    cid, c = req.contract_id, req.correction
    changed: list[IssuedInvoice] = []
    row = (await conn.execute(
        text("SELECT * FROM invoices WHERE contract_id = :cid AND key = :key"),
        {"cid": cid, "key": c.invoice})).one()
    changed.append(issued_from_row(row))
    note = None
    refund = None
    if stored.get("note_id") is not None:
        note_rows = await credit_note_rows(conn, note_id=int(stored["note_id"]))
        note = await credit_note_view(conn, note_rows[0])
        if note.refund is not None and note.refund.status == "pending":
            refund = RefundRequest(
                contract_id=cid, customer_id=req.terms.customer.id,
                refund_key=note.refund.refund_key, amount=note.refund.amount,
                currency=note.currency, on=req.on,
            )
    reissued = None
    if stored.get("reissued_key") is not None:
        re_row = (await conn.execute(
            text("SELECT * FROM invoices WHERE contract_id = :cid AND key = :key"),
            {"cid": cid, "key": stored["reissued_key"]})).one()
        reissued = issued_from_row(re_row)
        changed.append(reissued)
    credits = (await load_credit_state(conn, cid)).summary()
    result = CorrectionResult(
        correction_id=c.id, kind=c.kind, invoice=row.key, invoice_number=row.number,
        invoice_status=row.status, credit_note=note, reissued=reissued,
    )
    return CorrectionOutcome(result=result, invoices=changed, credits=credits, refund=refund,
                             duplicate=duplicate)


# --- void ------------------------------------------------------------------------------


async def _void(conn: AsyncConnection, req: CorrectionRequest, row: Any) -> None:
    """One entry reverses what the invoice posted; consumed credits go back to
    their grants; a commitment or top-up's unused credits leave ``granted``."""
    cid, key, c = req.contract_id, row.key, req.correction
    if row.status not in ("open", "overdue"):
        hint = " (credit it instead)" if row.status == "paid" else ""
        raise refusal("InvoiceState", [("invoice", f"{key} is {row.status}: only an open or "
                                                   f"overdue invoice can be voided{hint}")])
    if row.amount_paid > 0:
        raise refusal("InvoiceState", [("invoice", f"{key} has {row.amount_paid} paid on it: "
                                                   "credit it instead")])
    if row.credited > 0:
        raise refusal("InvoiceState", [("invoice", f"{key} has credit notes "
                                                   f"({row.credited}): credit the rest instead")])
    returned: list[str] = []
    if row.kind in GRANT_KINDS:
        await _revoke_unused(conn, req, key)
    else:
        for used in await invoice_consumption(conn, cid, key):
            if used.unreturned <= 0:
                continue
            await insert_ledger_entry(
                conn, entry_key=f"return:{cid}:{c.id}:{used.grant_id}", contract_id=cid,
                grant_id=used.grant_id, kind="return", amount=used.unreturned, invoice_key=key)
            returned.append(used.grant_id)
    issued = [e for e in await invoice_journal(conn, cid, key) if e.kind in _ISSUE_KINDS]
    entry = reversal(f"void:{key}", issued)
    if entry is not None:
        await post_journal(conn, cid, [entry], req.on, key)
    await _expire_returned(conn, req, returned)
    await conn.execute(
        text("UPDATE invoices SET status = 'void', voided_on = :on WHERE id = :id"),
        {"on": req.on, "id": row.id},
    )


async def _grant_of(conn: AsyncConnection, cid: str, key: str) -> str:
    gid = await conn.scalar(
        text("SELECT grant_id FROM credit_grants WHERE contract_id = :cid AND invoice_key = :key"),
        {"cid": cid, "key": key},
    )
    if gid is None:
        raise LookupError(f"no grant is paid for by {key!r}")
    return str(gid)


async def _revoke_unused(conn: AsyncConnection, req: CorrectionRequest, key: str) -> None:
    cid = req.contract_id
    gid = await _grant_of(conn, cid, key)
    state = await load_credit_state(conn, cid)
    try:
        grant, balance = state.get(gid)
    except KeyError:
        raise refusal("InvoiceState", [("invoice", f"the credits of {key} are gone")]) from None
    if balance.consumed > 0:
        raise refusal("InvoiceState", [("invoice", f"{balance.consumed} of the "
                                                   f"{balance.granted} credits of {key} were "
                                                   "used: credit it instead")])
    if balance.expired > 0:
        raise refusal("InvoiceState", [("invoice", f"the credits of {key} have expired "
                                                   "(breakage): credit it instead")])
    await insert_ledger_entry(
        conn, entry_key=f"revoke:{cid}:{req.correction.id}:{gid}", contract_id=cid,
        grant_id=gid, kind="revoke", amount=-balance.remaining, invoice_key=key,
        price_amount=grant.price)


async def _expire_returned(conn: AsyncConnection, req: CorrectionRequest,
                           grant_ids: Sequence[str]) -> None:
    """Credits returned to a grant that has expired meanwhile expire again at
    once, as breakage (SPEC.md section 11)."""
    if not grant_ids:
        return
    state = await load_credit_state(conn, req.contract_id)
    expired = {
        g.id for g, b in zip(state.grants, state.balances, strict=True)
        if g.id in grant_ids and b.remaining > 0
        and (req.term_closed or g.expires <= req.at or b.expired > 0)
    }
    if expired:
        await write_expiries_and_breakage(conn, req.contract_id, state.expire_grants(expired),
                                          req.on)


# --- credit notes ----------------------------------------------------------------------


async def _credit(conn: AsyncConnection, req: CorrectionRequest, c: CorrectCredit,
                  row: Any, automatic: Mapping[int, Decimal] | None = None) -> int:
    """Issue a credit note (unnumbered; the caller numbers it last). Returns its id."""
    cid, key = req.contract_id, row.key
    if row.status == "void":
        raise refusal("InvoiceState", [("invoice", f"{key} is void: a void invoice is not "
                                                   "credited")])
    returned_before = await conn.scalar(
        text("SELECT coalesce(sum(credits_returned), 0) FROM credit_notes "
             "WHERE invoice_id = :id"), {"id": row.id})
    outstanding = row.total - row.amount_paid - row.credit_allocated
    invoice = InvoiceForCredit(
        key=key, kind=row.kind, status=row.status, currency=row.currency,
        lines=await invoice_lines_for_credit(conn, row.id),
        credits_applied=row.credits_applied, credits_returned=returned_before,
        outstanding=outstanding,
    )
    try:
        plan = plan_credit_note(
            invoice,
            lines=None if c.lines is None else [(ln.line, ln.amount) for ln in c.lines],
            amount=c.amount, remainder=c.remainder,
        )
    except BillowValidationError as exc:
        kind = "InvoiceState" if exc.problems[0][0] == "invoice" else "InvalidCorrection"
        raise refusal(kind, exc.problems) from exc
    if plan.customer_credit > 0 and (req.term_closed or req.at >= req.terms.term_end_at):
        raise refusal("InvalidCorrection", [(
            "remainder", f"the term ended on {req.terms.term_end.isoformat()}: customer credit "
                         "would expire at once; refund it instead")])
    invoice_grant: str | None = None
    reversals: list[tuple[str, Decimal]] = []
    returned: list[str] = []
    if row.kind in GRANT_KINDS:
        invoice_grant = await _remove_credits(conn, req, key, plan)
    elif plan.credits_returned > 0:
        reversals = await _return_credits(conn, req, key, plan.credits_returned)
        returned = [gid for gid, _ in reversals]
    note_id = await _insert_note(conn, req, c, row, plan, automatic)
    new_grant = None
    if plan.customer_credit > 0:
        new_grant = await _customer_credit(conn, req, plan.customer_credit)
    entry = credit_note_entry(f"credit_note:{c.id}", plan, reversals=reversals,
                              invoice_grant=invoice_grant, new_grant=new_grant)
    if entry is not None:
        await post_journal(conn, cid, [entry], req.on, key)
    settled = outstanding > 0 and plan.outstanding_reduced == outstanding
    await conn.execute(
        text(
            """
            UPDATE invoices SET credited = credited + :total,
                credit_allocated = credit_allocated + :reduced,
                status = CASE WHEN :settled THEN 'paid' ELSE status END,
                paid_on = CASE WHEN :settled THEN CAST(:on AS date) ELSE paid_on END
            WHERE id = :id
            """
        ),
        {"total": plan.total, "reduced": plan.outstanding_reduced, "settled": settled,
         "on": req.on, "id": row.id},
    )
    await _expire_returned(conn, req, returned)
    if plan.refunded > 0:
        await conn.execute(
            text(
                """
                INSERT INTO refunds (contract_id, refund_key, credit_note_id, amount, currency,
                    status)
                VALUES (:cid, :key, :note, :amount, :cur, 'pending')
                """
            ),
            {"cid": cid, "key": f"refund:{c.id}", "note": note_id, "amount": plan.refunded,
             "cur": row.currency},
        )
    return note_id


async def _remove_credits(conn: AsyncConnection, req: CorrectionRequest, key: str,
                          plan: CreditNotePlan) -> str:
    """A note on a commitment or top-up invoice: unused credits leave the grant and
    its amount paid falls by the credited amount."""
    cid = req.contract_id
    gid = await _grant_of(conn, cid, key)
    state = await load_credit_state(conn, cid)
    try:
        grant, balance = state.get(gid)
    except KeyError:
        raise refusal("InvoiceState", [("invoice", f"the credits of {key} are gone")]) from None
    removed = credits_removed(plan.total, credits=grant.credits, price=grant.price,
                              currency=req.terms.currency)
    field = "lines" if plan_from_lines(req) else "amount"
    if removed > balance.remaining:
        raise refusal("InvalidCorrection", [(field, (
            f"the note would take {removed} unused credits from grant {gid!r}, which has "
            f"{balance.remaining} left"))])
    deferred = deferred_by_grant(await load_journal(conn, cid)).get(gid, Decimal(0))
    if plan.total > deferred:
        raise refusal("InvalidCorrection", [(field, (
            f"{plan.total} exceeds the deferred revenue grant {gid!r} has left ({deferred})"))])
    await insert_ledger_entry(
        conn, entry_key=f"revoke:{cid}:{req.correction.id}:{gid}", contract_id=cid,
        grant_id=gid, kind="revoke", amount=-removed, invoice_key=key, price_amount=plan.total)
    return gid


def plan_from_lines(req: CorrectionRequest) -> bool:
    return isinstance(req.correction, CorrectCredit) and req.correction.lines is not None


async def _return_credits(conn: AsyncConnection, req: CorrectionRequest, key: str,
                          amount: Decimal) -> list[tuple[str, Decimal]]:
    """Give ``amount`` credits back to the grants the invoice burned (the last first);
    returns, per grant, the revenue going back to deferred revenue."""
    cid = req.contract_id
    consumptions = await invoice_consumption(conn, cid, key)
    recognized = recognized_by_grant(await invoice_journal(conn, cid, key))
    state = await load_credit_state(conn, cid)
    by_id = {c.grant_id: c for c in consumptions}
    out: list[tuple[str, Decimal]] = []
    for gid, credits in return_to_grants(consumptions, amount):
        grant, _ = state.get(gid)
        back = reversed_recognition(
            credits, unreturned=by_id[gid].unreturned,
            recognized=max(recognized.get(gid, Decimal(0)), Decimal(0)),
            price=grant.price, credits=grant.credits, currency=req.terms.currency,
        )
        await insert_ledger_entry(
            conn, entry_key=f"return:{cid}:{req.correction.id}:{gid}", contract_id=cid,
            grant_id=gid, kind="return", amount=credits, invoice_key=key)
        out.append((gid, back))
    return out


async def _insert_note(conn: AsyncConnection, req: CorrectionRequest, c: CorrectCredit,
                       row: Any, plan: CreditNotePlan,
                       automatic: Mapping[int, Decimal] | None) -> int:
    note_id = await conn.scalar(
        text(
            """
            INSERT INTO credit_notes (contract_id, correction_id, invoice_id, invoice_key,
                currency, issued_on, reason, total, credits_returned, outstanding_reduced,
                refunded, customer_credit, automatic)
            VALUES (:cid, :id, :iid, :key, :cur, :on, :reason, :total, :ret, :red, :ref, :cc,
                :auto)
            RETURNING id
            """
        ),
        {"cid": req.contract_id, "id": c.id, "iid": row.id, "key": row.key,
         "cur": row.currency, "on": req.on, "reason": c.reason, "total": plan.total,
         "ret": plan.credits_returned, "red": plan.outstanding_reduced,
         "ref": plan.refunded, "cc": plan.customer_credit, "auto": automatic is not None},
    )
    await conn.execute(
        text("INSERT INTO credit_note_lines (credit_note_id, position, invoice_line, kind, "
             "amount, quantity) VALUES (:nid, :pos, :line, :kind, :amount, :q)"),
        [{"nid": note_id, "pos": i, "line": ln.position, "kind": ln.kind, "amount": ln.amount,
          "q": None if automatic is None else automatic.get(ln.position, Decimal(0))}
         for i, ln in enumerate(plan.lines)],
    )
    return int(note_id)


async def _customer_credit(conn: AsyncConnection, req: CorrectionRequest,
                           amount: Decimal) -> str:
    """The remainder kept as credit: a grant at cost basis 1, priority 0, effective
    at the note, expiring at the term end."""
    cid = req.contract_id
    gid = f"{CUSTOMER_CREDIT_GRANT_PREFIX}{req.correction.id}"
    await conn.execute(
        text(
            """
            INSERT INTO credit_grants (contract_id, grant_id, credits, price, priority,
                effective, expires, invoice_key)
            VALUES (:cid, :gid, :amount, :amount, 0, :eff, :exp, NULL)
            """
        ),
        {"cid": cid, "gid": gid, "amount": amount, "eff": req.at,
         "exp": req.terms.term_end_at},
    )
    await insert_ledger_entry(conn, entry_key=f"grant:{cid}:{gid}", contract_id=cid,
                              grant_id=gid, kind="grant", amount=amount, invoice_key=None)
    return gid
