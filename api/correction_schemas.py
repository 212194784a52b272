"""Request and response bodies of the correction endpoints (SPEC.md section 11)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.bounds import BoundedPositive, Id
from models.corrections import (
    CorrectionResult,
    CreditLine,
    CreditNoteView,
    Reason,
    check_credit_form,
)

CREDIT_NOTE_EXAMPLE: dict[str, Any] = {
    "id": "cn-0008", "number": "CN-000001", "contract_id": "acme-2027",
    "invoice": "usage:2027-01-01", "invoice_number": "INV-000002", "currency": "USD",
    "issued_on": "2027-05-10", "reason": "billing_error",
    "lines": [{"line": 2, "kind": "usage", "amount": "150.00"}], "total": "150.00",
    "allocation": {"credits_returned": "100.00", "outstanding_reduced": "50.00",
                   "refunded": "0.00", "customer_credit": "0.00"},
    "automatic": False, "refund": None,
}


class VoidIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "id": "void-0007", "reissue": True}})
    id: Id | None = Field(default=None, description="Idempotency key of the correction "
                          "(one id space for void, reissue and credit); defaults to the "
                          "Idempotency-Key header.")
    reissue: bool = Field(default=False, description="Rate the period again with the terms "
                          "in force now and issue it as `usage:<start>/2` (usage invoices).")


class ReissueIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"id": "re-0009"}})
    id: Id | None = Field(default=None, description="Idempotency key of the correction.")


class CreditIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "id": "cn-0008", "reason": "billing_error",
        "lines": [{"line": 2, "amount": "150.00"}], "remainder": "refund"}})
    id: Id | None = Field(default=None, description="Idempotency key of the correction.")
    reason: Reason
    lines: list[CreditLine] | None = Field(
        default=None, max_length=10_000,
        description="Lines by their 1-based position on the invoice, each with an amount.")
    amount: BoundedPositive | None = Field(
        default=None, description="One amount for the whole invoice, spread over its "
        "positive lines in order (instead of `lines`).")
    remainder: Literal["refund", "credit"] = Field(
        default="refund", description="What is left after credits and the amount owed: "
        "refunded, or kept as customer credit (a grant at cost basis 1).")

    @model_validator(mode="after")
    def _one_form(self) -> CreditIn:
        check_credit_form(self.lines, self.amount)
        return self


class CorrectionOut(CorrectionResult):
    model_config = ConfigDict(frozen=True)
    contract_id: str
    recorded_via: str = Field(description="`workflow` while the contract's workflow runs, "
                              "`ledger` after it has completed.")


class CreditNoteList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "credit_notes": [CREDIT_NOTE_EXAMPLE], "next_offset": None}})
    credit_notes: list[CreditNoteView]
    next_offset: int | None
