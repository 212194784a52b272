"""Mid-term amendments (SPEC 7), a union discriminated on ``kind``.

Invariants:
- Every amendment has a non-empty idempotency ``id`` and an optional
  ``effective`` instant (``None`` = when received: ``received_at`` if billow
  stamped it, else when the workflow handles it). Naive instants are errors.
- ``effective`` before the open period's start takes effect from that start
  (finalized invoices never change); the workflow applies that clamp.
- Validation here is shape-only; checks against the contract (meter in plan,
  dimensions in group_by) happen when the amendment is applied
  (e.g. `models.contract.add_rate_override`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models._loading import validate_with
from models.contract import DateOrInstant, RateOverride, UtcDatetime, WholeNumber
from models.money import NonNegativeDecimal, PositiveDecimal
from models.periods import BillingCycle

__all__ = [
    "AMENDMENT_ADAPTER",
    "Amendment",
    "ChangeBillingCycleAmendment",
    "ChangePaymentTermsAmendment",
    "ExtendTermAmendment",
    "GrantCreditsAmendment",
    "RateOverrideAmendment",
    "SetAutoPayAmendment",
    "TerminateAmendment",
    "parse_amendment",
]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(min_length=1)]
    effective: UtcDatetime | None = None
    # When billow received it (stamped by the API, and by `billow simulate` at
    # the action's `at`): the default `effective`, so the instant does not
    # depend on when the workflow gets to it. Not part of the amendment's
    # content: a resend with another `received_at` is the same amendment.
    received_at: UtcDatetime | None = None


class RateOverrideAmendment(_Base):
    kind: Literal["rate_override"]
    override: RateOverride


class GrantCreditsAmendment(_Base):
    kind: Literal["grant_credits"]
    credits: PositiveDecimal
    price: NonNegativeDecimal | None = None  # set -> a top_up invoice for it
    priority: int = 0
    expires: DateOrInstant | None = None  # None -> term end
    grant_id: Annotated[str, Field(min_length=1)] | None = None  # None -> the amendment id


class ChangeBillingCycleAmendment(_Base):
    kind: Literal["change_billing_cycle"]
    billing_cycle: BillingCycle


class ChangePaymentTermsAmendment(_Base):
    kind: Literal["change_payment_terms"]
    payment_terms_days: Annotated[WholeNumber, Field(ge=0)]


class SetAutoPayAmendment(_Base):
    kind: Literal["set_auto_pay"]
    auto_pay: bool


class ExtendTermAmendment(_Base):
    kind: Literal["extend_term"]
    term_months: Annotated[WholeNumber, Field(gt=0)]  # additional months


class TerminateAmendment(_Base):
    kind: Literal["terminate"]


Amendment = Annotated[
    RateOverrideAmendment
    | GrantCreditsAmendment
    | ChangeBillingCycleAmendment
    | ChangePaymentTermsAmendment
    | SetAutoPayAmendment
    | ExtendTermAmendment
    | TerminateAmendment,
    Field(discriminator="kind"),
]

AMENDMENT_ADAPTER: TypeAdapter[Amendment] = TypeAdapter(Amendment)


def parse_amendment(obj: Any) -> Amendment:
    """Validate one amendment (API body / timeline entry); raises BillowValidationError."""
    return validate_with(AMENDMENT_ADAPTER, obj)
