"""Payment gateways and the auto-pay charge activity.

A gateway charges a customer's payment method. Every charge carries an
idempotency key (``charge:<contract>:<invoice key>:<attempt>``, the business
retry number, never Temporal's attempt), so a retried activity cannot charge
twice: real gateways (Stripe, Adyen) deduplicate on it, and the simulated one
here does too. An accepted charge is recorded as a payment in the same
transaction as its ledger effects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from activities.errors import business_errors
from activities.ledger import record_payment_in
from activities.ledger_store import lock_contract
from models.operations import ActivityName, ChargeRequest, ChargeResult, PaymentRequest


@dataclass(frozen=True)
class GatewayResult:
    accepted: bool
    reference: str | None = None
    reason: str | None = None


class PaymentGateway(Protocol):
    name: str

    async def charge(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult: ...


class ManualGateway:
    """No stored payment method: auto-pay always falls back to invoices."""

    name = "manual"

    async def charge(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult:
        return GatewayResult(accepted=False, reason="no payment method on file")


@dataclass
class SimulatedCardGateway:
    """A card gateway for tests and ``billow simulate``.

    ``declines[customer]`` is how many of that customer's next distinct
    charges are declined. Results are remembered per idempotency key, as a
    real gateway would.
    """

    declines: dict[str, int] = field(default_factory=dict)
    name: str = "simulated_card"
    _seen: dict[str, GatewayResult] = field(default_factory=dict)

    async def charge(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult:
        if idempotency_key in self._seen:
            return self._seen[idempotency_key]
        if self.declines.get(customer_id, 0) > 0:
            self.declines[customer_id] -= 1
            result = GatewayResult(accepted=False, reason="card_declined")
        else:
            result = GatewayResult(accepted=True, reference=f"sim_{len(self._seen) + 1}")
        self._seen[idempotency_key] = result
        return result


class PaymentActivities:
    def __init__(self, engine: AsyncEngine, gateway: PaymentGateway) -> None:
        self.engine = engine
        self.gateway = gateway

    @activity.defn(name=ActivityName.CHARGE_INVOICE.value)
    @business_errors
    async def charge_invoice(self, req: ChargeRequest) -> ChargeResult:
        key = f"charge:{req.contract_id}:{req.invoice_key}:{req.attempt}"
        result = await self.gateway.charge(
            customer_id=req.customer_id,
            amount=req.amount,
            currency=req.currency,
            idempotency_key=key,
        )
        if not result.accepted:
            return ChargeResult(accepted=False, reason=result.reason, payment=None)
        async with self.engine.begin() as conn:
            await lock_contract(conn, req.contract_id)
            payment = await record_payment_in(
                conn,
                PaymentRequest(
                    contract_id=req.contract_id,
                    invoice_key=req.invoice_key,
                    payment_key=key,
                    amount=req.amount,
                    received_on=req.on,
                    method=self.gateway.name,
                    gateway_ref=result.reference,
                ),
            )
        return ChargeResult(accepted=True, reason=None, payment=payment)
