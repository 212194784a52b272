"""A correction applied straight to the ledger, once the contract's workflow has
completed (SPEC.md section 11): the same rules and idempotency as through the
workflow (`activities.corrections.apply_correction`), in one transaction under
the contract's lock, rolled back whole by a refusal (an ``ApplicationError``).
A refund is recorded as a manual one: no worker holds the contract's gateway.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from activities.correction_store import ledger_request
from activities.corrections import apply_correction
from activities.ledger_store import lock_contract
from activities.payments import record_refund
from models.corrections import CorrectCredit, CorrectionResult, CorrectReissue, CorrectVoid

__all__ = ["correct_in_ledger"]


async def correct_in_ledger(engine: AsyncEngine, contract_id: str,
                            correction: CorrectVoid | CorrectReissue | CorrectCredit,
                            now: datetime) -> CorrectionResult:
    async with engine.begin() as conn:
        await lock_contract(conn, contract_id)
        request = await ledger_request(conn, contract_id, correction, now)
        outcome = await apply_correction(conn, request)
        result = outcome.result
        if outcome.refund is not None and result.credit_note is not None:
            refund = await record_refund(conn, outcome.refund, method="manual", reference=None)
            note = result.credit_note.model_copy(update={"refund": refund})
            result = result.model_copy(update={"credit_note": note})
    return result
