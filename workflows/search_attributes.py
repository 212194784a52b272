"""Custom search attributes of contract workflows (SPEC.md section 10).

They fit the fixed per-namespace slots of Postgres-backed visibility (at most
3 Datetime, 3 Bool, 3 Double, 10 Keyword), and none is named ``Status``.
Servers register them from ``ALL`` (``billow up``, the test harness, deploy
scripts) so the names live in one place.
"""

from __future__ import annotations

from typing import Any

from temporalio.common import (
    SearchAttributeKey,
)

CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
PLAN_KEY = SearchAttributeKey.for_keyword("PlanKey")
CONTRACT_STATUS = SearchAttributeKey.for_keyword("ContractStatus")
BILLING_CYCLE = SearchAttributeKey.for_keyword("BillingCycle")
NEXT_BILLING_AT = SearchAttributeKey.for_datetime("NextBillingAt")
HAS_OVERDUE_INVOICE = SearchAttributeKey.for_bool("HasOverdueInvoice")
CREDIT_BALANCE = SearchAttributeKey.for_float("CreditBalance")
# The minimum commitment's shortfall as of the last usage invoice (SPEC 12):
# the term's so far, or the last period's; unset without a minimum.
COMMITMENT_SHORTFALL = SearchAttributeKey.for_float("CommitmentShortfall")

ALL: tuple[SearchAttributeKey[Any], ...] = (
    CUSTOMER_ID,
    PLAN_KEY,
    CONTRACT_STATUS,
    BILLING_CYCLE,
    NEXT_BILLING_AT,
    HAS_OVERDUE_INVOICE,
    CREDIT_BALANCE,
    COMMITMENT_SHORTFALL,
)

# Type names as the Temporal CLI's `--search-attribute Name=Type` spells them.
_CLI_TYPE_NAMES = {
    "KEYWORD": "Keyword",
    "DATETIME": "Datetime",
    "BOOL": "Bool",
    "DOUBLE": "Double",
    "INT": "Int",
    "TEXT": "Text",
}


def _cli_type(key: SearchAttributeKey[Any]) -> str:
    return _CLI_TYPE_NAMES[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]


def cli_flags() -> list[str]:
    """``--search-attribute Name=Type`` arguments for ``temporal server start-dev``."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={_cli_type(key)}"]
    return flags


def cli_create_flags() -> list[str]:
    """``--name N --type T`` pairs for ``temporal operator search-attribute create``
    (idempotent for an attribute registered with the same type)."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--name", key.name, "--type", _cli_type(key)]
    return flags
