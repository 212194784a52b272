"""Starting contract workflows: the one path the API, the CLI and
``billow simulate`` share.

Creating a contract is idempotent on its id (SPEC.md section 10): the same id
with the same terms returns the running workflow, the same id with different
terms is a conflict naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.catalog_store import load_catalog_version
from activities.ledger import register_contract_rows
from models.contract import Contract, ContractTerms, resolve_terms
from models.operations import ContractStatus, RegisterContractRequest
from workflows import search_attributes as sa
from workflows.contract import ContractWorkflow, ContractWorkflowInput


class ContractConflictError(Exception):
    def __init__(self, contract_id: str, differences: list[str]) -> None:
        self.contract_id = contract_id
        self.differences = differences
        super().__init__(
            f"contract {contract_id!r} exists with different terms: " + ", ".join(differences)
        )


@dataclass(frozen=True)
class StartedContract:
    contract_id: str
    workflow_id: str
    run_id: str | None
    created: bool
    catalog_version: int


def workflow_id(contract_id: str) -> str:
    return f"contract:{contract_id}"


def contract_digest(contract: Contract) -> str:
    canonical = json.dumps(contract.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else key
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, path)
        elif a != b:
            out.append(path)
    return out


def static_summary(terms: ContractTerms) -> str:
    return (
        f"{terms.customer.name} · {terms.plan_key} · {terms.starts_on.isoformat()} → "
        f"{terms.term_end.isoformat()}"
    )


def static_details(terms: ContractTerms) -> str:
    commitment = f"{terms.commitment.amount} {terms.currency}" if terms.commitment else "none"
    return "\n".join(
        [
            f"**Customer:** {terms.customer.name} (`{terms.customer.id}`)",
            f"**Plan:** {terms.plan_key} ({terms.currency})",
            f"**Term:** {terms.starts_on.isoformat()} → {terms.term_end.isoformat()} "
            f"({terms.term_months} months, {terms.billing_cycle.value}, "
            f"net-{terms.payment_terms_days}, timezone {terms.timezone})",
            f"**Commitment:** {commitment}",
        ]
    )


async def start_contract(
    client: Client,
    engine: AsyncEngine,
    contract: Contract,
    task_queue: str,
    catalog_version: int | None = None,
) -> StartedContract:
    """Resolve ``contract`` against its catalog version and start its workflow."""
    digest = contract_digest(contract)
    async with engine.connect() as conn:
        existing = (
            await conn.execute(
                text(
                    "SELECT terms_digest, document, catalog_version FROM contracts WHERE id = :id"
                ),
                {"id": contract.id},
            )
        ).one_or_none()
        if existing is not None:
            if existing.terms_digest != digest:
                raise ContractConflictError(
                    contract.id, _differences(existing.document, contract.model_dump(mode="json"))
                )
            catalog_version = existing.catalog_version
        version, catalog = await load_catalog_version(conn, catalog_version)
    terms = resolve_terms(contract, catalog)
    # Rows first, so usage for the contract is accepted as soon as we return;
    # both steps are idempotent, so a failed start is retried by re-creating.
    async with engine.begin() as conn:
        await register_contract_rows(
            conn,
            RegisterContractRequest(
                contract=contract, terms=terms, catalog_version=version, terms_digest=digest
            ),
        )
    wf_id = workflow_id(contract.id)
    try:
        handle: WorkflowHandle[Any, Any] = await client.start_workflow(
            ContractWorkflow.run,
            ContractWorkflowInput(
                contract=contract, terms=terms, catalog_version=version, terms_digest=digest
            ),
            id=wf_id,
            task_queue=task_queue,
            # A running workflow with this id is this contract: return it.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=static_summary(terms),
            static_details=static_details(terms),
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.CUSTOMER_ID, terms.customer.id),
                    SearchAttributePair(sa.PLAN_KEY, terms.plan_key),
                    SearchAttributePair(sa.CONTRACT_STATUS, ContractStatus.SCHEDULED.value),
                    SearchAttributePair(sa.BILLING_CYCLE, terms.billing_cycle.value),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        # The contract's workflow ran and closed: same contract, nothing to start.
        return StartedContract(contract.id, wf_id, None, False, version)
    return StartedContract(contract.id, wf_id, handle.result_run_id, existing is None, version)
