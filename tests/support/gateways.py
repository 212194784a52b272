"""Payment gateways standing in for a card processor's bad days (external systems,
not billow code): an outage, and an accepted charge racing a wire."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.scenario import at


class UnreachableGateway:
    """A payment gateway whose every call fails (an outage on their side)."""

    name = "unreachable"

    def __init__(self) -> None:
        self.calls = 0

    async def charge(self, *, customer_id: str, amount: Decimal, currency: str,
                     idempotency_key: str) -> Any:
        self.calls += 1
        raise ConnectionError("gateway unreachable")


class WireArrivesDuringTheCharge:
    """A card gateway that accepts, while a wire for the same invoice lands in the
    ledger in the meantime (the charge runs outside the contract's lock)."""

    name = "simulated_card"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.calls = 0

    async def charge(self, *, customer_id: str, amount: Decimal, currency: str,
                     idempotency_key: str) -> Any:
        from activities.payment_record import record_payment_in
        from activities.payments import GatewayResult
        from models.operations import PaymentRequest

        self.calls += 1
        invoice_key = idempotency_key.split(":", 2)[2].rsplit(":", 1)[0]
        async with self.engine.begin() as conn:
            await record_payment_in(conn, PaymentRequest(
                contract_id="c-1", invoice_key=invoice_key, payment_key="wire-77",
                amount=amount, received_on=at("2027-02-01").date()))
        return GatewayResult(accepted=True, reference="card-ref-1")
