"""The ledger behind a contract, read-only: credit history, revenue, collection.

What PostgreSQL knows and the contract's live state does not show: which
credits were granted, consumed by which invoice and expired as breakage; the
revenue recognized (the ``credits``/``revenue`` objects of ``billow
simulate``); each invoice's payments and reminders.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from activities.api_keys import Scope
from activities.ledger_history import (
    ContractRevenue,
    CreditHistory,
    InvoiceCollection,
    collection,
    contract_revenue,
    credit_history,
)
from api.deps import AppDeps, get_deps
from api.problem_examples import NO_INVOICE
from api.problems import not_found, problem_responses
from api.queries import contract_row, invoice_by_number
from api.security import require_scope

router = APIRouter()
Deps = Annotated[AppDeps, Depends(get_deps)]
_read = [Depends(require_scope(Scope.CRM))]


class ContractCollection(BaseModel):
    contract_id: str
    invoices: list[InvoiceCollection]


async def _contract(deps: AppDeps, contract_id: str) -> Any:
    async with deps.engine.connect() as conn:
        row = await contract_row(conn, contract_id)
    if row is None:
        raise not_found("Contract", f"no contract {contract_id!r}", "path.contract_id")
    return row


@router.get(
    "/v1/contracts/{contract_id}/credits",
    summary="A contract's credit history",
    response_model=CreditHistory,
    dependencies=_read,
    responses=problem_responses(401, 403, 404),
    tags=["contracts"],
)
async def get_credit_history(contract_id: str, deps: Deps) -> CreditHistory:
    """Every credit grant (what was paid for it, its cost basis, what it paid, what
    expired, the revenue it recognized and its breakage) and every movement in ledger
    order: grants, consumption per invoice, expiries, with the running balance.
    `granted = consumed + expired + balance` holds for each grant and in `summary`.
    Scope: `crm` or `ops`."""
    row = await _contract(deps, contract_id)
    async with deps.engine.connect() as conn:
        return await credit_history(conn, contract_id, row.currency,
                                    str(row.terms.get("timezone") or "UTC"))


@router.get(
    "/v1/contracts/{contract_id}/revenue",
    summary="A contract's revenue and credits summary",
    response_model=ContractRevenue,
    dependencies=_read,
    responses=problem_responses(401, 403, 404),
    tags=["contracts"],
)
async def get_revenue(contract_id: str, deps: Deps) -> ContractRevenue:
    """The contract's `credits` (`granted`, `consumed`, `expired`, `balance`) and
    `revenue` (`usage_from_credits`, `usage_billed`, `fees`, `breakage`, `total`,
    `deferred_balance`) from its journal, in the shape `billow simulate --json` prints
    them. Scope: `crm` or `ops`."""
    row = await _contract(deps, contract_id)
    async with deps.engine.connect() as conn:
        return await contract_revenue(conn, contract_id, row.currency)


@router.get(
    "/v1/contracts/{contract_id}/collection",
    summary="Payments and reminders of a contract's invoices",
    response_model=ContractCollection,
    dependencies=_read,
    responses=problem_responses(401, 403, 404),
    tags=["contracts"],
)
async def get_contract_collection(contract_id: str, deps: Deps) -> ContractCollection:
    """Each finalized invoice of the contract in number order with its payments (id,
    amount, date, method), the reminders sent (overdue, 1, 7 and 30 days after the due
    date) and any money a gateway took after it was paid another way. Scope: `crm` or
    `ops`."""
    await _contract(deps, contract_id)
    async with deps.engine.connect() as conn:
        return ContractCollection(contract_id=contract_id,
                                  invoices=await collection(conn, contract_id))


@router.get(
    "/v1/invoices/{number}/collection",
    summary="An invoice's payments and reminders",
    response_model=InvoiceCollection,
    dependencies=_read,
    responses=problem_responses(401, 403, 404, examples={404: NO_INVOICE}),
    tags=["invoices"],
)
async def get_invoice_collection(number: str, deps: Deps) -> InvoiceCollection:
    """The invoice's payments, reminders and unapplied money (see the contract's
    `collection`). Scope: `crm` or `ops`."""
    async with deps.engine.connect() as conn:
        row = await invoice_by_number(conn, number)
        if row is None:
            raise not_found("Invoice", f"no invoice {number!r}", "path.number")
        found = await collection(conn, row.contract_id, row.key)
    return found[0]
