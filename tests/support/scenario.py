"""Drive one contract through the real workflow on a time-skipping server.

``ContractRun`` applies a catalog, runs a worker in-process, creates the
contract as the API does, and lets a test skip time, send amendments,
payments and usage, and read back the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import yaml
from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Interceptor, Worker

from activities.catalog_store import apply_catalog
from activities.payments import PaymentGateway, SimulatedCardGateway
from models.amendments import parse_amendment
from models.catalog import Catalog, load_catalog
from models.contract import Contract, load_contract
from models.corrections import Correction, CorrectionResult, correct_update_id
from models.operations import PaymentResult
from worker.contract_service import start_contract
from worker.main import build_worker
from worker.simulate import advance_to, contract_report, ingest_all, settle
from workflows.contract import AmendmentResult, ContractView, ContractWorkflow, PaymentInput

TASK_QUEUE = "scenario"
CORRECTION: TypeAdapter[Correction] = TypeAdapter(Correction)

PRO_CATALOG = yaml.safe_load(
    """
meters:
  - key: tokens
    name: LLM tokens
    aggregation: sum
    group_by: [model]
    rate_card:
      - match: {model: gpt-4}
        unit_price: "0.03"
      - match: {model: gpt-3.5}
        unit_price: "0.002"
  - key: requests
    name: API requests
    aggregation: sum
    group_by: [region]
    rate_card:
      - match: {region: eu}
        unit_price: "0.0012"
      - match: {}
        unit_price: "0.001"
plans:
  - key: pro
    name: Pro Plan
    currency: USD
    meters: [tokens, requests]
    billing_cycle: monthly
    payment_terms_days: 30
    auto_pay: false
    recurring_fees:
      - key: platform
        name: Platform fee
        monthly_amount: "500.00"
"""
)


def contract_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "c-1",
        "customer": {"id": "cust-1", "name": "Customer One"},
        "plan": "pro",
        "starts_on": "2027-01-01",
        "term_months": 12,
    }
    doc.update(overrides)
    return doc


def at(d: str | date, hour: int = 0) -> datetime:
    day = date.fromisoformat(d) if isinstance(d, str) else d
    return datetime.combine(day, time(hour), tzinfo=UTC)


def event(
    eid: str,
    ts: str | datetime,
    quantity: str,
    meter: str = "tokens",
    customer: str = "cust-1",
    **dims: str,
) -> dict[str, Any]:
    if not dims:
        dims = {"model": "gpt-4"} if meter == "tokens" else {"region": "us"}
    stamp = ts if isinstance(ts, str) else ts.isoformat()
    return {
        "id": eid,
        "customer": customer,
        "meter": meter,
        "timestamp": stamp,
        "quantity": quantity,
        "dimensions": dims,
    }


class ContractRun:
    def __init__(
        self,
        env: WorkflowEnvironment,
        engine: AsyncEngine,
        contract: dict[str, Any],
        catalog: dict[str, Any] | None = None,
        gateway: PaymentGateway | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.env = env
        self.interceptors = interceptors  # the worker's (tests that watch requests)
        self.engine = engine
        self.contract: Contract = load_contract(contract)
        self.catalog: Catalog = load_catalog(catalog or PRO_CATALOG)
        self.gateway = gateway or SimulatedCardGateway()
        self._worker: Worker | None = None
        self.handle: WorkflowHandle[Any, Any] | None = None

    async def __aenter__(self) -> ContractRun:
        async with self.engine.begin() as conn:
            self.catalog_version, _ = await apply_catalog(conn, self.catalog)
        await self.start_worker()
        started = await start_contract(
            self.env.client,
            self.engine,
            self.contract,
            TASK_QUEUE,
            catalog_version=self.catalog_version,
        )
        self.handle = self.env.client.get_workflow_handle(started.workflow_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_worker()

    async def start_worker(self) -> None:
        self._worker = build_worker(self.env.client, self.engine, TASK_QUEUE, self.gateway,
                                    interceptors=self.interceptors)
        await self._worker.__aenter__()

    async def stop_worker(self) -> None:
        if self._worker is not None:
            await self._worker.__aexit__(None, None, None)
            self._worker = None

    # --- driving ---------------------------------------------------------------
    async def advance_to(self, instant: datetime | str) -> None:
        await advance_to(self.env, at(instant) if isinstance(instant, str) else instant)

    async def send_usage(self, events: Sequence[dict[str, Any]]) -> None:
        report = await ingest_all(self.engine, list(events))
        assert report.rejected == 0, report.results

    async def amend(self, amendment: dict[str, Any]) -> AmendmentResult:
        assert self.handle is not None
        await settle(self.env, self.handle)
        result: AmendmentResult = await self.handle.execute_update(
            ContractWorkflow.amend, parse_amendment(amendment)
        )
        return result

    async def correct(self, correction: dict[str, Any], *, settled: bool = False
                      ) -> CorrectionResult:
        """Send a void, reissue or credit as the API does (update id from its content).

        ``settled``: the caller let the workflow settle already (sends run
        concurrently must not sleep the time-skipping server concurrently).
        """
        assert self.handle is not None
        if not settled:
            await settle(self.env, self.handle)
        parsed = CORRECTION.validate_python(correction)
        result: CorrectionResult = await self.handle.execute_update(
            ContractWorkflow.correct, parsed, id=correct_update_id(parsed)
        )
        return result

    async def pay(self, invoice: str, amount: str, payment_id: str | None = None) -> PaymentResult:
        assert self.handle is not None
        await settle(self.env, self.handle)
        result: PaymentResult = await self.handle.execute_update(
            ContractWorkflow.pay,
            PaymentInput(invoice=invoice, amount=Decimal(amount), payment_id=payment_id),
        )
        return result

    # --- reading ---------------------------------------------------------------
    async def state(self) -> ContractView:
        assert self.handle is not None
        view: ContractView = await self.handle.query(ContractWorkflow.query_state)
        return view

    async def report(self) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            return await contract_report(
                conn, self.contract.id, self.catalog.plan(self.contract.plan).currency
            )

    async def invoices(self) -> list[dict[str, Any]]:
        return list((await self.report())["invoices"])

    async def invoice(self, key: str) -> dict[str, Any]:
        found = [i for i in await self.invoices() if i["key"] == key]
        assert found, f"no finalized invoice {key}"
        return found[0]

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(text(sql), params)

    async def history_length(self) -> int:
        """Events over every run of this workflow id (continue-as-new included)."""
        assert self.handle is not None
        total = 0
        run_id: str | None = None  # None: the latest run
        while True:
            h = self.env.client.get_workflow_handle(self.handle.id, run_id=run_id)
            hist = await h.fetch_history()
            total += len(hist.events)
            first = hist.events[0].workflow_execution_started_event_attributes
            run_id = first.continued_execution_run_id or None
            if run_id is None:
                break
        return total


def lines_of(invoice: dict[str, Any], kind: str = "usage") -> list[tuple[Any, ...]]:
    return [
        (
            ln.get("meter") or ln.get("fee"),
            tuple(sorted((ln.get("dimensions") or {}).items())),
            Decimal(ln["quantity"]) if ln.get("quantity") is not None else None,
            Decimal(ln["amount"]),
        )
        for ln in invoice["lines"]
        if ln["kind"] == kind
    ]


def ts_delta(days: int = 0, hours: int = 0) -> timedelta:
    return timedelta(days=days, hours=hours)


async def event_type_counts(env: WorkflowEnvironment, workflow_id: str) -> dict[str, int]:
    from collections import Counter

    from temporalio.api.enums.v1 import EventType

    counts: Counter[str] = Counter()
    run_id: str | None = None
    while True:
        hist = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        counts.update(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in hist.events)
        run_id = (
            hist.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
            or None
        )
        if run_id is None:
            return dict(counts.most_common())


async def event_sequence(env: WorkflowEnvironment, workflow_id: str) -> list[str]:
    from temporalio.api.enums.v1 import EventType

    run_id = None
    while True:
        hist = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        run_id = (
            hist.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
            or None
        )
        if run_id is None:
            break
    out = []
    for e in hist.events:
        name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
        if name == "TIMER_STARTED":
            name += f" {e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()}"
        out.append(name)
    return out
