"""Starting contract workflows: the one path the API, the CLI and
``billow simulate`` share.

Creating a contract is idempotent on its id (SPEC.md section 10): the same id
with the same terms returns the running workflow, the same id with different
terms is a conflict naming what differs. Registration (the rows) is decided
under a lock on the contract id, so of two concurrent creates with different
terms exactly one is "created" and the other a conflict. A start that fails
ambiguously keeps the rows: the workflow may be running and needs them, and
creating again is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.catalog_store import load_catalog_version
from activities.contract_overlap import overlapping_contract
from activities.contract_rows import register_contract_rows
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


class ContractOverlapError(Exception):
    """Another contract of the customer bills a shared meter during this term."""

    def __init__(self, contract_id: str, other_id: str, customer_id: str) -> None:
        self.contract_id = contract_id
        self.other_id = other_id
        self.customer_id = customer_id
        super().__init__(
            f"contract {other_id!r} of customer {customer_id!r} overlaps the term of "
            f"{contract_id!r} and bills one of its meters: usage would be billed twice"
        )


class ContractStartUncertainError(Exception):
    """Starting the workflow failed in a way that does not say whether it started.

    The contract's rows are kept; repeating the create (same body) is safe and
    finds out.
    """

    def __init__(self, contract_id: str, cause: BaseException) -> None:
        self.contract_id = contract_id
        self.cause = cause
        super().__init__(
            f"starting the workflow of contract {contract_id!r} failed "
            f"({cause.__class__.__name__}: {cause}); it may have started"
        )


log = logging.getLogger("billow.contracts")

# RPC statuses with which Temporal refuses a start before accepting it.
_REFUSED = frozenset({
    RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.NOT_FOUND, RPCStatusCode.ALREADY_EXISTS,
    RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.OUT_OF_RANGE, RPCStatusCode.UNIMPLEMENTED,
})


@dataclass(frozen=True)
class StartedContract:
    contract_id: str
    workflow_id: str
    run_id: str | None
    created: bool
    catalog_version: int
    # The terms the rows hold (resolved at registration): the API's answer
    # computes the first close from them without reading the row back.
    terms: ContractTerms | None = None


def workflow_id(contract_id: str) -> str:
    return f"contract:{contract_id}"


def contract_digest(contract: Contract) -> str:
    data = contract.model_dump(mode="json")
    # Fields added after contracts were first stored count only when set, so a
    # contract sent again after an upgrade keeps its digest (no false conflict).
    if data.get("minimum_commitment") is None:
        data.pop("minimum_commitment", None)
    for override in data.get("rate_overrides", []):
        for key in ("minimum_amount", "maximum_amount"):
            if override.get(key) is None:
                override.pop(key, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
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
            *_minimum_details(terms),
        ]
    )


def _minimum_details(terms: ContractTerms) -> list[str]:
    """The minimum commitment and per-meter limits at creation (SPEC 12), if any."""
    out: list[str] = []
    mc = terms.minimum_commitment
    if mc is not None:
        prorated = ", prorated on termination" if mc.prorate_on_termination else ""
        out.append(f"**Minimum commitment:** {mc.amount} {terms.currency} per "
                   f"{mc.per.value.replace('_', ' ')}{prorated}")
    limits = [f"{lim.meter} ≥ {lim.minimum_amount}" for lim in terms.meter_limits
              if lim.minimum_amount is not None]
    limits += [f"{lim.meter} ≤ {lim.maximum_amount}" for lim in terms.meter_limits
               if lim.maximum_amount is not None]
    limits += [f"{o.meter} ≥ {o.minimum_amount}" for o in terms.rate_overrides
               if o.is_limit and o.minimum_amount is not None]
    limits += [f"{o.meter} ≤ {o.maximum_amount}" for o in terms.rate_overrides
               if o.is_limit and o.maximum_amount is not None]
    if limits:
        out.append(f"**Spend limits per period:** {', '.join(limits)} {terms.currency}")
    return out


@dataclass(frozen=True)
class _Registered:
    terms: ContractTerms
    catalog_version: int
    digest: str
    created: bool  # this call inserted the contract's rows


async def _lock_contract_id(conn: AsyncConnection, contract_id: str) -> None:
    """Serialize creates of one contract id until the transaction ends.

    The row may not exist yet, so a row lock cannot do it: two concurrent
    creates with different terms would both find no row and both answer
    "created" (one of them for terms that never exist).
    """
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                       {"key": f"billow:contract-create:{contract_id}"})


async def register_contract(
    engine: AsyncEngine, contract: Contract, catalog_version: int | None = None
) -> _Registered:
    """Register the contract's rows, or find them (idempotent on the contract id).

    One transaction, holding the contract id's lock: the same id with other
    terms is a `ContractConflictError`; a new contract whose term overlaps
    another contract of its customer on a shared meter is a
    `ContractOverlapError` (SPEC.md section 1). Safe to repeat.
    """
    digest = contract_digest(contract)
    async with engine.begin() as conn:
        await _lock_contract_id(conn, contract.id)
        existing = (
            await conn.execute(
                text("SELECT terms_digest, document, catalog_version FROM contracts "
                     "WHERE id = :id"),
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
        if existing is None:
            other = await overlapping_contract(
                conn, terms.customer.id, [m.key for m in terms.meters],
                terms.term_start_at, terms.term_end_at, exclude_id=contract.id)
            if other is not None:
                raise ContractOverlapError(contract.id, other, terms.customer.id)
        # Rows first, so usage for the contract is accepted as soon as we return.
        await register_contract_rows(
            conn,
            RegisterContractRequest(
                contract=contract, terms=terms, catalog_version=version, terms_digest=digest
            ),
        )
    return _Registered(terms, version, digest, existing is None)


def start_refused(exc: BaseException) -> bool:
    """True when Temporal definitively refused a start (nothing was started).

    Anything else (a deadline, a dropped connection, an unknown error) is
    ambiguous: the server may have accepted the start before the answer got
    lost, so the contract's rows must stay.
    """
    return isinstance(exc, RPCError) and exc.status in _REFUSED


async def start_contract(
    client: Client,
    engine: AsyncEngine,
    contract: Contract,
    task_queue: str,
    catalog_version: int | None = None,
    rpc_timeout: timedelta | None = None,
) -> StartedContract:
    """Resolve ``contract`` against its catalog version and start its workflow.

    Idempotent: repeating it after any failure is safe. When the start fails
    ambiguously it raises `ContractStartUncertainError` and keeps the rows (a
    started workflow needs them); when Temporal refused the start, the rows
    this call created are removed again and the RPC error is raised.
    """
    reg = await register_contract(engine, contract, catalog_version)
    terms, version = reg.terms, reg.catalog_version
    wf_id = workflow_id(contract.id)
    try:
        handle: WorkflowHandle[Any, Any] = await client.start_workflow(
            ContractWorkflow.run,
            ContractWorkflowInput(
                contract=contract, terms=terms, catalog_version=version, terms_digest=reg.digest
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
            rpc_timeout=rpc_timeout,
        )
    except WorkflowAlreadyStartedError:
        # The contract's workflow ran and closed: same contract, nothing to start.
        return StartedContract(contract.id, wf_id, None, False, version)
    except Exception as exc:
        if not start_refused(exc):
            raise ContractStartUncertainError(contract.id, exc) from exc
        if reg.created:
            await _forget_refused(client, engine, contract)
        raise
    return StartedContract(contract.id, wf_id, handle.result_run_id, reg.created, version,
                           terms)


async def _forget_refused(client: Client, engine: AsyncEngine, contract: Contract) -> None:
    """Remove the rows of a new contract whose start Temporal refused.

    Only when no workflow of the contract exists (a concurrent create of the
    same contract may have started one meanwhile, and a started workflow
    fails every ledger step without its rows), and only rows nothing else
    refers to yet. Under the contract id's lock, like registration.
    """
    try:
        await client.get_workflow_handle(workflow_id(contract.id)).describe()
        return  # a workflow exists: keep its rows
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            log.warning("not removing the rows of contract %s: cannot tell whether its "
                        "workflow exists (%s)", contract.id, exc)
            return
    try:
        async with engine.begin() as conn:
            await _lock_contract_id(conn, contract.id)
            # Its first period's (empty) draft goes with it; nothing else may exist.
            await conn.execute(
                text("DELETE FROM invoices WHERE contract_id = :id AND status = 'draft' "
                     "AND number IS NULL AND NOT EXISTS (SELECT 1 FROM credit_grants "
                     "WHERE contract_id = :id) AND NOT EXISTS "
                     "(SELECT 1 FROM invoices WHERE contract_id = :id AND status <> 'draft')"),
                {"id": contract.id},
            )
            await conn.execute(
                text("DELETE FROM contracts WHERE id = :id AND NOT EXISTS "
                     "(SELECT 1 FROM invoices WHERE contract_id = :id) AND NOT EXISTS "
                     "(SELECT 1 FROM credit_grants WHERE contract_id = :id) AND NOT EXISTS "
                     "(SELECT 1 FROM amendments WHERE contract_id = :id)"),
                {"id": contract.id},
            )
            await conn.execute(
                text("DELETE FROM customers WHERE id = :c AND NOT EXISTS "
                     "(SELECT 1 FROM contracts WHERE customer_id = :c) AND NOT EXISTS "
                     "(SELECT 1 FROM usage_events WHERE customer_id = :c)"),
                {"c": contract.customer.id},
            )
    except Exception:
        log.exception("could not remove the rows of unstarted contract %s", contract.id)
