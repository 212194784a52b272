"""``/v1/catalog``: apply catalog documents (versioned, append-only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response

from activities.api_keys import Scope
from activities.catalog_store import apply_catalog, load_catalog_version
from api.deps import AppDeps, get_deps
from api.idempotency import IdempotencyKeyHeader
from api.problems import not_found, problem_responses
from api.schemas import CATALOG_EXAMPLE, CatalogApplied, CatalogVersionOut
from api.security import require_scope
from models.catalog import Catalog

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])
Deps = Annotated[AppDeps, Depends(get_deps)]
_ops = [Depends(require_scope(Scope.OPS))]


@router.put(
    "",
    summary="Apply a catalog document",
    response_model=CatalogApplied,
    status_code=201,
    dependencies=_ops,
    responses={200: {"description": "An identical document was already applied",
                     "model": CatalogApplied,
                     "content": {"application/json": {"example": {
                         "version": 2, "created": False, "meters": ["tokens", "requests"],
                         "plans": ["pro"]}}}},
               **problem_responses(401, 403, 413, 422)},
)
async def put_catalog(
    catalog: Annotated[Catalog, Body(openapi_examples={
        "acme": {"summary": "The Pro plan of the worked example (docs/file-formats.md)",
                 "value": CATALOG_EXAMPLE}})],
    response: Response,
    deps: Deps,
    idempotency_key: IdempotencyKeyHeader = None,
) -> CatalogApplied:
    """Validate and store a catalog (meters, rate cards, plans; docs/file-formats.md).

    A new document becomes a new version (**201**); re-applying an identical document
    returns its existing version (**200**, `created: false`). Versions never change:
    contracts stay billed by the version they were created under; new contracts use the
    latest. Scope: `ops`.
    """
    async with deps.engine.begin() as conn:
        version, created = await apply_catalog(conn, catalog)
    response.status_code = 201 if created else 200
    return CatalogApplied(version=version, created=created,
                          meters=[m.key for m in catalog.meters],
                          plans=[p.key for p in catalog.plans])


@router.get(
    "",
    summary="Read a catalog version",
    response_model=CatalogVersionOut,
    dependencies=_ops,
    responses=problem_responses(401, 403, 404, 422),
)
async def get_catalog(
    deps: Deps,
    version: Annotated[int | None, Query(ge=1, description="Default: the latest.")] = None,
) -> CatalogVersionOut:
    """The catalog document of a version (the latest by default). Scope: `ops`."""
    async with deps.engine.connect() as conn:
        try:
            number, catalog = await load_catalog_version(conn, version)
        except LookupError as exc:
            raise not_found("Catalog", str(exc), "query.version" if version else "") from exc
    return CatalogVersionOut(version=number, catalog=catalog.model_dump(mode="json"))
