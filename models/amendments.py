"""Mid-term amendments (SPEC 7), a union discriminated on ``kind``.

Invariants:
- Every amendment has a non-empty idempotency ``id`` and an optional
  ``effective`` instant (``None`` = when received: ``received_at`` if billow
  stamped it, else when the workflow handles it). Naive instants are errors.
- ``effective`` before the open period's start takes effect from that start
  (finalized invoices never change); the workflow applies that clamp.
- Validation here is shape and bounds (`models.bounds`, SPEC 6: ids,
  amounts, ``payment_terms_days`` <= 3650, one ``extend_term`` <= 1200
  months); checks against the contract (meter in plan, dimensions in
  group_by, the term plus all extensions <= `MAX_TERM_MONTHS`) happen when
  the amendment is applied (e.g. `models.contract.add_rate_override`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models._loading import validate_with
from models.bounds import (
    BoundedNonNegative,
    BoundedPositive,
    Id,
    Instant,
    PaymentTermsDays,
    Priority,
    TermMonths,
)
from models.contract import DateOrInstant, RateOverride
from models.minimum_terms import MinimumCommitment
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
    "SetMinimumCommitmentAmendment",
    "TerminateAmendment",
    "parse_amendment",
]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Id
    effective: Instant | None = None
    # When billow received it (stamped by the API, and by `billow simulate` at
    # the action's `at`): the default `effective`, so the instant does not
    # depend on when the workflow gets to it. Not part of the amendment's
    # content: a resend with another `received_at` is the same amendment.
    received_at: Instant | None = None


class RateOverrideAmendment(_Base):
    kind: Literal["rate_override"]
    override: RateOverride


class GrantCreditsAmendment(_Base):
    kind: Literal["grant_credits"]
    credits: BoundedPositive
    price: BoundedNonNegative | None = None  # set -> a top_up invoice for it
    priority: Priority = 0
    expires: DateOrInstant | None = None  # None -> term end
    grant_id: Id | None = None  # None -> the amendment id


class ChangeBillingCycleAmendment(_Base):
    kind: Literal["change_billing_cycle"]
    billing_cycle: BillingCycle


class ChangePaymentTermsAmendment(_Base):
    kind: Literal["change_payment_terms"]
    payment_terms_days: PaymentTermsDays


class SetAutoPayAmendment(_Base):
    kind: Literal["set_auto_pay"]
    auto_pay: bool


class ExtendTermAmendment(_Base):
    kind: Literal["extend_term"]
    term_months: TermMonths  # additional months; the cumulative bound is the workflow's


class TerminateAmendment(_Base):
    kind: Literal["terminate"]


class SetMinimumCommitmentAmendment(_Base):
    """Set, change or (with ``null``) remove the minimum commitment.

    It takes effect from a boundary: the first period start at or after its
    ``effective``, so a period always keeps the minimum of its start."""

    kind: Literal["set_minimum_commitment"]
    minimum_commitment: MinimumCommitment | None  # required; null removes it


Amendment = Annotated[
    RateOverrideAmendment
    | GrantCreditsAmendment
    | ChangeBillingCycleAmendment
    | ChangePaymentTermsAmendment
    | SetAutoPayAmendment
    | ExtendTermAmendment
    | TerminateAmendment
    | SetMinimumCommitmentAmendment,
    Field(discriminator="kind"),
]

AMENDMENT_ADAPTER: TypeAdapter[Amendment] = TypeAdapter(Amendment)


def parse_amendment(obj: Any) -> Amendment:
    """Validate one amendment (API body / timeline entry); raises BillowValidationError."""
    return validate_with(AMENDMENT_ADAPTER, obj)
