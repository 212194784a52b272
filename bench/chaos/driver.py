"""Runs the workload against one stack through the API, then waits for quiescence.

Each contract is driven by its own task: create it, send its usage at once
(inside the grace window), its amendments, then its payments as soon as the
invoices they pay show up in ``GET /v1/invoices`` (as a client would see
them), and the amendments that wait for the contract to have caught up.
Every mutating request is sent twice with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bench.chaos.client import Answer, Client
from bench.chaos.correcting import Corrector, SentCorrection
from bench.chaos.processes import Stack
from bench.chaos.settled import contract_unsettled
from bench.chaos.workload import ContractPlan, PaymentPlan, Send, Workload, payment_amount

CREATE_CONCURRENCY = 8
POLL_S = 1.0


@dataclass
class PairRecord:
    label: str
    contract_id: str
    kind: str  # catalog | create | usage | amend | pay | correct
    key: str
    valid: bool
    concurrent: bool
    answers: list[Answer]


@dataclass
class SentPayment:
    contract_id: str
    invoice_key: str
    amount: Decimal
    payment_id: str | None
    key: str


@dataclass
class RunRecord:
    name: str
    pairs: list[PairRecord] = field(default_factory=list)
    payments: list[SentPayment] = field(default_factory=list)
    amendments: list[tuple[str, str, str]] = field(default_factory=list)  # (contract, id, kind)
    corrections: list[SentCorrection] = field(default_factory=list)  # in the order sent
    created_s: dict[str, float] = field(default_factory=dict)
    usage_done_s: dict[str, float] = field(default_factory=dict)
    workload_done_s: float | None = None
    catchup_s: float | None = None  # when the first contract's grace window ended
    quiet_s: float | None = None
    not_quiet: list[str] = field(default_factory=list)  # why, when the deadline passed
    harness: list[str] = field(default_factory=list)  # timing problems of the harness itself
    stuck: list[str] = field(default_factory=list)  # contract tasks that hit the deadline


class InvoiceBoard:
    """The ledger's invoices as the API lists them, refreshed while someone waits."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.invoices: dict[tuple[str, str], dict[str, Any]] = {}
        self._changed = asyncio.Event()
        self._waiting = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> None:
        offset: int | None = 0
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        while offset is not None:
            answer = await self.client.get("/v1/invoices", {"limit": 1000, "offset": offset})
            if not answer.ok:
                return
            for inv in answer.body["invoices"]:
                seen[(inv["contract_id"], inv["key"])] = inv
            offset = answer.body.get("next_offset")
        self.invoices = seen
        self._changed.set()
        self._changed = asyncio.Event()

    async def _poll(self) -> None:
        while True:
            if self._waiting:
                await self.refresh()
            await asyncio.sleep(POLL_S)

    async def wait(self, contract_id: str, keys: list[str]) -> list[dict[str, Any]]:
        """The invoices ``keys`` of a contract once all are listed; TimeoutError at the
        client's deadline."""
        self._waiting += 1
        try:
            while True:
                found = [self.invoices.get((contract_id, k)) for k in keys]
                if all(f is not None for f in found):
                    return [f for f in found if f is not None]
                left = self.client.deadline - time.monotonic()
                if left <= 0:
                    missing = [k for k, f in zip(keys, found, strict=True) if f is None]
                    raise TimeoutError(f"{contract_id}: {', '.join(missing)} never listed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        finally:
            self._waiting -= 1


class Driver:
    def __init__(self, stack: Stack, workload: Workload, deadline_s: float) -> None:
        self.stack = stack
        self.workload = workload
        self.started = time.monotonic()
        self.client = Client(stack.api_url, stack.api_key, self.started + deadline_s,
                             self.started)
        self.board = InvoiceBoard(self.client)
        self.record = RunRecord(stack.name)
        self._step = "starting"
        self.first_created: float | None = None  # monotonic, the first contract's creation
        self.workload_started = asyncio.Event()  # contracts are being created
        self.contract_created = asyncio.Event()  # the first contract exists
        self._creating = asyncio.Semaphore(CREATE_CONCURRENCY)
        self._to_create = len(workload.contracts)
        self.corrector = Corrector(self)

    @property
    def grace_s(self) -> float:
        return float(self.workload.grace_hours) * 3600

    @property
    def catchup_at(self) -> float | None:
        """When the first contract's past periods start closing (monotonic)."""
        return None if self.first_created is None else self.first_created + self.grace_s

    @property
    def phase(self) -> str:
        """What the workload is doing now (faults are labelled with it)."""
        at = self.catchup_at
        if self._step in ("create+usage", "amend+pay") and at is not None:
            return f"{self._step}, {'catch-up' if time.monotonic() >= at else 'grace window'}"
        return self._step

    def at(self) -> float:
        return round(time.monotonic() - self.started, 2)

    # --- sending ----------------------------------------------------------------------

    async def pair(self, send: Send, kind: str, contract_id: str) -> PairRecord:
        """Send ``send`` twice with its key (concurrently or one after the other)."""
        async def once() -> Answer:
            return await self.client.send(send.method, send.path, send.body, send.key, kind,
                                          f"{send.label} {contract_id}")

        if send.concurrent:
            answers = list(await asyncio.gather(once(), once()))
        else:
            answers = [await once(), await once()]
        rec = PairRecord(send.label, contract_id, kind, send.key, send.valid, send.concurrent,
                         answers)
        self.record.pairs.append(rec)
        self._judge(rec, send)
        return rec

    def _judge(self, rec: PairRecord, send: Send) -> None:
        label = f"{send.label} {rec.contract_id} (key {send.key})"
        for a in rec.answers:
            if send.valid and not a.ok:
                self.client.violation(f"valid request refused ({a.status})", label, str(a.body))
            if not send.valid and not 400 <= a.status < 500:
                self.client.violation(f"invalid request answered {a.status}", label,
                                      str(a.body))
        first, second = rec.answers
        if first.ok and second.ok and first.body != second.body:
            self.client.violation("retry answered differently", label,
                                  f"first: {first.body}\nsecond: {second.body}")

    # --- the workload -----------------------------------------------------------------

    async def run(self, faults_done: Awaitable[Any] | None = None) -> RunRecord:
        self.board.start()
        try:
            self._step = "catalog"
            await self.pair(Send("apply catalog", "PUT", "/v1/catalog", self.workload.catalog,
                                 f"catalog-{self.workload.seed}", concurrent=True),
                            "catalog", "-")
            self._step = "create+usage"
            self.workload_started.set()
            await asyncio.gather(*(self._contract(p) for p in self.workload.contracts))
            self.record.workload_done_s = self.at()
            self._step = "settling"
            if faults_done is not None:
                await faults_done
            await self._wait_quiet()
        finally:
            await self.board.stop()
            await self.client.close()
        return self.record

    async def _contract(self, plan: ContractPlan) -> None:
        try:
            await self._drive(plan)
        except TimeoutError as exc:
            self.record.stuck.append(str(exc))

    async def _drive(self, plan: ContractPlan) -> None:
        cid = plan.contract_id
        async with self._creating:
            await self.pair(Send("create", "POST", "/v1/contracts", plan.document,
                                 f"create-{cid}", concurrent=plan.index % 3 == 0),
                            "create", cid)
            self.record.created_s[cid] = self.at()
            if self.first_created is None:
                self.first_created = time.monotonic()
                self.record.catchup_s = round(self.at() + self.grace_s, 2)
                self.contract_created.set()
            for n, batch in enumerate(plan.usage_batches):
                await self.pair(Send(f"usage batch {n}", "POST", "/v1/usage",
                                     {"events": batch}, f"usage-{cid}-{n}",
                                     concurrent=n % 2 == 1), "usage", cid)
            self.record.usage_done_s[cid] = self.at()
        late = self.record.usage_done_s[cid] - self.record.created_s[cid]
        grace = self.grace_s
        if late > grace * 0.8:
            self.record.harness.append(
                f"{cid}: usage finished {late:.1f} s after creation, grace is {grace:.0f} s: "
                "its events may be late (a harness timing problem, not billow's)")
        self._to_create -= 1
        if self._to_create == 0:
            self._step = "amend+pay"
        if plan.amend_early:
            await self._term_opened(cid)
        for send in plan.amend_early:
            await self._amend(send, cid)
        await self._payments(plan)
        if plan.amend_late:
            await self.board.wait(cid, plan.past_usage_keys)
            for send in plan.amend_late:
                await self._amend(send, cid)
        if plan.corrections:
            await self.corrector.run(plan)

    async def _term_opened(self, cid: str) -> None:
        """Wait until the contract's workflow has opened its term.

        An amendment that arrives before (a terminate, say) changes what the term's
        opening issues: the commitment invoice's period and the grants' expiry are
        the term as known then (SPEC.md sections 1 and 6). That is timing, not a
        fault: the control and the fault run must send it at the same point.
        Once the state says ``active`` the opening holds the contract's lock, and
        every later update is applied after it.
        """
        while True:
            answer = await self.client.get(f"/v1/contracts/{cid}")
            if answer.ok and answer.body.get("status") != "scheduled":
                return
            if time.monotonic() > self.client.deadline:
                raise TimeoutError(f"{cid}: its term never opened")
            await asyncio.sleep(0.3)

    async def _amend(self, send: Send, cid: str) -> None:
        rec = await self.pair(send, "amend", cid)
        if send.valid and any(a.ok for a in rec.answers):
            self.record.amendments.append((cid, str(send.body["id"]), str(send.body["kind"])))

    async def _payments(self, plan: ContractPlan) -> None:
        cid = plan.contract_id
        planned: dict[str, Decimal] = {}
        for p in plan.payments:
            (inv,) = await self.board.wait(cid, [p.invoice_key])
            total = Decimal(inv["total"])
            if p.invalid == "overpay":
                over = {"amount": str(total + 1), "payment_id": p.payment_id or p.key}
                await self._pay(p, inv, over, valid=False, key=p.key)
                continue
            earlier = planned.get(p.invoice_key, Decimal(0))
            amount = payment_amount(p, total, earlier)
            if amount <= 0:
                continue  # nothing left to pay (a zero invoice is paid at issue)
            planned[p.invoice_key] = earlier + amount
            body: dict[str, Any] = {"amount": str(amount)}
            if p.payment_id is not None:
                body["payment_id"] = p.payment_id
            rec = await self._pay(p, inv, body, valid=True, key=p.key)
            if any(a.ok for a in rec.answers):
                self.record.payments.append(
                    SentPayment(cid, p.invoice_key, amount, p.payment_id, p.key))
            if p.invalid == "key_reuse":
                other = amount - Decimal("0.01") if amount > Decimal("0.01") else amount + 1
                await self._pay(p, inv, {**body, "amount": str(other)}, valid=False, key=p.key)

    async def _pay(self, p: PaymentPlan, inv: dict[str, Any], body: dict[str, Any], valid: bool,
                   key: str) -> PairRecord:
        label = f"pay {p.invoice_key}" + ("" if valid else f" ({p.invalid})")
        send = Send(label, "POST", f"/v1/invoices/{inv['number']}/payments", body, key,
                    concurrent=p.concurrent, valid=valid)
        return await self.pair(send, "pay", inv["contract_id"])

    # --- quiescence -------------------------------------------------------------------

    async def _wait_quiet(self) -> None:
        """Until every contract has caught up and its workflow agrees with the ledger
        twice in a row, or the client's deadline passes."""
        confirmed = 0
        while True:
            try:
                problems = await self._unsettled()
            except TimeoutError as exc:
                self.record.not_quiet = [str(exc)]
                return
            if not problems:
                confirmed += 1
                if confirmed == 2:
                    self.record.quiet_s = self.at()
                    return
            else:
                confirmed = 0
                self.record.not_quiet = problems
            if time.monotonic() > self.client.deadline:
                return
            await asyncio.sleep(2.0)

    async def _unsettled(self) -> list[str]:
        await self.board.refresh()
        limit = asyncio.Semaphore(8)

        async def one(plan: ContractPlan) -> list[str]:
            async with limit:
                return await self._contract_unsettled(plan)

        found = await asyncio.gather(*(one(p) for p in self.workload.contracts))
        return [p for ps in found for p in ps]

    async def _contract_unsettled(self, plan: ContractPlan) -> list[str]:
        cid = plan.contract_id
        answer = await self.client.get(f"/v1/contracts/{cid}")
        if not answer.ok:
            return [f"{cid}: GET answered {answer.status}"]
        ledger = {k: v for (c, k), v in self.board.invoices.items() if c == cid}
        return contract_unsettled(plan, answer.body, ledger, self.workload.today)

