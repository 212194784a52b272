"""Reissue of a voided usage invoice (SPEC.md section 11): placeholder until step 4."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.exceptions import ApplicationError

from models.corrections import CorrectionRequest


async def reissue_invoice(conn: AsyncConnection, req: CorrectionRequest,
                          voided: Any) -> tuple[int, str]:
    raise ApplicationError("reissue: not supported yet", type="InvalidCorrection",
                           non_retryable=True)
