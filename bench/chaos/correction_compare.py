"""What of corrections the fault run must have exactly as the control (issue 14).

Per contract, from its database: credit notes in issue order (invoice, lines,
total, allocation, reason, date; not their numbers, which are global and
follow the order contracts happen to be corrected in), refunds (the payments
out: amount, status, method, date), and the corrections recorded (kind,
invoice, content digest, what they issued). Per correction, from the client's
record: the body sent (or why it was skipped), the status and the answer.

Left out, because they depend on timing or on which process did the work,
never on billow's rules: numbers (compared by order within the contract),
database ids, the request path a refusal names (it holds the invoice's number),
the simulated card gateway's refund references (a counter per worker process),
and the instant a customer-credit grant takes effect (the note's own instant;
its date is compared).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.chaos.correcting import SentCorrection
from models.corrections import CUSTOMER_CREDIT_GRANT_PREFIX

CORRECTION_PARTS = ("credit notes", "refunds", "corrections")
# Keys of an answer that differ between runs without a rule being broken.
# (A problem's ``instance`` is the request path, which names the invoice's number.)
_TIMING_KEYS = frozenset({"number", "invoice_number", "gateway_ref", "instance"})


def day_of(value: date | datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def grant_effective(grant_id: str, effective: datetime) -> str:
    """A grant's effective instant; a customer-credit grant's only as its date."""
    if grant_id.startswith(CUSTOMER_CREDIT_GRANT_PREFIX):
        return effective.date().isoformat()
    return effective.isoformat()


async def correction_snapshot(conn: AsyncConnection, contract_id: str,
                              report: dict[str, Any]) -> dict[str, Any]:
    notes = [{k: v for k, v in n.items() if k != "number"}
             for n in report.get("credit_notes", [])]
    refunds = sorted(
        [r.correction_id, r.refund_key, str(r.amount), r.currency, r.status, r.method,
         day_of(r.refunded_on)]
        for r in (await conn.execute(text(
            "SELECT n.correction_id, r.refund_key, r.amount, r.currency, r.status, r.method, "
            "r.refunded_on FROM refunds r JOIN credit_notes n ON n.id = r.credit_note_id "
            "WHERE r.contract_id = :c"), {"c": contract_id})).all())
    corrections = [
        [r.correction_id, r.kind, r.invoice_key, r.digest,
         {k: v for k, v in (r.result or {}).items() if k != "note_id"}]
        for r in (await conn.execute(text(
            "SELECT correction_id, kind, invoice_key, digest, result FROM corrections "
            "WHERE contract_id = :c ORDER BY correction_id"), {"c": contract_id})).all()]
    return {"credit notes": notes, "refunds": refunds, "corrections": corrections}


def normalized_answer(body: Any) -> Any:
    """An answer without what depends on timing or on the process (`_TIMING_KEYS`)."""
    if isinstance(body, dict):
        return {k: normalized_answer(v) for k, v in body.items() if k not in _TIMING_KEYS}
    if isinstance(body, list):
        return [normalized_answer(v) for v in body]
    return body


def sent_view(c: SentCorrection) -> dict[str, Any]:
    return {"action": c.action, "invoice": c.invoice_key, "invalid": c.invalid,
            "body": c.body, "skipped": c.skipped, "status": c.status,
            "answer": normalized_answer(c.answer)}
