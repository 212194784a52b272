"""Shared builders for the pure-model tests (plain module; tests/conftest.py is the harness)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from models.catalog import Catalog, load_catalog
from models.contract import ContractTerms, load_contract, resolve_terms
from models.usage import UsageEvent


def D(x: str | int) -> Decimal:
    return Decimal(x)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def catalog_with(
    meters: list[dict[str, Any]],
    *,
    fees: list[dict[str, Any]] | None = None,
    currency: str = "USD",
    cycle: str = "monthly",
) -> Catalog:
    return load_catalog(
        {
            "meters": meters,
            "plans": [
                {
                    "key": "p",
                    "name": "P",
                    "currency": currency,
                    "meters": [m["key"] for m in meters],
                    "billing_cycle": cycle,
                    "recurring_fees": fees or [],
                }
            ],
        }
    )


def terms_for(catalog: Catalog, **contract: Any) -> ContractTerms:
    data: dict[str, Any] = {
        "id": "c1",
        "customer": {"id": "cust", "name": "Cust"},
        "plan": "p",
        "starts_on": "2027-01-01",
        "term_months": 12,
    }
    data.update(contract)
    return resolve_terms(load_contract(data), catalog)


_seq = iter(range(10**9))


def event(
    meter: str,
    at: datetime,
    quantity: str | int | Decimal = 1,
    customer: str = "cust",
    id: str | None = None,
    **dims: str,
) -> UsageEvent:
    return UsageEvent(
        id=id or f"e{next(_seq)}",
        customer=customer,
        meter=meter,
        timestamp=at,
        quantity=Decimal(quantity),
        dimensions=dims,
    )
