"""Deep comparison of JSON documents with decimal strings compared as decimals."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


def _as_decimal(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def differences(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Every place ``actual`` differs from ``expected`` (keys absent from
    ``expected`` are allowed in ``actual``, e.g. invoice numbers)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        out: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                out.append(f"{path}.{key}: missing")
            else:
                out += differences(value, actual[key], f"{path}.{key}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {actual!r}"]
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in differences(e, a, f"{path}[{i}]")
        ]
    if _as_decimal(expected) != _as_decimal(actual):
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []
