"""When a contract has settled: caught up, not held, and its workflow agrees with the ledger.

The driver waits for this for every contract before it calls a run quiescent,
and for one contract before it sends that contract's corrections.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from bench.chaos.workload import ContractPlan


def contract_unsettled(plan: ContractPlan, state: dict[str, Any],
                       ledger: dict[str, dict[str, Any]], today: date) -> list[str]:
    """Why a contract has not settled yet: not caught up, held, or its workflow's
    state disagrees with the ledger's invoices (``ledger``: by key, as listed)."""
    cid = plan.contract_id
    out: list[str] = []
    if state.get("attention"):
        out.append(f"{cid}: needs attention: {state['attention']}")
    boundary = state.get("next_boundary")
    t0 = datetime.fromisoformat(f"{today.isoformat()}T00:00:00+00:00")
    if boundary is not None and datetime.fromisoformat(boundary) <= t0:
        out.append(f"{cid}: not caught up (open period ends {boundary})")
    mine = {i["key"]: i for i in state["invoices"] if i["status"] != "draft"}
    for key, inv in ledger.items():
        seen = mine.get(key)
        if seen is None:
            out.append(f"{cid}: {key} is in the ledger, not in the contract's state")
        elif _standing(seen) != _standing(inv):
            out.append(f"{cid}: {key} is {_text(seen)} in the contract's state, "
                       f"{_text(inv)} in the ledger")
        if plan.auto_pay and inv["status"] == "open":
            out.append(f"{cid}: auto-pay invoice {key} still open")
    missing = [k for k in plan.past_usage_keys if k not in ledger]
    if missing:
        out.append(f"{cid}: no invoice yet for {', '.join(missing[:3])}")
    return out


def _standing(inv: dict[str, Any]) -> tuple[str, Decimal, Decimal]:
    return inv["status"], Decimal(inv["amount_paid"]), Decimal(inv.get("credited") or 0)


def _text(inv: dict[str, Any]) -> str:
    return f"{inv['status']} paid {inv['amount_paid']} credited {inv.get('credited')}"
