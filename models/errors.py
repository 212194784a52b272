"""Errors raised by the pure billing core.

Invariants:
- `BillowValidationError` always carries at least one `(path, reason)` problem;
  its message lists every problem as ``path: reason`` on its own line, so API
  problem+json bodies and CLI output can name the exact field.
- Paths use ``a.b[0].c`` notation; an empty path means "the document itself".
- `BusinessError` is a rule violation found while billing (for example
  unpriced usage). It is never a reason to bill zero; the workflow holds the
  invoice as ``needs_attention`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["BillowValidationError", "BusinessError", "Problem", "ValidationFailed", "join_path"]

Problem = tuple[str, str]


def join_path(prefix: str, rel: str) -> str:
    """Join two dotted paths: ``join_path("a[0]", "b")`` -> ``a[0].b``."""
    if not prefix:
        return rel
    if not rel:
        return prefix
    return prefix + rel if rel.startswith("[") else f"{prefix}.{rel}"


class BillowValidationError(ValueError):
    """Bad input, with every problem named by its field path."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        if not self.problems:
            raise ValueError("BillowValidationError needs at least one problem")
        super().__init__(self._render(self.problems))

    @staticmethod
    def _render(problems: Sequence[Problem]) -> str:
        lines = [f"{path}: {reason}" if path else reason for path, reason in problems]
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines)

    def prefixed(self, prefix: str) -> BillowValidationError:
        """The same problems, nested under ``prefix``."""
        return BillowValidationError((join_path(prefix, p), r) for p, r in self.problems)


# The name used in the issue text; one class, two names.
ValidationFailed = BillowValidationError


class BusinessError(Exception):
    """A billing rule cannot be satisfied (e.g. usage with no price)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")
