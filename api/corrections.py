"""Corrections over HTTP (SPEC.md section 11): void, reissue and credit an invoice;
read credit notes.

While the contract's workflow runs, a correction goes to it as the ``correct``
update (its state, collection and search attributes stay in step); after the
workflow has completed it goes straight to the ledger, with the same rules and
the same idempotency (`activities.corrections.apply_correction`). Refusals are
problem+json naming the field: **409** when the invoice's status forbids it
(voiding a paid invoice, crediting a void one) or the id was used for other
content, **422** when the request does not fit the invoice (crediting more
than is uncredited).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.api_keys import Scope
from activities.correction_store import credit_note_rows, credit_note_view
from activities.ledger_correction import correct_in_ledger
from api.correction_schemas import CorrectionOut, CreditIn, CreditNoteList, ReissueIn, VoidIn
from api.deps import AppDeps, get_deps
from api.documents import (
    DOCUMENT_RESPONSES,
    DocFormat,
    DocumentFormat,
    contract_terms,
    negotiate,
    view_response,
)
from api.idempotency import IdempotencyKeyHeader
from api.problems import ProblemError, not_found, problem_responses, validation_problem
from api.queries import invoice_by_number
from api.security import require_scope
from api.workflow_calls import (
    reasons_from_message,
    temporal_client,
    temporal_errors,
    workflow_status,
)
from documents.credit_note import credit_note_view as credit_note_document
from models.corrections import (
    CorrectCredit,
    CorrectionResult,
    CorrectReissue,
    CorrectVoid,
    CreditNoteView,
    correct_update_id,
)
from worker.contract_service import workflow_id

router = APIRouter(tags=["invoices"])
Deps = Annotated[AppDeps, Depends(get_deps)]
_read = [Depends(require_scope(Scope.CRM))]
_ops = [Depends(require_scope(Scope.OPS))]
_WRITE_RESPONSES = problem_responses(401, 403, 404, 409, 413, 422, 503, 504)

# Refusal types of the ledger and the workflow -> (status, slug, title).
_REFUSALS = {
    "InvoiceState": (409, "invoice-state", "The invoice's status does not allow it"),
    "CorrectionConflict": (409, "correction-conflict", "Correction id already used"),
    "InvalidCorrection": (422, "invalid-correction", "Invalid correction"),
    "NotFound": (404, "not-found", "Not found"),
}
# The ledger names the invoice `invoice`; over HTTP it is the path's number.
_FIELDS = {"invoice": "path.number"}


def _problem(exc: ApplicationError) -> ProblemError:
    status, slug, title = _REFUSALS.get(exc.type or "", (422, "invalid-correction",
                                                         "Invalid correction"))
    listed = exc.details[0] if exc.details and isinstance(exc.details[0], list) else None
    errors = ([(str(d.get("field", "")), str(d.get("reason", ""))) for d in listed]
              if listed else reasons_from_message(exc.message))
    return ProblemError(status, slug, title, exc.message,
                        [(_FIELDS.get(f, f), r) for f, r in errors])


def _correction_id(given: str | None, header: str | None) -> str:
    chosen = given or header
    if chosen is None:
        raise validation_problem([("id", "required (or send an Idempotency-Key header)")])
    return chosen


async def _correct(deps: AppDeps, number: str,
                   build: Any) -> CorrectionOut:
    async with deps.engine.connect() as conn:
        row = await invoice_by_number(conn, number)
    if row is None:
        raise not_found("Invoice", f"no invoice {number!r}", "path.number")
    correction: CorrectVoid | CorrectReissue | CorrectCredit = build(row.key)
    client = await temporal_client(deps)
    handle = client.get_workflow_handle(workflow_id(row.contract_id))
    async with temporal_errors("correct invoice", changes=False):
        running = await workflow_status(handle) == WorkflowExecutionStatus.RUNNING
    if running:
        try:
            async with temporal_errors("correct invoice", handle=handle), asyncio.timeout(
                deps.workflow_timeout_seconds
            ):
                result: CorrectionResult = await handle.execute_update(
                    "correct", correction, id=correct_update_id(correction),
                    result_type=CorrectionResult,
                )
            return _out(result, row.contract_id, "workflow")
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError):
                raise _problem(cause) from exc
            raise ProblemError(422, "update-failed", "Invalid correction", str(exc)) from exc
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # The workflow closed meanwhile: the ledger takes it.
    return _out(await _in_ledger(deps, row.contract_id, correction), row.contract_id, "ledger")


async def _in_ledger(deps: AppDeps, contract_id: str,
                     correction: CorrectVoid | CorrectReissue | CorrectCredit
                     ) -> CorrectionResult:
    """After the workflow completed: straight to the ledger, with the same rules."""
    try:
        return await correct_in_ledger(deps.engine, contract_id, correction, datetime.now(UTC))
    except ApplicationError as exc:
        raise _problem(exc) from exc


def _out(result: CorrectionResult, contract_id: str, via: str) -> CorrectionOut:
    return CorrectionOut.model_validate({**result.model_dump(), "contract_id": contract_id,
                                         "recorded_via": via})


@router.post("/v1/invoices/{number}/void", summary="Void an invoice",
             response_model=CorrectionOut, dependencies=_ops, responses=_WRITE_RESPONSES)
async def void_invoice(number: str, body: VoidIn, deps: Deps,
                       idempotency_key: IdempotencyKeyHeader = None) -> CorrectionOut:
    """Void the `open` or `overdue` invoice `number`, on which nothing is paid or
    credited: status `void`, its number stays used, it is no longer collected. One
    journal entry reverses it; credits it consumed return to their grants. A commitment
    or top-up invoice is voided only while none of its credits were used (they then
    leave `granted`). With `reissue: true` a usage invoice's period is rated again with
    the terms in force now and issued as `usage:<start>/2`.

    Idempotent on `id` (one id space for void, reissue and credit; defaults to the
    `Idempotency-Key` header): the same id again answers as the first time; with other
    content it is a **409**. Voiding a paid invoice is a **409**. Scope: `ops`.
    """
    cid = _correction_id(body.id, idempotency_key)
    return await _correct(deps, number, lambda key: CorrectVoid(
        id=cid, invoice=key, reissue=body.reissue))


@router.post("/v1/invoices/{number}/reissue", summary="Reissue a voided usage invoice",
             response_model=CorrectionOut, dependencies=_ops, responses=_WRITE_RESPONSES)
async def reissue_invoice(number: str, body: ReissueIn, deps: Deps,
                          idempotency_key: IdempotencyKeyHeader = None) -> CorrectionOut:
    """Rate the period of the voided usage invoice `number` again, with every rate
    override that covers it, and issue the result as `usage:<start>/2` (`/3`, ...),
    dated and numbered today. Idempotent on `id`. Scope: `ops`."""
    cid = _correction_id(body.id, idempotency_key)
    return await _correct(deps, number, lambda key: CorrectReissue(id=cid, invoice=key))


@router.post("/v1/invoices/{number}/credit-notes", summary="Credit an invoice",
             response_model=CorrectionOut, dependencies=_ops, responses=_WRITE_RESPONSES)
async def credit_invoice(number: str, body: CreditIn, deps: Deps,
                         idempotency_key: IdempotencyKeyHeader = None) -> CorrectionOut:
    """Issue a credit note against the finalized invoice `number` (`open`, `overdue` or
    `paid`): `lines` by their 1-based position with an amount each (at most what is still
    uncredited on the line), or one `amount` for the whole invoice. Numbered `CN-000001`,
    ... in its own series. Allocation: the share paid with credits
    returns to the grants, then the amount still owed is reduced, then the rest is
    refunded (`remainder: refund`) or kept as customer credit (`remainder: credit`).

    Crediting more than is uncredited is a **422** naming the line or `amount`;
    crediting a void invoice is a **409**. Idempotent on `id`. Scope: `ops`.
    """
    cid = _correction_id(body.id, idempotency_key)
    return await _correct(deps, number, lambda key: CorrectCredit(
        id=cid, invoice=key, reason=body.reason, lines=body.lines, amount=body.amount,
        remainder=body.remainder))


@router.get("/v1/credit-notes", summary="List credit notes", response_model=CreditNoteList,
            dependencies=_read, responses=problem_responses(401, 403, 422))
async def list_credit_notes(
    deps: Deps,
    contract: Annotated[str | None, Query(description="Only this contract's notes.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> CreditNoteList:
    """Credit notes in number (issue) order. Scope: `crm` or `ops`."""
    async with deps.engine.connect() as conn:
        found = await credit_note_rows(conn, contract_id=contract, limit=limit + 1,
                                       offset=offset)
        notes = [await credit_note_view(conn, r) for r in found[:limit]]
    more = len(found) > limit
    return CreditNoteList(credit_notes=notes, next_offset=offset + limit if more else None)


@router.get("/v1/credit-notes/{number}", summary="A credit note (JSON), or its document",
            response_model=CreditNoteView, dependencies=_read,
            responses={**DOCUMENT_RESPONSES, **problem_responses(401, 403, 404)})
async def get_credit_note(number: str, deps: Deps, request: Request) -> Any:
    """The credit note `number` (e.g. `CN-000001`) with its lines and allocation.

    With `Accept: text/html` or `Accept: application/pdf` the answer is its document
    (the same as `.../document.html` and `.../document.pdf`). Scope: `crm` or `ops`."""
    fmt = negotiate(request.headers.get("accept"))
    note = await _credit_note(deps, number)
    if fmt is DocFormat.JSON:
        return note
    return await _note_document(deps, note, fmt)


@router.get("/v1/credit-notes/{number}/document.{fmt}",
            summary="A credit note's document as HTML or PDF", response_class=Response,
            dependencies=_read,
            responses={200: {"content": {"text/html": {}, "application/pdf": {}},
                             "description": "The document"},
                       **problem_responses(401, 403, 404, 422)})
async def get_credit_note_document(number: str, fmt: DocumentFormat, deps: Deps) -> Response:
    """`document.pdf` or `document.html`: the credit note's document. The same note
    always renders to the same bytes. Scope: `crm` or `ops`."""
    return await _note_document(deps, await _credit_note(deps, number), DocFormat(fmt.value))


async def _credit_note(deps: AppDeps, number: str) -> CreditNoteView:
    async with deps.engine.connect() as conn:
        found = await credit_note_rows(conn, number=number)
        if not found:
            raise not_found("Credit note", f"no credit note {number!r}", "path.number")
        return await credit_note_view(conn, found[0])


async def _note_document(deps: AppDeps, note: CreditNoteView, fmt: DocFormat) -> Response:
    async with deps.engine.connect() as conn:
        terms = await contract_terms(conn, note.contract_id)
    view = credit_note_document(note.model_dump(mode="json"), terms, deps.seller,
                                deps.document_locale)
    return view_response(view, note.number, fmt)
