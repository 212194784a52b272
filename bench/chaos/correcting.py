"""Sends a contract's planned corrections (`correction_plan`) once it has settled.

A correction is resolved against the invoice as the API shows it then (its
status, lines and amounts) and against the grant a commitment or top-up
invoice sold (`GET /v1/contracts/{id}/credits`), so an amount is always one
the rules allow. Both runs resolve it from the same settled ledger, so they
send the same bodies; a correction whose invoice is not in the state it
needs (a usage invoice paid at issue cannot be voided) is skipped, and the
skip is recorded and compared like a send.

Every send goes through `Driver.pair` (twice with one ``Idempotency-Key``,
retried through faults with the same key and body), then a valid one is sent
once more with a fresh key: the correction id alone must give the first
answer again.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

from bench.chaos.correction_plan import CorrectionPlan
from bench.chaos.settled import contract_unsettled
from bench.chaos.workload import ContractPlan, Send

if TYPE_CHECKING:
    from bench.chaos.driver import Driver

_CENT = Decimal("0.01")
_USAGE_KINDS = frozenset({"usage", "late_usage", "minimum", "maximum"})
# The instant a wait label (workflows/wait_labels.py) names: "... at 2027-01-16 00:00 UTC"
# or "sleep until [term start] 2027-01-17 ..." (an invoice key in it is a date too).
_WAKE_AT = re.compile(r" at (\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}) UTC")
_WAKE_ON = re.compile(r"^sleep until (?:term start )?(\d{4}-\d{2}-\d{2})")
SETTLE_POLL_S = 1.0  # each poll is a workflow query: keep the load low


@dataclass
class SentCorrection:
    """One planned correction as this run resolved and sent it."""

    contract_id: str
    correction_id: str
    key: str
    action: str
    invoice_key: str
    invalid: str | None
    body: dict[str, Any] | None = None  # None: skipped
    skipped: str | None = None
    status: int | None = None  # of the first answer
    answer: Any = None  # the first answer's body

    @property
    def applied(self) -> bool:
        """Told the client it took effect."""
        return self.invalid is None and self.status is not None and 200 <= self.status < 300


def _down(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT, rounding=ROUND_DOWN)


class Corrector:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.client = driver.client

    async def run(self, plan: ContractPlan) -> None:
        # The shared invoice board first (one poll for all contracts), then this one.
        await self.driver.board.wait(plan.contract_id, plan.past_usage_keys)
        await self.settled(plan)
        sent: dict[str, dict[str, Any]] = {}  # correction id -> the body applied
        for c in plan.corrections:
            await self._one(plan, c, sent)

    # --- waiting ----------------------------------------------------------------------

    async def settled(self, plan: ContractPlan) -> None:
        """Until the contract has caught up, agrees with the ledger and its workflow
        sleeps until a future instant, twice in a row (TimeoutError at the deadline)."""
        calm = 0
        while True:
            problems = await self._unsettled(plan)
            calm = 0 if problems else calm + 1
            if calm == 2:
                return
            if time.monotonic() > self.client.deadline:
                raise TimeoutError(f"{plan.contract_id}: never settled for its corrections: "
                                   + "; ".join(problems[:3]))
            await asyncio.sleep(SETTLE_POLL_S)

    async def _unsettled(self, plan: ContractPlan) -> list[str]:
        cid = plan.contract_id
        answer = await self.client.get(f"/v1/contracts/{cid}")
        if not answer.ok:
            return [f"{cid}: GET answered {answer.status}"]
        state = answer.body
        if state.get("source") != "workflow":
            return [f"{cid}: read from the {state.get('source')} (the workflow did not answer)"]
        waiting = state.get("waiting_for")
        if waiting is None or not _future(waiting):
            return [f"{cid}: its workflow is working ({waiting})"]
        ledger = await self._ledger(cid)
        if ledger is None:
            return [f"{cid}: its invoices could not be listed"]
        return contract_unsettled(plan, state, ledger, self.driver.workload.today)

    async def _ledger(self, cid: str) -> dict[str, dict[str, Any]] | None:
        answer = await self.client.get("/v1/invoices", {"contract": cid, "limit": 1000})
        if not answer.ok:
            return None
        return {i["key"]: i for i in answer.body["invoices"]}

    # --- one correction ---------------------------------------------------------------

    async def _one(self, plan: ContractPlan, c: CorrectionPlan,
                   sent: dict[str, dict[str, Any]]) -> None:
        cid = plan.contract_id
        rec = SentCorrection(cid, c.correction_id, c.key, c.action, c.invoice_key, c.invalid)
        self.driver.record.corrections.append(rec)
        ledger = await self._ledger(cid)
        inv = None if ledger is None else ledger.get(c.invoice_key)
        if ledger is None:
            raise TimeoutError(f"{cid}: invoices not listed for its corrections")
        if inv is None or inv.get("number") is None:
            rec.skipped = f"{c.invoice_key} is not finalized"
            return
        body, why = await self._body(c, inv, sent)
        if body is None:
            rec.skipped = why
            return
        rec.body = body
        path = {"void": "void", "reissue": "reissue", "credit": "credit-notes"}[c.action]
        label = f"{c.action} {c.invoice_key}" + (f" ({c.invalid})" if c.invalid else "")
        send = Send(label, "POST", f"/v1/invoices/{inv['number']}/{path}", body, c.key,
                    concurrent=c.concurrent, valid=c.valid)
        pair = await self.driver.pair(send, "correct", cid)
        first = pair.answers[0]
        rec.status, rec.answer = first.status, first.body
        if not rec.applied:
            return
        sent[c.correction_id] = body
        # The correction id alone (a fresh Idempotency-Key) must give the first answer.
        again = await self.client.send("POST", send.path, body, f"{c.key}:again", "correct",
                                       f"{label} {cid} resent")
        if not again.ok or again.body != first.body:
            self.client.violation("correction resent under its id answered differently",
                                  f"{label} {cid} (id {c.correction_id})",
                                  f"first: {first.body}\nresent ({again.status}): {again.body}")

    async def _body(self, c: CorrectionPlan, inv: dict[str, Any],
                    sent: dict[str, dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
        """The request body, or None and why it is skipped."""
        status = inv["status"]
        paid, credited = Decimal(inv["amount_paid"]), Decimal(inv.get("credited") or 0)
        if c.invalid == "id_reuse":
            first = sent.get(c.reuses or "")
            if first is None:
                return None, f"{c.reuses} was not applied"
            return {**first, "reason": c.reason}, ""
        if c.action == "void":
            if c.invalid == "void_paid":
                return ({"id": c.correction_id}, "") if status == "paid" else (
                    None, f"{c.invoice_key} is {status}, not paid")
            if status not in ("open", "overdue") or paid > 0 or credited > 0:
                return None, f"{c.invoice_key} is {status}, paid {paid}, credited {credited}"
            return {"id": c.correction_id, "reissue": c.reissue}, ""
        if c.action == "reissue":
            if status != "void":
                return None, f"{c.invoice_key} is {status}, not void"
            return {"id": c.correction_id}, ""
        if c.invalid == "credit_void":
            if status != "void":
                return None, f"{c.invoice_key} is {status}, not void"
            return self._credit(c, amount=Decimal("1.00")), ""
        if status == "void":
            return None, f"{c.invoice_key} is void"
        lines = await self._lines(inv["number"])
        if lines is None:
            raise TimeoutError(f"{inv['number']}: its lines could not be read")
        positive = [(n, kind, amount) for n, kind, amount in lines if amount > 0]
        uncredited = sum((a for _, _, a in positive), Decimal(0)) - credited
        if c.invalid == "over_credit":
            return self._credit(c, amount=_down(uncredited) + 1), ""
        if c.form == "lines":
            return self._line_credit(c, positive, credited)
        total = Decimal(inv["total"])
        amount = _down((total if total > 0 else uncredited) * c.fraction)
        amount = min(amount, _down(uncredited))
        if inv["kind"] in ("commitment", "top_up"):
            amount = min(amount, await self._grant_room(inv))
        if amount < _CENT:
            return None, f"nothing to credit on {c.invoice_key} ({amount})"
        return self._credit(c, amount=amount), ""

    def _line_credit(self, c: CorrectionPlan, positive: list[tuple[int, str, Decimal]],
                     credited: Decimal) -> tuple[dict[str, Any] | None, str]:
        if credited > 0:
            return None, f"{c.invoice_key} was credited before ({credited})"
        fee = next((ln for ln in positive if ln[1] == "fee"), None)
        usage = next((ln for ln in positive if ln[1] in _USAGE_KINDS), None)
        chosen = [ln for ln in (fee, usage) if ln is not None] or positive[:1]
        lines = [{"line": n, "amount": str(_down(a * c.fraction))} for n, _, a in chosen
                 if _down(a * c.fraction) >= _CENT]
        if not lines:
            return None, f"no line of {c.invoice_key} to credit"
        return self._credit(c, lines=lines), ""

    def _credit(self, c: CorrectionPlan, *, amount: Decimal | None = None,
                lines: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": c.correction_id, "reason": c.reason,
                                "remainder": c.remainder}
        if lines is not None:
            body["lines"] = lines
        else:
            body["amount"] = str(amount)
        return body

    async def _lines(self, number: str) -> list[tuple[int, str, Decimal]] | None:
        answer = await self.client.get(f"/v1/invoices/{number}")
        if not answer.ok:
            return None
        return [(n, ln["kind"], Decimal(ln["amount"]))
                for n, ln in enumerate(answer.body["lines"], start=1)]

    async def _grant_room(self, inv: dict[str, Any]) -> Decimal:
        """The most a note on a commitment or top-up invoice can take: its grant's
        unused credits at the grant's price, and the deferred revenue it has left."""
        answer = await self.client.get(f"/v1/contracts/{inv['contract_id']}/credits")
        if not answer.ok:
            raise TimeoutError(f"{inv['contract_id']}: credits could not be read")
        grant = next((g for g in answer.body["grants"] if g["invoice_key"] == inv["key"]), None)
        if grant is None:
            return Decimal(0)
        credits, price = Decimal(grant["credits"]), Decimal(grant["price"])
        if credits <= 0 or price <= 0:
            return Decimal(0)
        by_credits = _down(Decimal(grant["balance"]) * price / credits) - _CENT
        deferred = price - Decimal(grant["recognized"]) - Decimal(grant["breakage"])
        return max(min(by_credits, _down(deferred)), Decimal(0))


def _future(waiting_for: str) -> bool:
    """Whether the instant a workflow's wait names is still ahead (a wait without
    one waits for a request: also nothing due)."""
    m = _WAKE_AT.search(waiting_for)
    if m is not None:
        at = datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}:00+00:00")
    elif (m := _WAKE_ON.search(waiting_for)) is not None:
        at = datetime.fromisoformat(f"{m.group(1)}T00:00:00+00:00")
    else:
        return True
    return at > datetime.now(UTC)
