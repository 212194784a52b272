"""Payment gateways and the auto-pay charge activities.

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

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import metrics
from activities.errors import business_errors
from activities.ledger_store import lock_contract, post_journal
from activities.payment_record import record_payment_in
from models.corrections import RefundRequest, RefundView
from models.operations import (
    ActivityName,
    CardCharge,
    ChargeRequest,
    ChargeResult,
    PaymentRequest,
)
from models.revenue import payment_received, refund_paid


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

    async def refund(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult:
        """Pay ``amount`` back to the customer (a credit note's remainder, SPEC.md
        section 11); deduplicated on ``idempotency_key`` like a charge."""
        ...


class ManualGateway:
    """No stored payment method: auto-pay always falls back to invoices."""

    name = "manual"

    async def charge(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult:
        return GatewayResult(accepted=False, reason="no payment method on file")

    async def refund(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult:
        # Paid out by hand (a bank transfer): billow records that it is owed and done.
        return GatewayResult(accepted=True, reference=None)


@dataclass
class SimulatedCardGateway:
    """A card gateway for tests and ``billow simulate``.

    ``declines[customer]`` is how many of that customer's next distinct
    charges are declined. Results are remembered per idempotency key, as a
    real gateway would.
    """

    declines: dict[str, int] = field(default_factory=dict)
    name: str = "simulated_card"
    refunds: list[tuple[str, Decimal]] = field(default_factory=list)  # what it paid back
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

    async def refund(
        self, *, customer_id: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> GatewayResult:
        if idempotency_key in self._seen:
            return self._seen[idempotency_key]
        self.refunds.append((customer_id, amount))
        result = GatewayResult(accepted=True, reference=f"sim_refund_{len(self.refunds)}")
        self._seen[idempotency_key] = result
        return result


async def _unapplied_exists(conn: AsyncConnection, req: PaymentRequest) -> bool:
    found = await conn.scalar(
        text("SELECT 1 FROM unapplied_payments WHERE contract_id = :cid AND payment_key = :key"),
        {"cid": req.contract_id, "key": req.payment_key},
    )
    return found is not None


async def record_unapplied(conn: AsyncConnection, req: PaymentRequest, reason: str) -> None:
    """Money received that no invoice takes: kept, with its journal entry."""
    inserted = await conn.scalar(
        text(
            """
            INSERT INTO unapplied_payments (contract_id, payment_key, invoice_key, amount,
                received_on, method, gateway_ref, reason)
            VALUES (:cid, :key, :inv, :amount, :on, :method, :ref, :reason)
            ON CONFLICT (contract_id, payment_key) DO NOTHING RETURNING id
            """
        ),
        {"cid": req.contract_id, "key": req.payment_key, "inv": req.invoice_key,
         "amount": req.amount, "on": req.received_on, "method": req.method,
         "ref": req.gateway_ref, "reason": reason},
    )
    if inserted is not None:
        # Cash in, receivable credited: the customer's credit balance.
        await post_journal(conn, req.contract_id,
                           [payment_received(f"unapplied:{req.payment_key}", req.amount)],
                           req.received_on)


async def record_refund(conn: AsyncConnection, req: RefundRequest, *, method: str,
                        reference: str | None) -> RefundView:
    """The gateway paid a pending refund back: mark it and settle what the
    receivable owed the customer (Dr receivable / Cr cash). Idempotent."""
    row = (
        await conn.execute(
            text(
                """
                UPDATE refunds SET status = 'refunded', method = :method, gateway_ref = :ref,
                    refunded_on = :on
                WHERE contract_id = :cid AND refund_key = :key AND status = 'pending'
                RETURNING *
                """
            ),
            {"method": method, "ref": reference, "on": req.on, "cid": req.contract_id,
             "key": req.refund_key},
        )
    ).one_or_none()
    if row is not None:
        invoice_key = await conn.scalar(
            text("SELECT invoice_key FROM credit_notes WHERE id = :id"), {"id": row.credit_note_id})
        await post_journal(conn, req.contract_id, [refund_paid(req.refund_key, row.amount)],
                           req.on, invoice_key)
    else:
        row = (
            await conn.execute(
                text("SELECT * FROM refunds WHERE contract_id = :cid AND refund_key = :key"),
                {"cid": req.contract_id, "key": req.refund_key},
            )
        ).one()
    return RefundView(refund_key=row.refund_key, amount=row.amount, status=row.status,
                      method=row.method, gateway_ref=row.gateway_ref, refunded_on=row.refunded_on)


class PaymentActivities:
    def __init__(self, engine: AsyncEngine, gateway: PaymentGateway) -> None:
        self.engine = engine
        self.gateway = gateway

    @activity.defn(name=ActivityName.CHARGE_CARD.value)
    async def charge_card(self, req: ChargeRequest) -> CardCharge:
        """Ask the gateway for the money; records nothing (remote I/O only).

        The contract workflow runs this outside its lock with a few attempts;
        the gateway deduplicates on the key, so a retried attempt never
        charges twice. What it took is recorded by `record_charge`, a ledger
        step that retries until the database takes it.
        """
        result = await self.gateway.charge(
            customer_id=req.customer_id,
            amount=req.amount,
            currency=req.currency,
            idempotency_key=req.idempotency_key,
        )
        return CardCharge(accepted=result.accepted, reference=result.reference,
                          reason=result.reason, method=self.gateway.name)

    @activity.defn(name=ActivityName.RECORD_CHARGE.value)
    @business_errors
    async def record_charge(self, req: PaymentRequest) -> ChargeResult:
        """Record money the gateway took: on its invoice, or, when the invoice no
        longer takes it (paid another way meanwhile), as an unapplied payment."""
        async with self.engine.begin() as conn:
            await lock_contract(conn, req.contract_id)
            if await _unapplied_exists(conn, req):
                return ChargeResult(accepted=True, reason="recorded as unapplied",
                                    payment=None, unapplied=True)
            try:
                async with conn.begin_nested():
                    payment = await record_payment_in(conn, req)
                return ChargeResult(accepted=True, reason=None, payment=payment)
            except (ApplicationError, LookupError) as exc:
                reason = exc.message if isinstance(exc, ApplicationError) else str(exc)
            await record_unapplied(conn, req, reason)
        activity.logger.error(
            "charge %s of contract %s took %s but the invoice refused it (%s): recorded as "
            "an unapplied payment for ops to refund or apply",
            req.payment_key, req.contract_id, req.amount, reason,
        )
        metrics.unapplied_payment()
        return ChargeResult(accepted=True, reason=reason, payment=None, unapplied=True)

    @activity.defn(name=ActivityName.REFUND.value)
    @business_errors
    async def refund(self, req: RefundRequest) -> RefundView:
        """Pay a credit note's refund back through the gateway, then record it.

        The gateway deduplicates on the refund key (``refund:<correction id>``),
        so a retried activity never pays twice; a declined refund stays
        pending in the ledger for ops (and a resend of the credit retries it).
        """
        result = await self.gateway.refund(
            customer_id=req.customer_id, amount=req.amount, currency=req.currency,
            idempotency_key=f"{req.contract_id}:{req.refund_key}",
        )
        if not result.accepted:
            raise ApplicationError(f"refund {req.refund_key}: {result.reason or 'declined'}",
                                   type="RefundDeclined", non_retryable=True)
        async with self.engine.begin() as conn:
            await lock_contract(conn, req.contract_id)
            return await record_refund(conn, req, method=self.gateway.name,
                                       reference=result.reference)

    @activity.defn(name=ActivityName.CHARGE_INVOICE.value)
    @business_errors
    async def charge_invoice(self, req: ChargeRequest) -> ChargeResult:
        """Charge and record in one activity (workflows from before the charge
        moved outside the contract lock still call it)."""
        key = req.idempotency_key
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
