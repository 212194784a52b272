"""Catalog: meters, rate cards, prices and plans (SPEC sections 1 and 8).

Invariants (checked at load time, each problem reported with its field path):
- Decimal values are strings (or integers); floats are rejected.
- A rate-card entry / override carries exactly one price form:
  ``unit_price``, ``tiers`` or ``package``.
- Tier steps: ``up_to`` strictly increasing, only the last step open
  (``up_to`` absent); ``up_to`` is an inclusive upper bound.
- A rate-card ``match`` only names dimensions in the meter's ``group_by``
  (any other dimension could never match a group).
- No two entries of one rate card are equally specific and can both match the
  same group (same number of keys and no conflicting value).
- ``unique_by`` is set exactly when ``aggregation`` is ``unique_count``.
- Plans only name known meters, once each; currencies are ISO 4217 codes.
- A plan's ``meter_limits`` (SPEC 12: ``minimum_amount`` / ``maximum_amount``
  per billing period) name a meter of the plan, once each, set at least one
  limit, keep ``minimum_amount <= maximum_amount`` and are whole minor units
  of the plan's currency.
- Keys, prices, quantities, payment terms and grace are bounded
  (`models.bounds`, SPEC 6).
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models._loading import Format, parse_text, read_file, validate_model
from models.bounds import (
    BoundedNonNegative,
    BoundedPositive,
    GraceHours,
    Id,
    Name,
    PaymentTermsDays,
)
from models.errors import BillowValidationError, Problem
from models.money import CurrencyCode, minor_units, round_money
from models.periods import BillingCycle

__all__ = [
    "Aggregation",
    "Catalog",
    "LimitFields",
    "Meter",
    "MeterLimit",
    "PackagePrice",
    "Plan",
    "Price",
    "PriceFields",
    "RateCardEntry",
    "RecurringFee",
    "TierMode",
    "TierStep",
    "TieredPrice",
    "UnitPrice",
    "load_catalog",
    "load_catalog_file",
    "matches",
    "parse_catalog_text",
    "price_of",
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)
Key = Id


class Aggregation(StrEnum):
    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"


class TierMode(StrEnum):
    GRADUATED = "graduated"
    VOLUME = "volume"


class UnitPrice(BaseModel):
    model_config = _FROZEN
    kind: Literal["unit"] = "unit"
    unit_price: BoundedNonNegative


class TierStep(BaseModel):
    model_config = _FROZEN
    up_to: BoundedPositive | None = None
    unit_price: BoundedNonNegative
    flat_fee: BoundedNonNegative = Decimal(0)


class TieredPrice(BaseModel):
    model_config = _FROZEN
    kind: Literal["tiered"] = "tiered"
    mode: TierMode
    steps: list[TierStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> TieredPrice:
        problems: list[Problem] = []
        last = len(self.steps) - 1
        prev: Decimal | None = None
        for i, step in enumerate(self.steps):
            if step.up_to is None:
                if i != last:
                    problems.append((f"steps[{i}].up_to", "only the last step may omit up_to"))
                continue
            if i == last:
                problems.append((f"steps[{i}].up_to", "the last step must not have up_to"))
            if prev is not None and step.up_to <= prev:
                problems.append(
                    (
                        f"steps[{i}].up_to",
                        f"tiers must be in increasing order: {step.up_to} is not greater "
                        f"than steps[{i - 1}].up_to {prev}",
                    )
                )
            prev = step.up_to
        if problems:
            raise BillowValidationError(problems)
        return self


class PackagePrice(BaseModel):
    model_config = _FROZEN
    kind: Literal["package"] = "package"
    size: BoundedPositive
    price: BoundedNonNegative


Price = Annotated[UnitPrice | TieredPrice | PackagePrice, Field(discriminator="kind")]


class PriceFields(BaseModel):
    """The inline price forms of SPEC 1; at most one may be set (subclasses
    decide whether one is required)."""

    model_config = _FROZEN
    unit_price: BoundedNonNegative | None = None
    tiers: TieredPrice | None = None
    package: PackagePrice | None = None

    def _price_count(self) -> int:
        return sum(x is not None for x in (self.unit_price, self.tiers, self.package))

    @property
    def price(self) -> Price | None:
        if self.unit_price is not None:
            return UnitPrice(unit_price=self.unit_price)
        return self.tiers or self.package


def price_of(entry: PriceFields) -> Price:
    """The single price an entry carries (raises if it carries none)."""
    p = entry.price
    if p is None:
        raise ValueError("entry has no explicit price")
    return p


def matches(match: dict[str, str], dimensions: dict[str, str]) -> bool:
    """True if ``match`` is a subset of ``dimensions``."""
    return all(dimensions.get(k) == v for k, v in match.items())


class RateCardEntry(PriceFields):
    match: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_price(self) -> RateCardEntry:
        if self._price_count() != 1:
            raise BillowValidationError(
                [("", "exactly one of unit_price, tiers or package is required")]
            )
        return self


def _compatible(a: dict[str, str], b: dict[str, str]) -> bool:
    """Two matches can both match one group iff they agree on their shared keys."""
    return all(b[k] == v for k, v in a.items() if k in b)


class Meter(BaseModel):
    model_config = _FROZEN
    key: Key
    name: Name
    aggregation: Aggregation
    group_by: list[str] = Field(default_factory=list)
    unique_by: str | None = None
    rate_card: list[RateCardEntry] = Field(default_factory=list)
    tiers_per_group: bool = False

    @model_validator(mode="after")
    def _check(self) -> Meter:
        problems: list[Problem] = []
        if len(set(self.group_by)) != len(self.group_by):
            problems.append(("group_by", "dimensions must be unique"))
        if self.aggregation is Aggregation.UNIQUE_COUNT and not self.unique_by:
            problems.append(("unique_by", "required when aggregation is unique_count"))
        if self.aggregation is not Aggregation.UNIQUE_COUNT and self.unique_by is not None:
            problems.append(("unique_by", "only allowed when aggregation is unique_count"))
        problems.extend(
            check_matches([e.match for e in self.rate_card], self.group_by, "rate_card")
        )
        if problems:
            raise BillowValidationError(problems)
        return self


def check_matches(
    match_list: list[dict[str, str]], group_by: list[str], field: str
) -> list[Problem]:
    """Problems of a list of ``match`` dicts: unknown dimensions, ambiguous pairs."""
    problems: list[Problem] = []
    for i, m in enumerate(match_list):
        for dim in m:
            if dim not in group_by:
                problems.append(
                    (
                        f"{field}[{i}].match.{dim}",
                        f"dimension {dim!r} is not in the meter's group_by {group_by}",
                    )
                )
        for j in range(i):
            other = match_list[j]
            if len(other) == len(m) and _compatible(m, other):
                problems.append(
                    (
                        f"{field}[{i}]",
                        f"equally specific as {field}[{j}] and both match {m | other}",
                    )
                )
    return problems


class RecurringFee(BaseModel):
    model_config = _FROZEN
    key: Key
    name: Name
    monthly_amount: BoundedNonNegative


class LimitFields(BaseModel):
    """``minimum_amount`` / ``maximum_amount`` of one meter per billing period
    (SPEC 12), on a plan's `MeterLimit` or a contract's rate override."""

    model_config = _FROZEN
    minimum_amount: BoundedNonNegative | None = None
    maximum_amount: BoundedNonNegative | None = None

    @property
    def sets_limit(self) -> bool:
        return self.minimum_amount is not None or self.maximum_amount is not None

    def _limit_problems(self) -> list[Problem]:
        lo, hi = self.minimum_amount, self.maximum_amount
        if lo is not None and hi is not None and lo > hi:
            return [("minimum_amount", f"{lo} is above maximum_amount {hi}")]
        return []

    def _decimal_problems(self, currency: str) -> list[Problem]:
        return [
            (name, f"more decimals than {currency} has ({minor_units(currency)})")
            for name in ("minimum_amount", "maximum_amount")
            if (v := getattr(self, name)) is not None and round_money(v, currency) != v
        ]


class MeterLimit(LimitFields):
    """A plan's spend limits for one of its meters."""

    meter: Key

    @model_validator(mode="after")
    def _check(self) -> MeterLimit:
        problems = self._limit_problems()
        if not self.sets_limit:
            problems.append(("", "needs minimum_amount or maximum_amount"))
        if problems:
            raise BillowValidationError(problems)
        return self


class Plan(BaseModel):
    model_config = _FROZEN
    key: Key
    name: Name
    currency: CurrencyCode
    meters: list[str] = Field(default_factory=list)
    billing_cycle: BillingCycle = BillingCycle.MONTHLY
    payment_terms_days: PaymentTermsDays = 30
    auto_pay: bool = False
    usage_grace_hours: GraceHours = Decimal(1)
    recurring_fees: list[RecurringFee] = Field(default_factory=list)
    meter_limits: list[MeterLimit] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Plan:
        problems: list[Problem] = []
        seen: set[str] = set()
        for i, m in enumerate(self.meters):
            if m in seen:
                problems.append((f"meters[{i}]", f"meter {m!r} listed twice"))
            seen.add(m)
        fees: set[str] = set()
        for i, f in enumerate(self.recurring_fees):
            if f.key in fees:
                problems.append((f"recurring_fees[{i}].key", f"duplicate fee key {f.key!r}"))
            fees.add(f.key)
        limited: set[str] = set()
        for i, lim in enumerate(self.meter_limits):
            path = f"meter_limits[{i}]"
            if lim.meter not in seen:
                problems.append((f"{path}.meter", f"meter {lim.meter!r} is not in the plan"))
            elif lim.meter in limited:
                problems.append((f"{path}.meter", f"limits for {lim.meter!r} set twice"))
            limited.add(lim.meter)
            problems += [(f"{path}.{p}", r) for p, r in lim._decimal_problems(self.currency)]
        if problems:
            raise BillowValidationError(problems)
        return self


class Catalog(BaseModel):
    model_config = _FROZEN
    meters: list[Meter] = Field(default_factory=list)
    plans: list[Plan] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross(self) -> Catalog:
        problems: list[Problem] = []
        keys: set[str] = set()
        for i, m in enumerate(self.meters):
            if m.key in keys:
                problems.append((f"meters[{i}].key", f"duplicate meter key {m.key!r}"))
            keys.add(m.key)
        plans: set[str] = set()
        for i, p in enumerate(self.plans):
            if p.key in plans:
                problems.append((f"plans[{i}].key", f"duplicate plan key {p.key!r}"))
            plans.add(p.key)
            for j, mk in enumerate(p.meters):
                if mk not in keys:
                    problems.append((f"plans[{i}].meters[{j}]", f"unknown meter {mk!r}"))
        if problems:
            raise BillowValidationError(problems)
        return self

    def meter(self, key: str) -> Meter:
        for m in self.meters:
            if m.key == key:
                return m
        raise KeyError(f"unknown meter {key!r}")

    def plan(self, key: str) -> Plan:
        for p in self.plans:
            if p.key == key:
                return p
        raise KeyError(f"unknown plan {key!r}")

    def meters_for(self, plan_key: str) -> list[Meter]:
        """The plan's meters, in the plan's order (the invoice line order)."""
        return [self.meter(k) for k in self.plan(plan_key).meters]


def load_catalog(data: Any) -> Catalog:
    """Validate parsed data (a mapping/list); a `Path` is read as a file."""
    if isinstance(data, Path):
        return load_catalog_file(data)
    return validate_model(Catalog, data)


def parse_catalog_text(text: str, fmt: Format = "yaml") -> Catalog:
    return load_catalog(parse_text(text, fmt))


def load_catalog_file(path: str | Path) -> Catalog:
    text, fmt = read_file(path)
    return parse_catalog_text(text, fmt)
