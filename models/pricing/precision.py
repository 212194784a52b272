"""Exact decimal arithmetic for pricing: a wide local context.

Python's default decimal context keeps 28 significant digits, and rounds
silently past them. billow's quantities and prices go up to 10^18 with 12
decimals (30 digits, SPEC 6): one line's product has up to 60 digits, the
tier counters and sums of many lines a few more, and rounding to the minor
unit (``quantize``) needs every integer digit of the result. `WIDE_PRECISION`
digits hold all of them, so products and sums are exact and the only
rounding is the one SPEC 3 prescribes (each line to the minor unit, half
up). Pricing functions run under `exact`; the context is local to the call
(thread- and task-safe), so callers are unaffected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import localcontext
from typing import Final, ParamSpec, TypeVar

__all__ = ["WIDE_PRECISION", "exact", "wide"]

# 2 x 30 digits per product, sums of up to 10^6 lines (+6), with a margin:
# far below what costs anything (decimal is arbitrary precision in C).
WIDE_PRECISION: Final = 100

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextmanager
def wide() -> Iterator[None]:
    """Arithmetic inside is exact for billow's bounded quantities and prices."""
    with localcontext() as ctx:
        ctx.prec = max(ctx.prec, WIDE_PRECISION)
        yield


def exact(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` under `wide`."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with wide():
            return fn(*args, **kwargs)

    return wrapper
