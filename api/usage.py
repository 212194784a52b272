"""``POST /v1/usage``: usage ingestion in batches of up to 10,000 events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Response

from activities.api_keys import Scope
from activities.usage_ingest import MAX_BATCH, BatchTooLarge, ingest_usage
from api.deps import AppDeps, get_deps
from api.idempotency import IdempotencyKeyHeader
from api.problem_examples import USAGE_TOO_LARGE
from api.problems import ProblemError, problem_responses
from api.schemas import USAGE_EXAMPLES, UsageBatch, UsageReport
from api.security import require_scope

router = APIRouter(prefix="/v1", tags=["usage"])
Deps = Annotated[AppDeps, Depends(get_deps)]


def _too_large(size: int) -> ProblemError:
    return ProblemError(
        413, "batch-too-large", "Batch too large",
        f"a batch carries at most {MAX_BATCH} events, this one has {size}; split it",
        [("events", f"{size} events; at most {MAX_BATCH} per batch")],
    )


@router.post(
    "/usage",
    summary="Send a batch of usage events",
    response_model=UsageReport,
    dependencies=[Depends(require_scope(Scope.USAGE))],
    responses=problem_responses(401, 403, 413, 422, examples={413: USAGE_TOO_LARGE}),
)
async def post_usage(
    batch: Annotated[UsageBatch, Body(openapi_examples=USAGE_EXAMPLES)], deps: Deps,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Store up to 10,000 events (body up to 5 MB) in one transaction and report each:

    - `accepted`: stored now;
    - `duplicate`: its id was stored before (events are deduplicated by id for all time)
      or appeared earlier in this batch, with the same content — a resend, stored once;
    - `conflict`: its id was stored (or appeared earlier in this batch) with other
      content; the reason names each differing field, nothing is stored or updated;
    - `rejected`: invalid (the reason names the field), unknown customer, or a meter the
      customer's contracts do not know.

    One bad event does not reject the batch. More than 10,000 events is a **413** and
    nothing is stored.

    Scope: `usage` or `ops`.
    """
    if len(batch.events) > MAX_BATCH:
        raise _too_large(len(batch.events))
    try:
        async with deps.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            report = await ingest_usage(raw, batch.events)
            await conn.commit()
    except BatchTooLarge as exc:
        raise _too_large(exc.size) from exc
    # The report already has `UsageReport`'s shape: serialize it once, in
    # Rust. Converting and re-validating 10,000 results cost about 60 ms, half
    # of what storing them costs.
    return Response(report.model_dump_json(), media_type="application/json")
