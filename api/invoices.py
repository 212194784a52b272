"""``/v1/invoices``: list, read and pay invoices."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.api_keys import Scope
from activities.ledger_history import line_descriptions
from activities.ledger_reports import invoice_detail_json
from activities.ledger_store import lock_contract
from activities.payment_record import record_payment_in
from api.contracts import update_problem
from api.deps import AppDeps, get_deps
from api.documents import (
    DOCUMENT_RESPONSES,
    DocFormat,
    DocumentFormat,
    contract_terms,
    document_response,
    negotiate,
)
from api.idempotency import IdempotencyKeyHeader
from api.problem_examples import INVOICE_SETTLED, NO_INVOICE
from api.problems import (
    ProblemError,
    not_found,
    payment_conflict,
    problem_responses,
    validation_problem,
)
from api.queries import contract_row, invoice_by_number, invoice_summaries
from api.schemas import PAYMENT_EXAMPLES, InvoiceDetail, InvoiceList, PaymentIn, PaymentOut
from api.security import require_scope
from api.workflow_calls import outcome_unknown, temporal_client, temporal_errors, workflow_status
from models.invoices import InvoiceStatus
from models.money import minor_units
from models.operations import PaymentRequest, PaymentResult
from models.periods import local_date
from worker.contract_service import workflow_id
from workflows.contract import PaymentInput

router = APIRouter(prefix="/v1/invoices", tags=["invoices"])
Deps = Annotated[AppDeps, Depends(get_deps)]
_read = [Depends(require_scope(Scope.CRM))]
_ops = [Depends(require_scope(Scope.OPS))]


@router.get(
    "",
    summary="List invoices",
    response_model=InvoiceList,
    dependencies=_read,
    responses=problem_responses(401, 403, 404, 422),
)
async def list_invoices(
    deps: Deps,
    contract: Annotated[str | None, Query(description="Only this contract's invoices.")] = None,
    status: Annotated[InvoiceStatus | None, Query(description="Only invoices in this status.")]
    = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> InvoiceList:
    """Invoices in number order (held `needs_attention` invoices, which have no number
    yet, last). A `contract` that does not exist is a **404** (not an empty list).
    Scope: `crm` or `ops`."""
    async with deps.engine.connect() as conn:
        if contract is not None and await contract_row(conn, contract) is None:
            raise not_found("Contract", f"no contract {contract!r}", "query.contract")
        items = await invoice_summaries(conn, contract_id=contract,
                                        status=status.value if status else None,
                                        limit=limit + 1, offset=offset)
    more = len(items) > limit
    return InvoiceList(invoices=items[:limit], next_offset=offset + limit if more else None)


async def invoice_detail(deps: AppDeps, number: str) -> InvoiceDetail:
    """The finalized invoice ``number`` as the API shows it (404 if there is none)."""
    async with deps.engine.connect() as conn:
        row = await invoice_by_number(conn, number)
        doc = None if row is None else await invoice_detail_json(conn, row.contract_id, row.key)
        if row is None or doc is None:
            raise not_found("Invoice", f"no invoice {number!r}", "path.number")
        descriptions = await line_descriptions(conn, row.contract_id, row.key, doc["lines"])
    # The same builder writes the `data` of invoice events: one shape everywhere.
    return InvoiceDetail.model_validate({**doc, "descriptions": descriptions})


async def _document(deps: AppDeps, number: str, fmt: DocFormat) -> Response:
    detail = await invoice_detail(deps, number)
    async with deps.engine.connect() as conn:
        terms = await contract_terms(conn, detail.contract_id)
    return document_response(deps, detail.model_dump(mode="json"), terms, fmt)


@router.get(
    "/{number}",
    summary="An invoice (JSON), or its document (HTML or PDF)",
    response_model=InvoiceDetail,
    dependencies=_read,
    responses={**DOCUMENT_RESPONSES,
               **problem_responses(401, 403, 404, examples={404: NO_INVOICE})},
)
async def get_invoice(number: str, deps: Deps, request: Request) -> Any:
    """The finalized invoice `number` (e.g. `INV-000002`) with its lines, in the shape of
    `billow simulate` (docs/file-formats.md), plus the amount paid and outstanding,
    and a description of each line.

    With `Accept: text/html` or `Accept: application/pdf` the answer is the invoice's
    document instead (seller, customer, lines grouped by meter, credits, totals, amount
    due, payment instructions; PAID / VOID stamps), the same as `.../document.html` and
    `.../document.pdf`. Scope: `crm` or `ops`."""
    fmt = negotiate(request.headers.get("accept"))
    if fmt is DocFormat.JSON:
        return await invoice_detail(deps, number)
    return await _document(deps, number, fmt)


@router.get(
    "/{number}/document.{fmt}",
    summary="An invoice's document as HTML or PDF",
    response_class=Response,
    dependencies=_read,
    responses={200: {"content": {"text/html": {}, "application/pdf": {}},
                     "description": "The document"}, **problem_responses(401, 403, 404, 422)},
)
async def get_invoice_document(number: str, fmt: DocumentFormat, deps: Deps) -> Response:
    """`document.pdf` or `document.html`: the invoice's document (as with `Accept`). The
    same invoice always renders to the same bytes. Scope: `crm` or `ops`."""
    return await _document(deps, number, DocFormat(fmt.value))


@router.post(
    "/{number}/payments",
    summary="Record a payment",
    response_model=PaymentOut,
    dependencies=_ops,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503, 504,
                                examples={404: NO_INVOICE, 409: INVOICE_SETTLED}),
)
async def pay_invoice(
    number: str, payment: Annotated[PaymentIn, Body(openapi_examples=PAYMENT_EXAMPLES)],
    deps: Deps, idempotency_key: IdempotencyKeyHeader = None,
) -> PaymentOut:
    """Record a payment received for invoice `number`.

    While the contract's workflow runs, the payment goes to it as the `pay` update (it
    keeps collection — due dates, reminders, `HasOverdueInvoice` — in step). After the
    workflow has closed, the payment is recorded directly in the ledger. Either way it is
    one transaction with its journal entry.

    Retries are safe with an id: `payment_id`, which defaults to the `Idempotency-Key`
    header. Sending the same payment again (same id, invoice and amount) records nothing
    and answers as the first time did (the ledger keeps each payment's first answer).
    The same id with another invoice or amount is a **409**. A payment with neither id
    is recorded, but a retry of it would be recorded again: always send one.

    **504**/**503** with `Retry-After`: billow could not tell within its deadline whether
    the payment was recorded (or the contract's workflow has not caught up with this
    invoice yet); it may still apply: retry with the same id.
    A paid or void invoice refuses new payments (**409**). Scope: `ops`.
    """
    if payment.payment_id is None and idempotency_key is not None:
        payment = payment.model_copy(update={"payment_id": idempotency_key})
    async with deps.engine.connect() as conn:
        row = await invoice_by_number(conn, number)
        if row is None:
            raise not_found("Invoice", f"no invoice {number!r}", "path.number")
        _check_precision(payment.amount, row.currency)
        await _refuse_settled(conn, row, payment.payment_id)
    client = await temporal_client(deps)
    handle = client.get_workflow_handle(workflow_id(row.contract_id))
    result: PaymentResult | None = None
    async with temporal_errors("pay invoice", changes=False):
        running = await workflow_status(handle) == WorkflowExecutionStatus.RUNNING
    if running:
        try:
            async with temporal_errors("pay invoice", handle=handle), asyncio.timeout(
                deps.workflow_timeout_seconds
            ):
                result = await handle.execute_update(
                    "pay",
                    PaymentInput(invoice=row.key, amount=payment.amount,
                                 payment_id=payment.payment_id),
                    id=_update_id(row.key, payment), result_type=PaymentResult,
                )
        except WorkflowUpdateFailedError as exc:
            if (conflict := payment_conflict(exc)) is not None:
                raise conflict from exc
            problem = update_problem(exc, "InvalidPayment", "invalid-payment", "Invalid payment")
            if "already" in problem.detail:
                problem.status, problem.slug = 409, "invoice-settled"
            elif _UNKNOWN_INVOICE in problem.detail:
                # The ledger has it (it was found by its number above): the workflow's
                # state has not caught up yet, e.g. after a worker crash between the
                # ledger commit and the end of its workflow task. Never a 4xx: clients
                # do not retry those, and the payment would be lost.
                raise outcome_unknown(
                    503, "pay invoice", f"the contract's workflow has not caught up with "
                    f"invoice {number} yet; nothing was recorded", changes=False) from exc
            raise problem from exc
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            result = None  # the workflow closed meanwhile: record in the ledger
    if result is not None:
        return _out(number, row.contract_id, row.currency, result, "workflow")
    ledger_result = await _record_in_ledger(deps, row, payment)
    return _out(number, row.contract_id, row.currency, ledger_result, "ledger")


_UNKNOWN_INVOICE = "unknown invoice"


def _update_id(invoice_key: str, payment: PaymentIn) -> str:
    """The `pay` update's id.

    With a payment id it is the payment's identity (id, invoice, amount): a retry
    of an update that is still running, or that Temporal still remembers, attaches
    to it and gets the first answer without running again. A different invoice or
    amount under the same id is a different update, which the ledger refuses as a
    conflict. Without an id every send is its own payment.
    """
    if payment.payment_id is None:
        return f"pay:{uuid.uuid4().hex}"
    return f"pay:{payment.payment_id}:{invoice_key}:{payment.amount.normalize():f}"


def _check_precision(amount: Decimal, currency: str) -> None:
    places = minor_units(currency)
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise validation_problem(
            [("amount", f"{currency} amounts have at most {places} decimal places")])


async def _refuse_settled(conn: AsyncConnection, row: Any, payment_id: str | None) -> None:
    if row.status not in (InvoiceStatus.PAID, InvoiceStatus.VOID):
        return
    if payment_id is not None:
        known = await conn.scalar(
            text("SELECT 1 FROM payments WHERE contract_id = :c AND payment_key = :k"),
            {"c": row.contract_id, "k": payment_id})
        if known is not None:
            return  # a resend: answered with the invoice as it stands
    raise ProblemError(409, "invoice-settled", "Invoice settled",
                       f"invoice {row.number} is already {row.status}",
                       [("path.number", f"invoice is {row.status}")])


async def _record_in_ledger(deps: AppDeps, row: Any, payment: PaymentIn) -> PaymentResult:
    async with deps.engine.begin() as conn:
        await lock_contract(conn, row.contract_id)
        fresh = await invoice_by_number(conn, row.number)
        await _refuse_settled(conn, fresh, payment.payment_id)
        tz = await conn.scalar(
            text("SELECT terms->>'timezone' FROM contracts WHERE id = :id"),
            {"id": row.contract_id},
        )
        try:
            return await record_payment_in(conn, PaymentRequest(
                contract_id=row.contract_id, invoice_key=row.key,
                payment_key=payment.payment_id or f"api:{uuid.uuid4().hex}",
                amount=payment.amount, received_on=local_date(datetime.now(UTC), tz or "UTC"),
            ))
        except ApplicationError as exc:  # more than the invoice still owes
            if (conflict := payment_conflict(exc)) is not None:
                raise conflict from exc
            raise ProblemError(422, "validation", "Invalid payment", str(exc),
                               [("amount", str(exc))]) from exc


def _out(number: str, contract_id: str, currency: str, result: PaymentResult,
         via: str) -> PaymentOut:
    return PaymentOut.model_validate({
        "invoice_number": number, "invoice_key": result.invoice_key, "contract_id": contract_id,
        "currency": currency,
        "status": result.status, "amount_paid": Decimal(result.amount_paid),
        "paid_on": result.paid_on, "applied": result.applied, "recorded_via": via,
    })
