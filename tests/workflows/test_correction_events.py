"""Corrections are events too (SPEC.md section 13): a void writes invoice.voided, its
reissue invoice.finalized with the new number, a credit note credit_note.issued with
its CN- number, each in the transaction of the change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.support.scenario import ContractRun, at, contract_doc, event


async def _events(db: AsyncEngine, kinds: tuple[str, ...]) -> list[tuple[str, Any]]:
    async with db.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT type, payload FROM event_outbox WHERE type = ANY(:kinds) ORDER BY id"),
            {"kinds": list(kinds)})).all()
    return [(r.type, r.payload) for r in rows]


async def test_a_void_its_reissue_and_a_credit_note_are_events(
    ts_env: WorkflowEnvironment, db: AsyncEngine
) -> None:
    doc = contract_doc(term_months=2)
    async with ContractRun(ts_env, db, doc) as run:
        await run.send_usage([event("e1", "2027-01-10T00:00:00Z", "100000")])  # 3000.00
        await run.advance_to(at("2027-02-05"))
        await run.correct({"kind": "void", "id": "v-1", "invoice": "usage:2027-01-01",
                           "reissue": True})
        await run.correct({"kind": "credit", "id": "cn-1", "invoice": "usage:2027-01-01/2",
                           "reason": "goodwill", "amount": "100.00"})
        seen = await _events(db, ("invoice.voided", "invoice.finalized", "credit_note.issued"))
    kinds = [(kind, p.get("key") or p.get("invoice"), p.get("number")) for kind, p in seen]
    assert kinds == [
        ("invoice.finalized", "usage:2027-01-01", "INV-000001"),
        ("invoice.voided", "usage:2027-01-01", "INV-000001"),
        ("invoice.finalized", "usage:2027-01-01/2", "INV-000002"),
        ("credit_note.issued", "usage:2027-01-01/2", "CN-000001"),
    ]
    voided = seen[1][1]
    assert voided["status"] == "void"
    note = seen[3][1]
    assert note["total"] == "100.00" and note["contract_id"] == "c-1"
