"""Corrections through the running contract (SPEC.md section 11): pure state logic.

The ``correct`` update of `workflows.contract.ContractWorkflow` uses these to
answer resends, refuse what the contract's state already rules out, build
the ledger request, and learn the outcome. The ledger
(`activities.corrections.apply_correction`) decides everything else under the
contract's row lock; the state may lag it (a close still finishing), so
anything the state does not know is let through to the ledger.

Invariants:
- an id answered once is answered the same way again; the same id with
  other content is a conflict (one id space for void, reissue and credit);
- the records survive continue-as-new (Temporal deduplicates update ids per
  run only).
"""

from __future__ import annotations

from datetime import datetime

from models.corrections import (
    CorrectCredit,
    CorrectionOutcome,
    CorrectionRecord,
    CorrectionRequest,
    CorrectionResult,
    CorrectReissue,
    CorrectVoid,
    RefundView,
    correction_digest,
)
from models.errors import BillowValidationError
from models.operations import IssuedInvoice
from workflows.contract_state import ContractState

__all__ = [
    "CorrectionConflict",
    "check_correction",
    "correction_request",
    "learn_credited",
    "learn_outcome",
    "record_refund",
    "resend_answer",
]

AnyCorrection = CorrectVoid | CorrectReissue | CorrectCredit


class CorrectionConflict(BillowValidationError):
    """The correction's id was used before for other content."""


def _record(state: ContractState, correction_id: str) -> CorrectionRecord | None:
    return next((r for r in state.correction_records if r.id == correction_id), None)


def resend_answer(state: ContractState, correction: AnyCorrection) -> CorrectionResult | None:
    """The first answer to an id already applied; CorrectionConflict if its content differs."""
    record = _record(state, correction.id)
    if record is None:
        return None
    if record.digest != correction_digest(correction):
        raise CorrectionConflict(
            [("id", f"correction {correction.id!r} was sent before with other content")]
        )
    return record.result


def check_correction(state: ContractState, correction: AnyCorrection) -> None:
    """Refuse what the contract's state already rules out (BillowValidationError).

    Only refusals the state cannot get wrong: an invoice it knows in a status
    the correction never applies to. Everything else is for the ledger.
    """
    if resend_answer(state, correction) is not None:
        return
    inv = state.invoice(correction.invoice)
    if inv is None:
        return  # the state may lag the ledger: the ledger decides
    if inv.number is None:
        raise BillowValidationError([("invoice", f"{inv.key} is not finalized ({inv.status})")])
    if isinstance(correction, CorrectVoid):
        if inv.status in ("paid", "void"):
            hint = " (credit it instead)" if inv.status == "paid" else ""
            raise BillowValidationError([("invoice", f"{inv.key} is {inv.status}: only an open "
                                                     f"or overdue invoice can be voided{hint}")])
        if inv.amount_paid > 0:
            raise BillowValidationError([("invoice", f"{inv.key} has {inv.amount_paid} paid "
                                                     "on it: credit it instead")])
    elif isinstance(correction, CorrectCredit):
        if inv.status == "void":
            raise BillowValidationError([("invoice", f"{inv.key} is void: a void invoice is "
                                                     "not credited")])
    elif inv.status != "void":
        raise BillowValidationError([("invoice", f"{inv.key} is {inv.status}: only a void "
                                                 "usage invoice is reissued")])


def correction_request(state: ContractState, correction: AnyCorrection,
                       now: datetime, *, periods_from_ledger: bool) -> CorrectionRequest:
    """``periods_from_ledger``: the ledger's invoices hold the invoiced periods,
    so the request leaves them out (issue 13)."""
    t = state.terms
    periods = None if periods_from_ledger else list(state.invoiced_periods)
    return CorrectionRequest(
        contract_id=t.contract_id, correction=correction, at=now, on=state.local_date(now),
        terms=t, invoiced_periods=periods, term_closed=state.term_closed,
    )


def learn_outcome(state: ContractState, outcome: CorrectionOutcome) -> list[str]:
    """Put what the ledger changed into the state; returns the keys of invoices
    the contract did not know (a reissue), which the caller starts collecting.

    An invoice the correction left with nothing to collect (void, or paid by
    a credit note) stops being collected: its dunning and auto-pay stop.
    """
    new: list[str] = []
    for inv in outcome.invoices:
        if state.invoice(inv.key) is None and inv.key != outcome.result.invoice:
            new.append(inv.key)
            continue
        state.put_invoice(inv)
        if inv.status not in ("open", "overdue") or inv.outstanding <= 0:
            state.collections = [c for c in state.collections if c.invoice_key != inv.key]
    state.credit_balance = outcome.credits.balance
    return new


def learn_credited(state: ContractState, credited: list[IssuedInvoice]) -> None:
    """Invoices an automatic credit note changed (a close found a fall in late usage)."""
    for inv in credited:
        state.put_invoice(inv)
        if inv.status not in ("open", "overdue") or inv.outstanding <= 0:
            state.collections = [c for c in state.collections if c.invoice_key != inv.key]


def record_refund(state: ContractState, correction_id: str, refund: RefundView) -> None:
    """A refund paid after the correction answered: its record shows it."""
    record = _record(state, correction_id)
    if record is None or record.result.credit_note is None:
        return
    note = record.result.credit_note.model_copy(update={"refund": refund})
    record.result = record.result.model_copy(update={"credit_note": note})
