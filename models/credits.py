"""The credit engine (SPEC 4): grants, burn order, application, expiry.

Invariants (checked on every `CreditState`):
- for each grant: granted = consumed + expired + remaining, all >= 0, so
  credits never go negative and the totals obey the same identity;
- states are immutable: every operation returns a new state.
Rules:
- Burn order: lower ``priority`` first, then earlier ``expires``, then earlier
  ``effective``, then creation order (``seq``).
- `CreditState.apply` pays usage (never fees) with grants *in force at the
  period end* ``at``: ``effective <= at <= expires``. ``expires`` is
  inclusive here on purpose: SPEC 7 orders work at one instant as
  amendments -> invoicing -> ... and SPEC 4 expires credits at term end only
  *after* the final invoice drew down, so a grant expiring exactly at a
  boundary still pays that boundary's invoice; call `expire(at)` afterwards.
- `expire(at)` expires what remains of grants with ``expires <= at``;
  `expire_all()` (term end / termination) expires everything left: breakage.
- Cost basis = price / credits, 0 for promotional grants; kept as the two
  exact numbers, divided only when revenue is computed (`models.revenue`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from models.contract import COMMITMENT_GRANT_ID, ContractTerms, to_instant
from models.money import DecimalStr, NonNegativeDecimal, PositiveDecimal, exact_div

__all__ = [
    "CreditApplication",
    "CreditBalance",
    "CreditGrant",
    "CreditState",
    "CreditSummary",
    "GrantAmount",
    "crossed_low_balance",
    "initial_grants",
    "low_balance_limit",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class CreditGrant(BaseModel):
    model_config = _FROZEN
    id: str
    credits: PositiveDecimal
    price: NonNegativeDecimal = Decimal(0)  # paid for the grant; 0 = promotional
    priority: int = 0
    effective: AwareDatetime
    expires: AwareDatetime
    seq: int = 0  # creation order

    @model_validator(mode="after")
    def _window(self) -> CreditGrant:
        if self.expires <= self.effective:
            raise ValueError("expires must be after effective")
        return self

    @property
    def cost_basis(self) -> Decimal:
        """price / credits (high precision; revenue multiplies first, see revenue.py)."""
        return exact_div(self.price, self.credits)

    def burn_key(self) -> tuple[int, datetime, datetime, int]:
        return (self.priority, self.expires, self.effective, self.seq)

    def pays_at(self, at: datetime) -> bool:
        return self.effective <= at <= self.expires


class CreditBalance(BaseModel):
    model_config = _FROZEN
    grant_id: str
    granted: NonNegativeDecimal
    remaining: NonNegativeDecimal
    consumed: NonNegativeDecimal = Decimal(0)
    expired: NonNegativeDecimal = Decimal(0)

    @model_validator(mode="after")
    def _identity(self) -> CreditBalance:
        if self.granted != self.consumed + self.expired + self.remaining:
            raise ValueError(f"grant {self.grant_id}: granted != consumed + expired + remaining")
        return self


class GrantAmount(BaseModel):
    model_config = _FROZEN
    grant_id: str
    amount: DecimalStr


class CreditApplication(BaseModel):
    model_config = _FROZEN
    applied_total: DecimalStr
    per_grant: list[GrantAmount]


class CreditSummary(BaseModel):
    model_config = _FROZEN
    granted: DecimalStr
    consumed: DecimalStr
    expired: DecimalStr
    balance: DecimalStr


class CreditState(BaseModel):
    model_config = _FROZEN
    grants: list[CreditGrant] = Field(default_factory=list)
    balances: list[CreditBalance] = Field(default_factory=list)  # same order as grants

    @model_validator(mode="after")
    def _aligned(self) -> CreditState:
        if [g.id for g in self.grants] != [b.grant_id for b in self.balances]:
            raise ValueError("balances must match grants one to one")
        if len({g.id for g in self.grants}) != len(self.grants):
            raise ValueError("grant ids must be unique")
        return self

    def grant(self, g: CreditGrant) -> CreditState:
        """Add a grant; its ``seq`` becomes the creation order."""
        if any(x.id == g.id for x in self.grants):
            raise ValueError(f"grant {g.id!r} exists already")
        g = g.model_copy(update={"seq": len(self.grants)})
        b = CreditBalance(grant_id=g.id, granted=g.credits, remaining=g.credits)
        return CreditState(grants=[*self.grants, g], balances=[*self.balances, b])

    def get(self, grant_id: str) -> tuple[CreditGrant, CreditBalance]:
        for g, b in zip(self.grants, self.balances, strict=True):
            if g.id == grant_id:
                return g, b
        raise KeyError(grant_id)

    def available(self, at: datetime) -> Decimal:
        return sum(
            (b.remaining for g, b in zip(self.grants, self.balances, strict=True) if g.pays_at(at)),
            Decimal(0),
        )

    def apply(self, usage_amount: Decimal, at: datetime) -> tuple[CreditState, CreditApplication]:
        """Pay up to ``usage_amount`` from grants in force at ``at``, in burn order."""
        if usage_amount < 0:
            raise ValueError("usage amount must not be negative")
        need = usage_amount
        balances = list(self.balances)
        order = sorted(range(len(self.grants)), key=lambda i: self.grants[i].burn_key())
        per: list[GrantAmount] = []
        for i in order:
            if need <= 0:
                break
            g, b = self.grants[i], balances[i]
            if not g.pays_at(at) or b.remaining <= 0:
                continue
            take = min(need, b.remaining)
            balances[i] = b.model_copy(
                update={"remaining": b.remaining - take, "consumed": b.consumed + take}
            )
            per.append(GrantAmount(grant_id=g.id, amount=take))
            need -= take
        state = CreditState(grants=self.grants, balances=balances)
        return state, CreditApplication(applied_total=usage_amount - need, per_grant=per)

    def _expire(self, at: datetime | None) -> tuple[CreditState, list[GrantAmount]]:
        balances = list(self.balances)
        out: list[GrantAmount] = []
        for i, (g, b) in enumerate(zip(self.grants, balances, strict=True)):
            if b.remaining > 0 and (at is None or g.expires <= at):
                balances[i] = b.model_copy(
                    update={"remaining": Decimal(0), "expired": b.expired + b.remaining}
                )
                out.append(GrantAmount(grant_id=g.id, amount=b.remaining))
        return CreditState(grants=self.grants, balances=balances), out

    def expire_grants(self, grant_ids: Collection[str]) -> CreditState:
        """Expire what remains of the named grants now (credits a correction
        returned to a grant that had expired meanwhile, SPEC.md section 11)."""
        balances = [
            b.model_copy(update={"remaining": Decimal(0), "expired": b.expired + b.remaining})
            if b.grant_id in grant_ids and b.remaining > 0 else b
            for b in self.balances
        ]
        return CreditState(grants=self.grants, balances=balances)

    def expire(self, at: datetime) -> tuple[CreditState, list[GrantAmount]]:
        """Expire the remainder of every grant with ``expires <= at``."""
        return self._expire(at)

    def expire_all(self) -> tuple[CreditState, list[GrantAmount]]:
        """Term end / termination: everything left expires (breakage)."""
        return self._expire(None)

    def summary(self) -> CreditSummary:
        def total(field: str) -> Decimal:
            return sum((getattr(b, field) for b in self.balances), Decimal(0))

        return CreditSummary(
            granted=total("granted"),
            consumed=total("consumed"),
            expired=total("expired"),
            balance=total("remaining"),
        )


def initial_grants(terms: ContractTerms) -> list[CreditGrant]:
    """Grants created at term start: the commitment's (id ``commitment``,
    price = amount, expiring at ``expires_on`` or term end), then the
    contract's ``credit_grants`` in file order (default window: the term)."""
    start, end = terms.term_start_at, terms.term_end_at
    out: list[CreditGrant] = []
    c = terms.commitment
    if c is not None:
        out.append(
            CreditGrant(
                id=COMMITMENT_GRANT_ID,
                credits=c.credits_for(terms.currency),
                price=c.amount,
                priority=c.priority,
                effective=start,
                expires=to_instant(c.expires_on, terms.timezone) if c.expires_on else end,
            )
        )
    for spec in terms.credit_grants:
        out.append(
            CreditGrant(
                id=spec.id,
                credits=spec.credits,
                price=spec.price,
                priority=spec.priority,
                effective=to_instant(spec.effective, terms.timezone) if spec.effective else start,
                expires=to_instant(spec.expires, terms.timezone) if spec.expires else end,
            )
        )
    return [g.model_copy(update={"seq": i}) for i, g in enumerate(out)]


def low_balance_limit(threshold: str, granted: Decimal) -> Decimal:
    """A ``low_balance_threshold`` as an amount: ``"5000.00"``, or ``"10%"`` of
    the credits granted so far."""
    if threshold.endswith("%"):
        return granted * Decimal(threshold[:-1]) / 100
    return Decimal(threshold)


def crossed_low_balance(threshold: str, granted: Decimal, before: Decimal,
                        after: Decimal) -> bool:
    """True when the balance went from at or above the limit to below it: once per
    crossing (a balance that stays low does not fire again)."""
    limit = low_balance_limit(threshold, granted)
    return before >= limit > after
