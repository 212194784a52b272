"""The terms of a minimum commitment (SPEC 12), as contracts and amendments write them.

Invariants:
- A `MinimumCommitment` is a positive amount in the contract's currency
  (``currency``, when given, must be it: a minimum is never converted), in
  whole minor units, per ``term`` or ``billing_period``;
  ``prorate_on_termination`` defaults to false.
- `ScheduledMinimumCommitment` entries (in `ContractTerms`) say what is in
  force from their ``effective`` on; the math is `models.minimum_commitment`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict

from models.bounds import BoundedPositive
from models.errors import Problem
from models.money import CurrencyCode, minor_units, round_money

__all__ = [
    "CommitmentPer",
    "MinimumCommitment",
    "ScheduledMinimumCommitment",
    "minimum_commitment_problems",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class CommitmentPer(StrEnum):
    TERM = "term"
    BILLING_PERIOD = "billing_period"


class MinimumCommitment(BaseModel):
    """A postpaid promise to spend at least ``amount`` on usage."""

    model_config = _FROZEN
    amount: BoundedPositive
    per: CommitmentPer
    prorate_on_termination: bool = False
    # Optional: the amount's currency, which must be the contract's (a minimum
    # written in another currency is refused, never converted).
    currency: CurrencyCode | None = None


class ScheduledMinimumCommitment(BaseModel):
    """The minimum commitment in force from ``effective`` (None: the term start)
    until the next entry; ``commitment`` None means no minimum from then on."""

    model_config = _FROZEN
    effective: AwareDatetime | None = None
    commitment: MinimumCommitment | None


def minimum_commitment_problems(
    mc: MinimumCommitment, currency: str, path: str
) -> list[Problem]:
    """A minimum commitment must be in the contract's currency, in whole minor units."""
    problems: list[Problem] = []
    if mc.currency is not None and mc.currency != currency:
        problems.append((f"{path}.currency",
                         f"{mc.currency} differs from the contract's currency {currency}"))
    if round_money(mc.amount, currency) != mc.amount:
        problems.append((f"{path}.amount",
                         f"more decimals than {currency} has ({minor_units(currency)})"))
    return problems
