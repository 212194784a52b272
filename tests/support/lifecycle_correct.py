"""Corrections of a random lifecycle, delivered as the API delivers them (SPEC.md section 11).

A timeline's ``correct`` action names its invoice and amounts symbolically
(tests/support/lifecycle_gen.py: ``usage#1``, ``paid``; ``all``, ``half``,
``over``). They are resolved when the action is sent: the invoice against
the workflow's state while it runs (the ledger once it has completed, when
the state no longer moves), the amounts against the invoice's lines and what
earlier notes credited on them, as a caller reading the invoice from the API
would. A shrunk example therefore still voids or credits what it meant.

A resend (the same id and the same symbolic content) sends exactly what the
first send of that content resolved to, so it is a true duplicate; the same
id with other content resolves afresh (a conflict, unless it happens to
resolve to the very same correction).

Delivery is `api.corrections`' (``_correct``, then
`activities.ledger_correction`): while the workflow runs, the ``correct``
update with the API's update id
(`models.corrections.correct_update_id`); if the workflow has completed (or
completes while the update is on its way: ``NOT_FOUND``), straight to the
ledger through the function the API calls (`correct_in_ledger`), at the test
server's current time (the API's clock would fall before the term).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.ledger_correction import correct_in_ledger
from api.workflow_calls import reasons_from_message
from models.corrections import Correction, CorrectionResult, correct_update_id
from models.money import minor_units
from tests.support.lifecycle_outcome import Answer
from workflows.contract import ContractWorkflow

__all__ = ["Memo", "send_correction", "update_problems"]

CORRECTION: TypeAdapter[Correction] = TypeAdapter(Correction)
UPDATE_WALL_S = 30.0
USAGE_KINDS = ("usage", "late_usage", "minimum", "maximum")
GRANT_KINDS = ("commitment", "top_up")
# (correction id, its symbolic content) -> what its first send resolved to.
Memo = dict[tuple[str, str], Correction]


def update_problems(cause: BaseException | None, message: str) -> list[tuple[str, str]]:
    """``(field, reason)`` from a refusal's details, else from its message (as the API)."""
    if isinstance(cause, ApplicationError) and cause.details:
        first = cause.details[0]
        if isinstance(first, list) and all(isinstance(p, dict) for p in first):
            return [(str(p.get("field", "")), str(p.get("reason", ""))) for p in first]
    return reasons_from_message(message)


def _content(action: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in action.items() if k != "at"}, sort_keys=True)


async def send_correction(engine: AsyncEngine, handle: WorkflowHandle[Any, Any], i: int,
                          action: dict[str, Any], memo: Memo, *, running: bool,
                          now: datetime, currency: str) -> Answer:
    """Resolve and deliver one ``correct`` action; ``running``: the workflow's status
    as the API reads it before choosing the update or the ledger."""
    at, do = action["at"], "correct"
    cid = handle.id.removeprefix("contract:")
    key = (str(action["id"]), _content(action))
    correction = memo.get(key)
    if correction is None:
        resolved = await _resolve(engine, handle, action, running=running, currency=currency)
        if isinstance(resolved, Answer):
            resolved.index, resolved.at = i, at
            return resolved
        correction = memo.setdefault(key, resolved)
    sent = correction.model_dump(mode="json")
    if running:
        try:
            update = handle.execute_update(ContractWorkflow.correct, correction,
                                           id=correct_update_id(correction))
            answer: Any = await asyncio.wait_for(update, UPDATE_WALL_S)
            assert isinstance(answer, CorrectionResult)
            return Answer(i, at, do, "ok", sent=sent,
                          result=answer.model_dump(mode="json") | {"recorded_via": "workflow"})
        except WorkflowUpdateFailedError as exc:
            message = getattr(exc.cause, "message", None) or str(exc)
            return Answer(i, at, do, "refused", problems=update_problems(exc.cause, message),
                          message=message, sent=sent)
        except TimeoutError:
            return Answer(i, at, do, "error", sent=sent,
                          message=f"no answer within {UPDATE_WALL_S:.0f} s")
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                return Answer(i, at, do, "error", message=f"RPCError: {exc.message}"[:500],
                              sent=sent)
            # The workflow closed meanwhile: the ledger takes it (as the API).
        except Exception as exc:
            return Answer(i, at, do, "error", message=f"{type(exc).__name__}: {exc}"[:500],
                          sent=sent)
    try:
        result = await correct_in_ledger(engine, cid, correction, now)
    except ApplicationError as exc:
        return Answer(i, at, do, "refused", problems=update_problems(exc, exc.message),
                      message=exc.message, sent=sent)
    except Exception as exc:
        return Answer(i, at, do, "error", message=f"{type(exc).__name__}: {exc}"[:500],
                      sent=sent)
    return Answer(i, at, do, "ok", sent=sent,
                  result=result.model_dump(mode="json") | {"recorded_via": "ledger"})


# --- resolving the symbolic names ---------------------------------------------------------


async def _invoices(engine: AsyncEngine, handle: WorkflowHandle[Any, Any],
                    running: bool) -> tuple[list[dict[str, Any]], str] | Answer:
    """The contract's invoices as the sender sees them, and the term's start date."""
    if running:
        try:
            view = await asyncio.wait_for(handle.query(ContractWorkflow.query_state),
                                          UPDATE_WALL_S)
        except Exception as exc:
            return Answer(0, "", "correct", "error",
                          message=f"state query: {type(exc).__name__}: {exc}"[:500])
        return ([inv.model_dump() for inv in view.invoices],
                view.terms.starts_on.isoformat())
    cid = handle.id.removeprefix("contract:")
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT key, kind, status, number, subtotal, total FROM invoices "
            "WHERE contract_id = :cid "
            "ORDER BY id"), {"cid": cid})).all()
        starts_on = await conn.scalar(
            text("SELECT starts_on FROM contracts WHERE id = :cid"), {"cid": cid})
    return [dict(r._mapping) for r in rows], str(starts_on)


# The statuses a correction applies to: a void an open or overdue invoice, a
# credit anything but a void one, a reissue a void one.
_APPLIES_TO = {"void": ("open", "overdue"), "credit": ("open", "overdue", "paid"),
               "reissue": ("void",)}


def _applies(inv: dict[str, Any], kind: str) -> bool:
    return str(inv["status"]) in _APPLIES_TO[kind]


def pick_invoice(invoices: list[dict[str, Any]], ref: str, kind: str, starts_on: str) -> str:
    """The key ``ref`` names for a ``kind`` correction (see lifecycle_gen.CORRECT_REFS)."""
    base, _, nth = ref.partition("#")
    if base == "unknown":
        return "usage:1999-01-01"
    finalized = sorted((inv for inv in invoices if inv["number"] is not None),
                       key=lambda inv: str(inv["number"]))
    if base == "paid":
        pool = [inv for inv in finalized if inv["status"] == "paid"]
    elif base == "void":
        pool = [inv for inv in finalized if inv["status"] == "void"]
    elif base == "reissued":
        pool = [inv for inv in finalized if "/" in inv["key"]]
    elif base == "latest":  # a void or reissue: the latest usage invoice, if any
        pool = ([inv for inv in finalized if inv["kind"] == "usage"] or finalized
                if kind in ("void", "reissue") else finalized)
    else:
        pool = [inv for inv in finalized if inv["kind"] == base]
    if base not in ("paid", "void"):  # there the invoice's state is the point
        pool = [inv for inv in pool if _applies(inv, kind)] or pool
    if not pool:  # none of that kind (yet): any finalized invoice, as for payments
        pool = [inv for inv in finalized if _applies(inv, kind)] or finalized
    if kind == "credit":  # one with something owed or paid to credit, if there is one
        pool = ([inv for inv in pool if Decimal(inv["total"]) > 0]
                or [inv for inv in pool if Decimal(inv["subtotal"]) > 0] or pool)
    if not pool:
        return f"usage:{starts_on}"  # nothing finalized yet
    return str(pool[min(int(nth), len(pool) - 1)]["key"] if nth else pool[-1]["key"])


async def _invoice_lines(engine: AsyncEngine, cid: str, key: str
                         ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The invoice (what is owed on it) and its lines with what notes credited on each."""
    async with engine.connect() as conn:
        found = (await conn.execute(text(
            "SELECT id, status, total, amount_paid, credit_allocated FROM invoices "
            "WHERE contract_id = :cid AND key = :key"), {"cid": cid, "key": key})).all()
        if not found:
            return None, []
        inv = dict(found[0]._mapping)
        lines = (await conn.execute(text(
            """
            SELECT l.position + 1 AS line, l.kind, l.amount,
                   coalesce((SELECT sum(cl.amount) FROM credit_note_lines cl
                             JOIN credit_notes n ON n.id = cl.credit_note_id
                             WHERE n.invoice_id = l.invoice_id
                               AND cl.invoice_line = l.position + 1), 0) AS credited
            FROM invoice_lines l WHERE l.invoice_id = :id ORDER BY l.position
            """), {"id": inv["id"]})).all()
    return inv, [dict(r._mapping) for r in lines]


def _uncredited(line: dict[str, Any]) -> Decimal:
    return max(Decimal(line["amount"]) - Decimal(line["credited"]), Decimal(0))


def creditable(lines: list[dict[str, Any]]) -> Decimal:
    """What one amount for the whole invoice can credit at most: every positive
    line's uncredited amount, usage-kind lines together at most their net total."""
    usage = [ln for ln in lines if ln["kind"] in USAGE_KINDS]
    room = max(sum((Decimal(ln["amount"]) - Decimal(ln["credited"]) for ln in usage),
                   Decimal(0)), Decimal(0))
    total = Decimal(0)
    for ln in lines:
        take = _uncredited(ln) if Decimal(ln["amount"]) > 0 else Decimal(0)
        if ln["kind"] in USAGE_KINDS:
            take = min(take, room)
            room -= take
        total += take
    return total


def _amount(name: str, full: Decimal, owed: Decimal, minor: Decimal) -> str:
    amounts = {
        "all": full if full > 0 else minor,
        "half": max((full / 2).quantize(minor, rounding=ROUND_DOWN), minor),
        "cent": minor,
        "outstanding": owed if owed > 0 else minor,
        "over": full + minor,
        "tiny": minor / 10,
        "zero": Decimal(0),
    }
    return f"{amounts.get(name, minor):f}"


def _line_position(ref: Any, lines: list[dict[str, Any]]) -> int:
    def first(kinds: tuple[str, ...]) -> int:
        of_kind = [ln for ln in lines if ln["kind"] in kinds]
        open_ = [ln for ln in of_kind if _uncredited(ln) > 0]
        return int((open_ or of_kind or [{"line": 1}])[0]["line"])

    if ref == "last":
        return max(len(lines), 1)
    if ref == "usage":
        return first(USAGE_KINDS)
    if ref == "fee":
        return first(("fee",))
    if ref == "grant":
        return first(GRANT_KINDS)
    if ref == "beyond":
        return len(lines) + 1
    return 1


async def _resolve(engine: AsyncEngine, handle: WorkflowHandle[Any, Any],
                   action: dict[str, Any], *, running: bool,
                   currency: str) -> Correction | Answer:
    seen = await _invoices(engine, handle, running)
    if isinstance(seen, Answer):
        return seen
    invoices, starts_on = seen
    kind = action["kind"]
    doc: dict[str, Any] = {"kind": kind, "id": action["id"],
                           "invoice": pick_invoice(invoices, action["invoice"], kind, starts_on)}
    if kind == "void":
        doc["reissue"] = bool(action.get("reissue"))
    elif kind == "credit":
        inv, lines = await _invoice_lines(engine, handle.id.removeprefix("contract:"),
                                          doc["invoice"])
        minor = Decimal(1).scaleb(-minor_units(currency))
        owed = Decimal(0)
        if inv is not None:
            owed = (Decimal(inv["total"]) - Decimal(inv["amount_paid"])
                    - Decimal(inv["credit_allocated"]))
        doc["reason"] = action["reason"]
        if "amount" in action:
            doc["amount"] = _amount(action["amount"], creditable(lines), owed, minor)
        else:
            doc["lines"] = []
            for ask in action["lines"]:
                position = _line_position(ask["line"], lines)
                if any(ln["line"] == position for ln in doc["lines"]):
                    continue  # two names for one line: it is credited once
                line = next((ln for ln in lines if ln["line"] == position), None)
                room = _uncredited(line) if line is not None else Decimal(0)
                doc["lines"].append({"line": position,
                                     "amount": _amount(ask["amount"], room, owed, minor)})
        if action.get("remainder") is not None:
            doc["remainder"] = action["remainder"]
    try:
        return CORRECTION.validate_python(doc)
    except (ValidationError, InvalidOperation) as exc:
        # The API refuses such a body (422) naming the field.
        if isinstance(exc, InvalidOperation):
            return Answer(0, "", "correct", "refused", message=str(exc), problems=[
                ("amount", "not a number")], sent=doc)
        return Answer(0, "", "correct", "refused", message=str(exc)[:300], sent=doc, problems=[
            (".".join(str(x) for x in e["loc"]) or "body", e["msg"]) for e in exc.errors()])
