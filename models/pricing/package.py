"""Package pricing: ``price`` per started block of ``size`` units.

Invariants:
- 0 units cost 0; 1..size units cost one block; size+1 costs two.
- Blocks span lines like a tier counter: a line covering counter positions
  ``(already, already + q]`` pays for the blocks that it starts, i.e.
  ``blocks(already + q) - blocks(already)``; lines sum to the blocks of the
  total.
"""

from __future__ import annotations

from decimal import Decimal

from models.pricing.precision import exact

__all__ = ["package_amount", "package_blocks"]


@exact
def package_blocks(size: Decimal, quantity: Decimal) -> Decimal:
    if quantity <= 0:
        return Decimal(0)
    # divmod is exact (the quotient's integer part fits the wide context): a
    # rounded quotient could hide a started block
    whole, rest = divmod(quantity, size)
    return whole + 1 if rest else whole


@exact
def package_amount(
    size: Decimal, price: Decimal, quantity: Decimal, already: Decimal = Decimal(0)
) -> Decimal:
    if quantity < 0 or already < 0:
        raise ValueError("quantities must not be negative")
    return (package_blocks(size, already + quantity) - package_blocks(size, already)) * price
