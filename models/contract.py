"""Contracts, rate overrides, commitments and resolved contract terms.

Invariants:
- A `RateOverride` is one of: explicit price (``meter`` required, optional
  ``match``), meter discount (``meter`` + ``discount_percent``),
  contract-wide discount (``discount_percent`` only, no ``match``) or spend
  limits of one meter (``meter`` + ``minimum_amount`` and/or
  ``maximum_amount``, nothing else: it replaces no price and splits no
  period, SPEC 12). Its window is half-open ``[effective, until)``; ``None``
  means unbounded.
- A `MinimumCommitment` (SPEC 12, `models.minimum_terms`) is checked against
  the plan's currency here.
- A `Commitment` has at most one of ``bonus_percent``, ``discount_percent``,
  ``credits``; its credits are computed exactly and rounded half up to the
  currency's minor unit (credits are a money balance).
- `ContractTerms` is the contract resolved against its plan: no optional
  terms left, the plan's meters and fees snapshotted, JSON-serializable, so a
  workflow can carry it and rate with nothing else.
- Dates in contracts (``starts_on``, ``expires_on``, date-only grant windows)
  mean the local midnight starting that day in the contract's timezone.
- Every value is bounded (`models.bounds`, SPEC 6) and every window lies in
  the term (SPEC 1): a commitment expires after ``starts_on`` and at the
  latest at the term end; a contract grant has
  ``term start <= effective < expires <= term end``. Whatever is accepted
  here can be granted and billed later.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from models._loading import Format, parse_text, read_file, validate_model
from models.bounds import (
    LATEST_STARTS_ON,
    MAX_ID_LENGTH,
    MAX_MAGNITUDE,
    BoundedNonNegative,
    BoundedPercent,
    BoundedPositive,
    GraceHours,
    Id,
    Instant,
    LocalDate,
    Name,
    PaymentTermsDays,
    Priority,
    TermMonths,
    WholeNumber,
    check_date,
    check_instant,
)
from models.catalog import (
    Catalog,
    LimitFields,
    Meter,
    MeterLimit,
    Plan,
    PriceFields,
    RecurringFee,
    check_matches,
)
from models.errors import BillowValidationError, Problem
from models.limits import limit_conflicts
from models.minimum_terms import (
    CommitmentPer,
    MinimumCommitment,
    ScheduledMinimumCommitment,
    minimum_commitment_problems,
)
from models.money import (
    CurrencyCode,
    exact_div,
    minor_units,
    round_half_up,
    round_money,
)
from models.periods import (
    BillingAnchor,
    BillingCycle,
    local_date,
    local_midnight_utc,
    term_end_date,
    validate_timezone,
)

__all__ = [
    "COMMITMENT_GRANT_ID",
    "CONTRACT_GRANT_AMENDMENT_PREFIX",
    "MAX_CONTRACT_GRANT_ID_LENGTH",
    "BillingAnchor",
    "BillingCycle",
    "Commitment",
    "CommitmentPer",
    "Contract",
    "ContractTerms",
    "CreditGrantSpec",
    "Customer",
    "DateOrInstant",
    "MinimumCommitment",
    "RateOverride",
    "ScheduledMinimumCommitment",
    "UtcDatetime",
    "WholeNumber",
    "add_rate_override",
    "load_contract",
    "load_contract_file",
    "parse_contract_text",
    "resolve_terms",
    "to_instant",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
COMMITMENT_GRANT_ID = "commitment"
# A priced grant written in the contract is made through a grant_credits
# amendment with this id prefix (workflows.contract_state); that id is an
# amendment id too, so the grant's own id leaves room for the prefix.
CONTRACT_GRANT_AMENDMENT_PREFIX = "credit_grants:"
MAX_CONTRACT_GRANT_ID_LENGTH = MAX_ID_LENGTH - len(CONTRACT_GRANT_AMENDMENT_PREFIX)

def _to_utc(d: datetime) -> datetime:
    try:
        return d.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{d.isoformat()} is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""An instant with an explicit offset, normalized to UTC; naive values are errors."""


def _date_or_instant(v: Any) -> Any:
    # Decide by shape instead of letting a union guess: 10 chars is a date.
    if isinstance(v, str):
        s = v.strip()
        if len(s) == 10:
            return check_date(date.fromisoformat(s))
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            raise ValueError("instant needs a UTC offset (e.g. 'Z' or '+01:00')")
        return check_instant(dt)
    if isinstance(v, datetime):
        if v.tzinfo is None:
            raise ValueError("instant needs a UTC offset (e.g. 'Z' or '+01:00')")
        return check_instant(v)
    if isinstance(v, date):
        return check_date(v)
    return v


DateOrInstant = Annotated[date | datetime, BeforeValidator(_date_or_instant)]
"""A local date (meaning local midnight) or an aware instant, inside the accepted range."""


def to_instant(value: date | datetime, tz: str) -> datetime:
    """A `DateOrInstant` as a UTC instant (dates mean local midnight in ``tz``)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return local_midnight_utc(value, tz)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _email(v: str) -> str:
    if not _EMAIL.match(v):
        raise ValueError("must be an e-mail address (name@example.com)")
    return v


BillingEmail = Annotated[str, Field(max_length=MAX_ID_LENGTH), AfterValidator(_email)]
# Fields added after contracts were first stored: left out of every dump while
# unset, so the digest of a contract created before them (SPEC.md section 10:
# same id + same terms is a no-op) and the documents already stored do not change.
_OPTIONAL_CUSTOMER_FIELDS = ("address", "billing_email", "tax_id")


class Customer(BaseModel):
    """Who is billed. ``address`` (lines separated by newlines), ``billing_email``
    and ``tax_id`` are optional: they appear on the invoice documents."""

    model_config = _FROZEN
    id: Id
    name: Name
    address: Name | None = None
    billing_email: BillingEmail | None = None
    tax_id: Annotated[str, Field(max_length=MAX_ID_LENGTH)] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_extras(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in _OPTIONAL_CUSTOMER_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class RateOverride(PriceFields, LimitFields):
    meter: Id | None = None
    match: dict[str, str] = Field(default_factory=dict)
    discount_percent: BoundedPercent | None = None
    effective: Instant | None = None
    until: Instant | None = None

    @model_validator(mode="after")
    def _form(self) -> RateOverride:
        problems: list[Problem] = []
        n = self._price_count()
        if self.sets_limit:
            problems += self._limit_problems()
            if n:
                problems.append(("", "a spend limit (minimum_amount, maximum_amount) replaces "
                                     "no price: send the price as an override of its own"))
            if self.discount_percent is not None:
                problems.append(("discount_percent", "not allowed with minimum_amount or "
                                                     "maximum_amount"))
            if self.meter is None:
                problems.append(("meter", "required with minimum_amount or maximum_amount"))
            if self.match:
                problems.append(("match", "spend limits apply to the whole meter: no match"))
            if self.effective and self.until and self.until <= self.effective:
                problems.append(("until", "must be after effective"))
            if problems:
                raise BillowValidationError(problems)
            return self
        if n > 1:
            problems.append(("", "at most one of unit_price, tiers or package"))
        if n and self.discount_percent is not None:
            problems.append(("discount_percent", "not allowed with an explicit price"))
        if not n and self.discount_percent is None:
            problems.append(
                ("", "needs a price (unit_price, tiers or package) or discount_percent")
            )
        if n and self.meter is None:
            problems.append(("meter", "required with an explicit price"))
        if self.match and self.meter is None:
            problems.append(("match", "requires meter"))
        if self.effective and self.until and self.until <= self.effective:
            problems.append(("until", "must be after effective"))
        if problems:
            raise BillowValidationError(problems)
        return self

    @property
    def is_discount(self) -> bool:
        return self.discount_percent is not None

    @property
    def is_limit(self) -> bool:
        """A spend-limit override: no price, no discount."""
        return self.sets_limit

    def in_force(self, at: datetime) -> bool:
        """Half-open window ``[effective, until)``."""
        return (self.effective is None or self.effective <= at) and (
            self.until is None or at < self.until
        )


class Commitment(BaseModel):
    model_config = _FROZEN
    amount: BoundedPositive
    bonus_percent: BoundedNonNegative | None = None
    discount_percent: BoundedPercent | None = None
    credits: BoundedPositive | None = None
    expires_on: LocalDate | None = None  # checked against the term by `Contract`
    priority: Priority = 0

    @model_validator(mode="after")
    def _one_form(self) -> Commitment:
        given = [
            n
            for n in ("bonus_percent", "discount_percent", "credits")
            if getattr(self, n) is not None
        ]
        if len(given) > 1:
            raise BillowValidationError([(given[1], f"not allowed together with {given[0]}")])
        if self.discount_percent is not None and self.discount_percent >= 100:
            raise BillowValidationError([("discount_percent", "must be less than 100")])
        # The credits bought are an amount too: bounded like the amount (SPEC 6),
        # with room for rounding to any minor unit.
        if given and given[0] != "credits" and round_half_up(self._exact_credits(), 0) >= (
            MAX_MAGNITUDE
        ):
            raise BillowValidationError(
                [(given[0], "the credits it buys must be less than 10^18")]
            )
        return self

    def _exact_credits(self) -> Decimal:
        if self.credits is not None:
            return self.credits
        if self.bonus_percent is not None:
            return self.amount * (1 + self.bonus_percent / 100)
        if self.discount_percent is not None:
            return exact_div(self.amount, 1 - self.discount_percent / 100)
        return self.amount

    def credits_for(self, currency: str) -> Decimal:
        """Credits the commitment buys (SPEC 1), rounded to the minor unit."""
        return round_money(self._exact_credits(), currency)


class CreditGrantSpec(BaseModel):
    """A grant written in the contract (promotional unless ``price`` > 0)."""

    model_config = _FROZEN
    id: Annotated[str, Field(min_length=1, max_length=MAX_CONTRACT_GRANT_ID_LENGTH)]
    credits: BoundedPositive
    price: BoundedNonNegative = Decimal(0)
    priority: Priority = 0
    effective: DateOrInstant | None = None  # None -> the term start
    expires: DateOrInstant | None = None  # None -> the term end


def _tz(v: str) -> str:
    return validate_timezone(v)


def _threshold(v: str) -> str:
    """``"5000.00"`` (an amount of credits) or ``"10%"`` (of the credits granted)."""
    from decimal import InvalidOperation

    text = v.strip()
    number = text.removesuffix("%").strip()
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError("must be an amount (\"5000.00\") or a percentage (\"10%\")") from None
    if not value.is_finite() or value < 0 or value >= MAX_MAGNITUDE:
        raise ValueError("must be at least 0 and below 10^18")
    if text.endswith("%") and value > 100:
        raise ValueError("a percentage must be at most 100%")
    return f"{number}%" if text.endswith("%") else number


LowBalanceThreshold = Annotated[str, Field(max_length=40), AfterValidator(_threshold)]


class Contract(BaseModel):
    model_config = _FROZEN
    id: Id
    customer: Customer
    plan: Id
    starts_on: LocalDate
    term_months: TermMonths
    billing_cycle: BillingCycle | None = None
    payment_terms_days: PaymentTermsDays | None = None
    auto_pay: bool | None = None
    usage_grace_hours: GraceHours | None = None
    rate_overrides: list[RateOverride] = Field(default_factory=list)
    commitment: Commitment | None = None
    minimum_commitment: MinimumCommitment | None = None
    credit_grants: list[CreditGrantSpec] = Field(default_factory=list)
    timezone: Annotated[str, AfterValidator(_tz)] = "UTC"
    billing_anchor: BillingAnchor = BillingAnchor.START
    currency: CurrencyCode | None = None
    # credits.low fires when the balance crosses below it (SPEC.md section 13).
    low_balance_threshold: LowBalanceThreshold | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_threshold(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Added after contracts were first stored: unset, it is not in the dump,
        # so older contracts keep their digest (see _OPTIONAL_CUSTOMER_FIELDS).
        data: dict[str, Any] = handler(self)
        if data.get("low_balance_threshold") is None:
            data.pop("low_balance_threshold", None)
        return data

    @field_validator("starts_on")
    @classmethod
    def _start_in_range(cls, v: date) -> date:
        # The term (up to MAX_TERM_MONTHS) and every date after it must stay in range.
        if v > LATEST_STARTS_ON:
            raise ValueError(f"must be on or before {LATEST_STARTS_ON.isoformat()}")
        return v

    @model_validator(mode="after")
    def _grants(self) -> Contract:
        problems: list[Problem] = []
        ids: set[str] = set()
        for i, g in enumerate(self.credit_grants):
            if g.id in ids or g.id == COMMITMENT_GRANT_ID:
                problems.append((f"credit_grants[{i}].id", f"duplicate or reserved id {g.id!r}"))
            ids.add(g.id)
        problems.extend(self._window_problems())
        if problems:
            raise BillowValidationError(problems)
        return self

    def _window_problems(self) -> list[Problem]:
        """Commitment and grant windows inside the term (SPEC 1): a grant made with
        ``expires <= effective`` or outside the term could never be recorded."""
        problems: list[Problem] = []
        end_date = term_end_date(self.starts_on, self.term_months)
        term = f"the term [{self.starts_on.isoformat()}, {end_date.isoformat()})"
        c = self.commitment
        if c is not None and c.expires_on is not None:
            if c.expires_on <= self.starts_on:
                problems.append(("commitment.expires_on",
                                 f"must be after starts_on {self.starts_on.isoformat()}"))
            elif c.expires_on > end_date:
                problems.append(("commitment.expires_on",
                                 f"must be on or before the term end {end_date.isoformat()}"))
        start, end = to_instant(self.starts_on, self.timezone), to_instant(end_date, self.timezone)
        top_up_days: set[date] = set()
        for i, g in enumerate(self.credit_grants):
            path = f"credit_grants[{i}]"
            effective = start if g.effective is None else to_instant(g.effective, self.timezone)
            expires = end if g.expires is None else to_instant(g.expires, self.timezone)
            before = len(problems)
            if not start <= effective < end:
                problems.append((f"{path}.effective", f"must be inside {term}"))
            if not start < expires <= end:
                problems.append((f"{path}.expires", f"must be inside {term}, at most its end"))
            if len(problems) == before and expires <= effective:
                problems.append((f"{path}.expires", "must be after effective"))
            if g.price > 0:
                # A priced grant's top-up invoice is keyed by its effective date.
                day = local_date(effective, self.timezone)
                if day in top_up_days:
                    problems.append((f"{path}.effective", f"another priced grant takes effect on "
                                     f"{day.isoformat()}: one top-up invoice per day"))
                top_up_days.add(day)
        return problems


class ContractTerms(BaseModel):
    """A contract resolved against its plan; everything rating needs."""

    model_config = _FROZEN
    contract_id: str
    customer: Customer
    plan_key: str
    currency: CurrencyCode
    timezone: str
    starts_on: date
    term_months: int
    term_end: date  # exclusive; moved by extend_term / terminate
    billing_cycle: BillingCycle
    billing_anchor: BillingAnchor
    cycle_anchor: date  # date start-anchored boundaries count from
    payment_terms_days: int
    auto_pay: bool
    usage_grace_hours: Decimal
    meters: list[Meter]
    recurring_fees: list[RecurringFee]
    rate_overrides: list[RateOverride]
    commitment: Commitment | None
    credit_grants: list[CreditGrantSpec]
    low_balance_threshold: str | None = None
    # SPEC 12. Defaults: terms carried by workflows from before they existed.
    meter_limits: list[MeterLimit] = Field(default_factory=list)  # the plan's
    minimum_commitments: list[ScheduledMinimumCommitment] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_unset_threshold(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset, it is left out: a worker of the release before can still read
        # the terms this one sends (rolling deploys), and stored terms read the same.
        data: dict[str, Any] = handler(self)
        if data.get("low_balance_threshold") is None:
            data.pop("low_balance_threshold", None)
        return data

    def meter(self, key: str) -> Meter:
        for m in self.meters:
            if m.key == key:
                return m
        raise KeyError(f"meter {key!r} is not in plan {self.plan_key!r}")

    @property
    def term_start_at(self) -> datetime:
        return local_midnight_utc(self.starts_on, self.timezone)

    @property
    def term_end_at(self) -> datetime:
        return local_midnight_utc(self.term_end, self.timezone)

    def minimum_commitment_at(self, at: datetime) -> MinimumCommitment | None:
        """The minimum commitment in force at ``at``: the last scheduled entry
        whose ``effective`` is at or before it (SPEC 12, amendments SPEC 7)."""
        current: MinimumCommitment | None = None
        for entry in self.minimum_commitments:
            if entry.effective is None or entry.effective <= at:
                current = entry.commitment
        return current

    @property
    def minimum_commitment(self) -> MinimumCommitment | None:
        """The minimum commitment as last set (in force now or from a boundary ahead)."""
        return self.minimum_commitments[-1].commitment if self.minimum_commitments else None


def _override_problems(
    ov: RateOverride, path: str, meters: dict[str, Meter], plan_key: str
) -> list[Problem]:
    if ov.meter is None:
        return []
    meter = meters.get(ov.meter)
    if meter is None:
        return [(f"{path}.meter", f"meter {ov.meter!r} is not in plan {plan_key!r}")]
    return [
        (f"{path}{p.removeprefix('m[0]')}", r)
        for p, r in check_matches([ov.match], meter.group_by, "m")
    ]


def resolve_terms(contract: Contract, catalog: Catalog) -> ContractTerms:
    """Resolve ``contract`` against ``catalog``; errors name contract fields."""
    try:
        plan = catalog.plan(contract.plan)
    except KeyError:
        raise BillowValidationError([("plan", f"unknown plan {contract.plan!r}")]) from None
    meters = {m.key: m for m in catalog.meters_for(plan.key)}
    problems: list[Problem] = []
    if contract.currency is not None and contract.currency != plan.currency:
        problems.append(
            ("currency", f"{contract.currency} differs from plan currency {plan.currency}")
        )
    for i, ov in enumerate(contract.rate_overrides):
        problems.extend(_override_problems(ov, f"rate_overrides[{i}]", meters, plan.key))
    # Amounts that are invoiced as they stand must be whole minor units.
    # Grant credits too: they are a money balance, as for a grant_credits amendment.
    money_fields = [
        (f"credit_grants[{i}].{field}", amount)
        for i, g in enumerate(contract.credit_grants)
        for field, amount in (("credits", g.credits), ("price", g.price))
    ]
    if contract.commitment is not None:
        money_fields.insert(0, ("commitment.amount", contract.commitment.amount))
        if contract.commitment.credits is not None:  # a balance too, as a grant's credits
            money_fields.insert(1, ("commitment.credits", contract.commitment.credits))
    for path, amount in money_fields:
        if round_money(amount, plan.currency) != amount:
            problems.append((path, f"more decimals than {plan.currency} has "
                                   f"({minor_units(plan.currency)})"))
    if contract.minimum_commitment is not None:
        problems += minimum_commitment_problems(
            contract.minimum_commitment, plan.currency, "minimum_commitment")
    for i, ov in enumerate(contract.rate_overrides):
        problems += [(f"rate_overrides[{i}].{p}", r)
                     for p, r in ov._decimal_problems(plan.currency)]
    if problems:
        raise BillowValidationError(problems)
    terms = _resolved_terms(contract, plan, meters)
    conflicts = [(f"rate_overrides[{i}].{field}", reason)
                 for i, field, reason in _limit_conflicts(terms)]
    if conflicts:
        raise BillowValidationError(conflicts)
    return terms


def _limit_conflicts(terms: ContractTerms) -> list[tuple[int, str, str]]:
    return limit_conflicts(terms.meter_limits, terms.rate_overrides, terms.term_start_at)


def _resolved_terms(
    contract: Contract, plan: Plan, meters: dict[str, Meter]
) -> ContractTerms:
    return ContractTerms(
        contract_id=contract.id,
        customer=contract.customer,
        plan_key=plan.key,
        currency=plan.currency,
        timezone=contract.timezone,
        starts_on=contract.starts_on,
        term_months=contract.term_months,
        term_end=term_end_date(contract.starts_on, contract.term_months),
        billing_cycle=contract.billing_cycle or plan.billing_cycle,
        billing_anchor=contract.billing_anchor,
        cycle_anchor=contract.starts_on,
        payment_terms_days=(
            plan.payment_terms_days
            if contract.payment_terms_days is None
            else contract.payment_terms_days
        ),
        auto_pay=plan.auto_pay if contract.auto_pay is None else contract.auto_pay,
        usage_grace_hours=(
            plan.usage_grace_hours
            if contract.usage_grace_hours is None
            else contract.usage_grace_hours
        ),
        meters=list(meters.values()),
        recurring_fees=list(plan.recurring_fees),
        rate_overrides=list(contract.rate_overrides),
        commitment=contract.commitment,
        credit_grants=list(contract.credit_grants),
        low_balance_threshold=contract.low_balance_threshold,
        meter_limits=list(plan.meter_limits),
        minimum_commitments=(
            [] if contract.minimum_commitment is None
            else [ScheduledMinimumCommitment(commitment=contract.minimum_commitment)]
        ),
    )


def add_rate_override(
    terms: ContractTerms, override: RateOverride, effective: datetime
) -> ContractTerms:
    """Apply a ``rate_override`` amendment: add it from ``effective`` on.

    "Adds or replaces" (SPEC 7): an override of the same form and target
    (same meter, same match, price vs discount vs spend limit) still in force at
    ``effective`` is closed at ``effective`` (its ``until`` set), so the new
    one replaces it from then on and history before stays intact. The new
    override starts at ``max(effective, override.effective)``.
    """
    problems = _override_problems(
        override, "override", {m.key: m for m in terms.meters}, terms.plan_key
    )
    problems += [(f"override.{p}", r) for p, r in override._decimal_problems(terms.currency)]
    if problems:
        raise BillowValidationError(problems)
    start = max(effective, override.effective) if override.effective else effective
    kept: list[RateOverride] = []
    for ov in terms.rate_overrides:
        same_target = (
            ov.meter == override.meter
            and ov.match == override.match
            and ov.is_discount == override.is_discount
            and ov.is_limit == override.is_limit
        )
        if same_target and ov.in_force(start):
            if ov.effective is not None and ov.effective >= start:
                continue  # it would never be in force: drop it
            ov = ov.model_copy(update={"until": start})
        kept.append(ov)
    new = override.model_copy(update={"effective": start})
    amended = terms.model_copy(update={"rate_overrides": [*kept, new]})
    if override.is_limit:
        conflicts = [(f"override.{field}", reason)
                     for _, field, reason in _limit_conflicts(amended)]
        if conflicts:
            raise BillowValidationError(conflicts)
    return amended


def load_contract(data: Any) -> Contract:
    """Validate parsed data (a mapping/list); a `Path` is read as a file."""
    if isinstance(data, Path):
        return load_contract_file(data)
    return validate_model(Contract, data)


def parse_contract_text(text: str, fmt: Format = "yaml") -> Contract:
    return load_contract(parse_text(text, fmt))


def load_contract_file(path: str | Path) -> Contract:
    text, fmt = read_file(path)
    return parse_contract_text(text, fmt)
