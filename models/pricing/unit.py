"""Unit pricing: ``amount = quantity x unit_price``, exact (no rounding here)."""

from __future__ import annotations

from decimal import Decimal

from models.pricing.precision import exact

__all__ = ["unit_amount"]


@exact
def unit_amount(quantity: Decimal, unit_price: Decimal) -> Decimal:
    return quantity * unit_price
