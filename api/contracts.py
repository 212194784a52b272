"""``/v1/contracts``: create (from the CRM), amend, read and list contracts."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.api_keys import Scope
from activities.ledger_history import line_descriptions
from activities.ledger_reports import unbilled_usage
from activities.usage_invoice import compute_usage_invoice
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
from api.problem_examples import AMENDMENT_CONFLICT, CONTRACT_CONFLICT
from api.problems import ProblemError, from_billow_error, not_found, problem_responses
from api.queries import contract_row, contract_state_from_db, list_contracts, summary_from_issued
from api.schemas import (
    AMENDMENT_EXAMPLES,
    CONTRACT_EXAMPLE,
    CONTRACT_EXISTS_EXAMPLE,
    AmendmentAccepted,
    ContractCreated,
    ContractList,
    ContractState,
    DraftInvoice,
)
from api.security import require_scope
from api.workflow_calls import (
    RETRY_AFTER,
    reasons_from_message,
    temporal_client,
    temporal_errors,
    workflow_status,
)
from models.amendments import Amendment
from models.contract import Contract, ContractTerms
from models.errors import BillowValidationError
from models.minimum_commitment import CommitmentProgress, months_left, progress_text
from models.operations import ContractStatus
from models.periods import billing_periods
from worker.contract_service import (
    ContractConflictError,
    ContractOverlapError,
    ContractStartUncertainError,
    StartedContract,
    start_contract,
    workflow_id,
)
from workflows.contract import AmendmentResult, ContractView
from workflows.contract_state import amend_update_id, initial_state
from workflows.wait_labels import NextClose, state_next_close

log = logging.getLogger("billow.api")

router = APIRouter(prefix="/v1/contracts", tags=["contracts"])
Deps = Annotated[AppDeps, Depends(get_deps)]
_crm = [Depends(require_scope(Scope.CRM))]


async def create_contract(
    deps: AppDeps, contract: Contract, catalog_version: int | None
) -> tuple[ContractCreated, bool]:
    """Start the contract's workflow (idempotent on its id). Shared with the webhook.

    Never deletes anything on an ambiguous failure: `start_contract` keeps the
    rows whenever the workflow may have started, and repeating the create is
    safe (SPEC.md section 10).
    """
    client = await temporal_client(deps)
    try:
        started = await start_contract(
            client, deps.engine, contract, deps.task_queue, catalog_version=catalog_version,
            rpc_timeout=timedelta(seconds=deps.workflow_timeout_seconds))
    except ContractConflictError as exc:
        raise ProblemError(
            409, "contract-conflict", "Contract exists with different terms",
            f"contract {contract.id!r} already exists with different terms; differing "
            f"fields: {', '.join(exc.differences) or '(none listed)'}",
            [(path, "differs from the existing contract") for path in exc.differences],
        ) from exc
    except ContractOverlapError as exc:
        raise ProblemError(
            409, "contract-overlap", "Overlapping contract",
            f"{exc}; end or terminate {exc.other_id!r} before this term starts, or use "
            "another customer",
            [("customer.id", f"contract {exc.other_id!r} of this customer overlaps this "
              "term on a shared meter"),
             ("starts_on", f"overlaps the term of contract {exc.other_id!r}")],
            extra={"conflicting_contract_id": exc.other_id},
        ) from exc
    except BillowValidationError as exc:
        raise from_billow_error(exc) from exc
    except LookupError as exc:
        if catalog_version is not None:
            raise ProblemError(422, "validation", "Invalid request", str(exc),
                               [("query.catalog_version", str(exc))]) from exc
        raise ProblemError(409, "no-catalog", "No catalog", f"{exc}: PUT /v1/catalog first",
                           [("plan", str(exc))]) from exc
    except ContractStartUncertainError as exc:
        timed_out = isinstance(exc.cause, TimeoutError) or (
            isinstance(exc.cause, RPCError) and exc.cause.status == RPCStatusCode.DEADLINE_EXCEEDED)
        raise ProblemError(
            504 if timed_out else 503, "outcome-unknown",
            "Gateway Timeout" if timed_out else "Service Unavailable",
            f"starting the workflow of contract {contract.id!r} did not complete "
            f"({exc.cause.__class__.__name__}): the contract may have been created; retry "
            "with the same body",
            headers={"Retry-After": RETRY_AFTER},
        ) from exc
    except RPCError as exc:  # Temporal refused the start: nothing was created
        raise ProblemError(
            503, "unavailable", "Service Unavailable",
            f"Temporal refused to start the workflow of contract {contract.id!r} "
            f"({exc.status.name if exc.status else 'error'}: {exc.message}); the contract "
            "was not created",
            headers={"Retry-After": RETRY_AFTER},
        ) from exc
    wf = started.workflow_id
    return ContractCreated(
        contract_id=contract.id, workflow_id=wf, run_id=started.run_id, created=started.created,
        catalog_version=started.catalog_version, temporal_ui_url=deps.workflow_url(wf),
        contract=contract,
        next_close=await _next_close(deps, client, contract, started),
    ), started.created


async def _next_close(
    deps: AppDeps, client: Client, contract: Contract, started: StartedContract
) -> NextClose | None:
    """When the new contract's first period closes, as its workflow schedules it.

    A fresh workflow may not have finished its first task (a query could not be
    answered yet), so its schedule is computed here the way the workflow
    computes it: the resolved terms' periods and the instant its start event
    records. An existing contract is asked (amendments may have moved it).
    Informational: any failure leaves it out rather than failing the create.
    """
    handle = client.get_workflow_handle(workflow_id(contract.id))
    timeout = timedelta(seconds=min(deps.workflow_timeout_seconds, 5))
    try:
        if not started.created or started.terms is None:
            if await workflow_status(handle) != WorkflowExecutionStatus.RUNNING:
                return None
            view: ContractView = await handle.query("state", result_type=ContractView,
                                                    rpc_timeout=timeout)
            return view.next_close
        described = await handle.describe(rpc_timeout=timeout)
        state = initial_state(contract, started.terms, started.catalog_version, "")
        state.created_at = described.start_time
        return state_next_close(state)
    except Exception as exc:  # informational only: the contract exists either way
        log.warning("next close of %s unknown (%s)", contract.id, exc)
        return None


@router.post(
    "",
    summary="Create a contract (idempotent on its id)",
    status_code=201,
    response_model=ContractCreated,
    dependencies=_crm,
    responses={200: {"description": "The same contract already exists: nothing changed",
                     "model": ContractCreated,
                     "content": {"application/json": {"example": CONTRACT_EXISTS_EXAMPLE}}},
               **problem_responses(401, 403, 409, 413, 422, 503,
                                   examples={409: CONTRACT_CONFLICT})},
)
async def post_contract(
    contract: Annotated[Contract, Body(openapi_examples={
        "acme": {"summary": "Acme on the Pro plan (the worked example)",
                 "value": CONTRACT_EXAMPLE}})],
    response: Response,
    deps: Deps,
    catalog_version: Annotated[int | None, Query(
        ge=1, description="Catalog version to bill by (default: the latest).")] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ContractCreated:
    """Start the contract's workflow (`contract:<id>`) on the latest catalog version (or
    `catalog_version`).

    - **201**: created; the workflow id and its Temporal UI page are returned.
    - **200**: a contract with this id and the same terms exists: nothing changes and the
      existing contract is returned.
    - **409**: a contract with this id exists with different terms; `errors` names each
      differing field.

    Scope: `crm` or `ops`.
    """
    created, is_new = await create_contract(deps, contract, catalog_version)
    response.status_code = 201 if is_new else 200
    return created


@router.get(
    "",
    summary="List contracts",
    response_model=ContractList,
    dependencies=_crm,
    responses=problem_responses(401, 403, 422),
)
async def get_contracts(
    deps: Deps,
    status: Annotated[ContractStatus | None, Query(
        description="Only contracts in this status.")] = None,
    customer: Annotated[str | None, Query(description="Only this customer's contracts.")] = None,
    overdue: Annotated[bool | None, Query(
        description="true: only contracts with an overdue invoice; false: only without.")] = None,
    after: Annotated[str | None, Query(
        description="Contract id to continue after (from `next_after`).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ContractList:
    """Contracts from the database, ordered by id, with their open and overdue invoice
    counts and the outstanding amount.

    Filters combine with AND: `status` (scheduled, active, needs_attention, ended,
    terminated), `customer` (customer id), `overdue` (has an invoice in status `overdue`).
    Page with `limit` and `after`.

    Scope: `crm` or `ops`.
    """
    async with deps.engine.connect() as conn:
        items, next_after = await list_contracts(
            conn, status=status.value if status else None, customer=customer, overdue=overdue,
            after=after, limit=limit)
    return ContractList(contracts=items, next_after=next_after)


@router.get(
    "/{contract_id}",
    summary="A contract's live state",
    response_model=ContractState,
    dependencies=_crm,
    responses=problem_responses(401, 403, 404, 503),
)
async def get_contract(contract_id: str, deps: Deps) -> ContractState:
    """The running workflow's `state` query (terms in force, credit balance, invoices,
    amendments, next boundary) — `source: workflow`. Once the contract's workflow has
    closed (or if it does not answer in time) the same view is read from the database —
    `source: database`.

    Scope: `crm` or `ops`.
    """
    wf = workflow_id(contract_id)
    async with deps.engine.connect() as conn:
        row = await contract_row(conn, contract_id)
    if row is None:
        raise not_found("Contract", f"no contract {contract_id!r}", "path.contract_id")
    view: ContractView | None = None
    try:
        client = await temporal_client(deps)
        handle = client.get_workflow_handle(wf)
        async with temporal_errors("read contract", changes=False):
            if await workflow_status(handle) == WorkflowExecutionStatus.RUNNING:
                view = await handle.query(
                    "state", result_type=ContractView,
                    rpc_timeout=timedelta(seconds=min(deps.workflow_timeout_seconds, 10)),
                )
    except Exception as exc:  # a read: any failure of the live path falls back to the ledger
        log.warning("state query of %s failed (%s); reading the database", wf, exc)
    async with deps.engine.connect() as conn:
        if view is None:
            return await contract_state_from_db(conn, row, wf, deps.workflow_url(wf))
        # An ended contract's workflow keeps running while it collects: usage that
        # arrived after its final invoice is in the ledger only (never in the state).
        unbilled = await unbilled_usage(conn, contract_id)
    return ContractState(
        contract_id=view.contract_id, customer_id=view.customer_id, plan=view.plan,
        status=view.status, source="workflow", workflow_id=wf,
        temporal_ui_url=deps.workflow_url(wf), currency=view.terms.currency,
        credit_balance=view.credit_balance, next_boundary=view.next_boundary,
        attention=view.attention, has_overdue_invoice=view.has_overdue_invoice,
        terms=view.terms,
        invoices=[summary_from_issued(view.contract_id, i) for i in view.invoices],
        amendments=list(view.applied_amendment_ids),
        pending_amendments=list(view.pending_amendments),
        dropped_amendments=list(view.dropped_amendments),
        unapplied_payments=list(view.unapplied_payments),
        commitment=view.commitment,
        commitment_text=commitment_text(view.commitment, view.terms, view.next_boundary),
        next_close=view.next_close, waiting_for=view.waiting_for,
        unbilled_usage_events=unbilled.events,
    )


def commitment_text(
    progress: CommitmentProgress | None, terms: ContractTerms, next_boundary: datetime | None
) -> str | None:
    """`progress_text` with the months left from the open period's start."""
    if progress is None:
        return None
    left = None
    if next_boundary is not None:
        left = months_left(progress.period_end, terms.term_end)
    return progress_text(progress, terms.currency, left)


@router.post(
    "/{contract_id}/amendments",
    summary="Amend a running contract",
    response_model=AmendmentAccepted,
    dependencies=_crm,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503, 504,
                                examples={409: AMENDMENT_CONFLICT}),
)
async def post_amendment(
    contract_id: str,
    amendment: Annotated[Amendment, Body(openapi_examples=AMENDMENT_EXAMPLES)],
    deps: Deps,
    idempotency_key: IdempotencyKeyHeader = None,
) -> AmendmentAccepted:
    """Send an amendment (docs/billing-rules.md, "Amendments") to the contract's workflow
    as the `amend`
    update. The workflow validates it first: an invalid amendment is a **422** whose
    `errors` carry the workflow's reason, and nothing changes. The amendment `id` is an
    idempotency key: resending it changes nothing and returns the first answer.

    Without `effective`, the amendment takes effect at the instant billow received it:
    the API stamps `received_at` with its own clock on every request (a value sent by the
    client is ignored), so a busy or catching-up workflow does not move the instant.

    When the workflow does not answer within the API's deadline the answer is a **504**
    (**503** while the contract's workflow is stalled) with `Retry-After`: the amendment
    may still apply; resend it with the same `id` to learn its outcome.

    Scope: `crm` or `ops`.
    """
    # Stamped first, before any I/O: the instant billow received it (SPEC.md section 7).
    amendment = amendment.model_copy(update={"received_at": datetime.now(UTC)})
    async with deps.engine.connect() as conn:
        row = await contract_row(conn, contract_id)
    if row is None:
        raise not_found("Contract", f"no contract {contract_id!r}", "path.contract_id")
    client = await temporal_client(deps)
    handle = client.get_workflow_handle(workflow_id(contract_id))
    try:
        async with temporal_errors("amend contract", handle=handle), asyncio.timeout(
            deps.workflow_timeout_seconds
        ):
            result: AmendmentResult = await handle.execute_update(
                "amend", amendment, id=amend_update_id(amendment),
                result_type=AmendmentResult,
            )
    except WorkflowUpdateFailedError as exc:
        raise update_problem(exc, "InvalidAmendment", "invalid-amendment",
                             "Invalid amendment") from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise _ended(contract_id, row.status) from exc
        raise
    return AmendmentAccepted(contract_id=contract_id, amendment_id=result.amendment_id,
                             status=result.status, effective=result.effective)


def _ended(contract_id: str, status: str) -> ProblemError:
    return ProblemError(
        409, "contract-ended", "Contract has ended",
        f"contract {contract_id!r} is {status}: its workflow has closed and takes no "
        "amendments", [("path.contract_id", f"contract is {status}")],
    )


# Update failures that mean "this id was used before for something else".
CONFLICT_TYPES = {
    "AmendmentConflict": "amendment-conflict",
    "PaymentConflict": "payment-conflict",
    "ContractOverlap": "contract-overlap",
}


def update_problem(
    exc: WorkflowUpdateFailedError, expected_type: str, slug: str, title: str
) -> ProblemError:
    """A rejected or failed workflow update as a 422 naming the validator's fields."""
    cause = exc.cause
    if isinstance(cause, ApplicationError) and cause.type in CONFLICT_TYPES:
        # The id was used before for other content: changes nothing, and is not
        # the request's shape at fault (SPEC.md sections 7 and 10).
        return ProblemError(409, CONFLICT_TYPES[cause.type], "Conflict", cause.message,
                            reasons_from_message(cause.message))
    if isinstance(cause, ApplicationError) and cause.type == expected_type:
        return ProblemError(422, slug, title, cause.message, reasons_from_message(cause.message))
    message = getattr(cause, "message", None) or str(exc)
    return ProblemError(422, "update-failed", title, message, reasons_from_message(message))


@router.get(
    "/{contract_id}/draft",
    summary="The open period's draft invoice, rated now",
    response_model=DraftInvoice,
    dependencies=_crm,
    responses={**DOCUMENT_RESPONSES, **problem_responses(401, 403, 404, 409, 503)},
)
async def get_draft(contract_id: str, deps: Deps, request: Request) -> Any:
    """What the open period's invoice would say if it were finalized now: usage so
    far rated with the prices in force, each limited meter's minimum or maximum line,
    late usage, fees, the true-up of a minimum commitment, and the credits that
    would pay it; `commitment` is the spend to date against the minimum. Nothing is
    written; the draft gets a number only when the period closes (after its usage
    grace window).

    With `Accept: text/html` (or `.../draft/document.html`) the answer is the draft's
    preview document, stamped DRAFT. Scope: `crm` or `ops`.
    """
    fmt = negotiate(request.headers.get("accept"))
    if fmt is DocFormat.JSON:
        return await _draft(contract_id, deps)
    return await _draft_document(contract_id, deps, fmt)


@router.get(
    "/{contract_id}/draft/document.{fmt}",
    summary="The draft invoice's preview document (HTML or PDF)",
    response_class=Response,
    dependencies=_crm,
    responses={200: {"content": {"text/html": {}, "application/pdf": {}},
                     "description": "The preview"},
               **problem_responses(401, 403, 404, 409, 422, 503)},
)
async def get_draft_document(contract_id: str, fmt: DocumentFormat, deps: Deps) -> Response:
    """The open period's draft as a document stamped DRAFT: what the invoice would
    say if the period closed now. Scope: `crm` or `ops`."""
    return await _draft_document(contract_id, deps, DocFormat(fmt.value))


async def _draft_document(contract_id: str, deps: AppDeps, fmt: DocFormat) -> Response:
    draft = await _draft(contract_id, deps)
    async with deps.engine.connect() as conn:
        terms = await contract_terms(conn, contract_id)
    doc = {**draft.model_dump(mode="json"), "contract_id": contract_id,
           "amount_paid": "0", "outstanding": str(draft.total)}
    return document_response(deps, doc, terms, fmt)


async def _draft(contract_id: str, deps: AppDeps) -> DraftInvoice:
    state = await get_contract(contract_id, deps)
    if state.next_boundary is None:
        raise not_found("Draft", f"contract {contract_id!r} has no open period",
                        "path.contract_id")
    t = state.terms
    periods = billing_periods(t.starts_on, t.term_end, t.billing_cycle, t.billing_anchor,
                              t.timezone, cycle_anchor=t.cycle_anchor)
    index = next((i for i, p in enumerate(periods) if p.end == state.next_boundary), None)
    if index is None:
        raise not_found("Draft", "the open period is not on the current schedule",
                        "path.contract_id")
    async with deps.engine.connect() as conn:
        # The earlier periods as the ledger's invoices billed them (None).
        computed = await compute_usage_invoice(conn, t, periods[index], None, None,
                                               is_final=index == len(periods) - 1)
        if computed.document is None:
            raise ProblemError(409, "needs-attention", "The draft cannot be priced",
                               computed.attention or "", [("", computed.attention or "")])
        doc = computed.document
        lines = [ln.model_dump(mode="json") for ln in doc.lines]
        descriptions = await line_descriptions(conn, contract_id, doc.key, lines)
    return DraftInvoice.model_validate({**doc.model_dump(), "descriptions": descriptions,
                                        "commitment": computed.commitment})
