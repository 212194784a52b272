"""Collection: issued invoices, auto-pay, payments, due dates and dunning.

Auto-pay charges the gateway outside the contract lock (remote I/O must not
hold up amendments); a charge the gateway took is always recorded, on the
invoice or, if it was paid meanwhile, as an unapplied payment for ops.
Payments are re-checked under the lock: payments accepted together never add
up to more than the invoice.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from models.operations import (
    ActivityName,
    CardCharge,
    ChargeRequest,
    ChargeResult,
    DunningRequest,
    DunningStep,
    IssuedInvoice,
    PaymentRequest,
    PaymentResult,
)
from models.periods import local_midnight_utc
from workflows.contract_io import PaymentInput
from workflows.contract_state import (
    CHARGE_RETRY_DAYS,
    CollectionState,
    UnappliedPayment,
)
from workflows.contract_steps import (
    ACTIVITY_FAILURES,
    CHARGE_RETRY,
    SHORT,
    ContractSteps,
    cause_of,
    invalid,
    refusal,
)


class CollectionSteps(ContractSteps):
    """Issued invoices are collected: auto-pay, payments, due dates, dunning."""

    async def _issued(self, invoice: IssuedInvoice) -> None:
        """Remember a finalized invoice and start collecting it."""
        st = self.state
        st.put_invoice(invoice)
        if invoice.status not in ("open", "overdue") or invoice.due_on is None:
            self._publish()
            return
        collection = CollectionState(
            invoice_key=invoice.key,
            due_on=invoice.due_on,
            overdue_at=local_midnight_utc(invoice.due_on + timedelta(days=1), st.terms.timezone),
        )
        st.collections.append(collection)
        if st.terms.auto_pay:
            if workflow.patched("charge-outside-lock"):
                # Charged by the main loop, outside the contract lock: the
                # gateway is remote I/O and must not hold up amendments.
                collection.next_charge_at = workflow.now()
                self._wakeup += 1
            else:
                await self._charge(collection)
        self._publish()

    async def _charge(self, collection: CollectionState) -> None:
        st = self.state
        inv = st.invoice(collection.invoice_key)
        if inv is None or inv.outstanding <= 0:
            return  # settled meanwhile: nothing to charge
        collection.charge_attempts += 1
        try:
            result = await self._call(
                ActivityName.CHARGE_INVOICE,
                ChargeRequest(
                    contract_id=st.terms.contract_id,
                    customer_id=st.terms.customer.id,
                    invoice_key=inv.key,
                    amount=inv.outstanding,
                    currency=inv.currency,
                    attempt=collection.charge_attempts,
                    on=st.local_date(workflow.now()),
                ),
                ChargeResult,
                summary=f"charge {inv.key} (attempt {collection.charge_attempts})",
            )
        except ACTIVITY_FAILURES as exc:
            # The ledger refused the charge's payment (non-retryable): stop
            # auto-pay for this invoice and flag it; never wedge the contract.
            workflow.logger.error("auto-pay for %s stopped: %s", inv.key, exc.cause or exc)
            collection.next_charge_at = None
            return
        if result.payment is not None:
            self._paid(result.payment)
            return
        attempts = collection.charge_attempts
        if attempts <= len(CHARGE_RETRY_DAYS):
            collection.next_charge_at = workflow.now() + timedelta(
                days=CHARGE_RETRY_DAYS[attempts - 1]
            )
        else:
            collection.next_charge_at = None  # give up: due-date rules take over

    async def _charge_unlocked(self, collection: CollectionState) -> None:
        """One auto-pay attempt: the gateway call runs outside the contract lock.

        The attempt is counted and its request fixed under the lock; the
        charge (bounded retries) runs without it, so amendments, payments and
        boundaries go on meanwhile; its outcome is applied under the lock
        again. A charge that cannot be made counts as a decline.
        """
        st = self.state
        async with self._lock:
            inv = st.invoice(collection.invoice_key)
            if collection not in st.collections or inv is None or inv.outstanding <= 0:
                return  # settled or dropped meanwhile: nothing to charge
            collection.charge_attempts += 1
            attempt = collection.charge_attempts
            request = ChargeRequest(
                contract_id=st.terms.contract_id,
                customer_id=st.terms.customer.id,
                invoice_key=inv.key,
                amount=inv.outstanding,
                currency=inv.currency,
                attempt=attempt,
                on=st.local_date(workflow.now()),
            )
        charge: CardCharge | None
        try:
            charge = await workflow.execute_activity(
                ActivityName.CHARGE_CARD.value,
                request,
                result_type=CardCharge,
                start_to_close_timeout=SHORT,
                retry_policy=CHARGE_RETRY,
                summary=f"charge {request.invoice_key} (attempt {attempt})",
            )
        except ActivityError as exc:
            workflow.logger.warning("charge %s attempt %d failed, counted as declined: %s",
                                    request.invoice_key, attempt, refusal(exc))
            charge = None
        async with self._lock:
            if charge is not None and charge.accepted:
                # Money taken is always recorded: on the invoice, or (paid
                # meanwhile) as an unapplied payment for ops; a ledger step
                # that retries until the database takes it.
                recorded = await self._call(
                    ActivityName.RECORD_CHARGE,
                    PaymentRequest(
                        contract_id=request.contract_id,
                        invoice_key=request.invoice_key,
                        payment_key=request.idempotency_key,
                        amount=request.amount,
                        received_on=request.on,
                        method=charge.method,
                        gateway_ref=charge.reference,
                    ),
                    ChargeResult,
                    summary=f"record charge {request.invoice_key} (attempt {attempt})",
                )
                if recorded.payment is not None:
                    self._paid(recorded.payment)
                elif recorded.unapplied:
                    st.unapplied_payments.append(UnappliedPayment(
                        payment_key=request.idempotency_key, invoice_key=request.invoice_key,
                        amount=request.amount, reason=recorded.reason or "",
                    ))
                    self._publish()
                if collection in st.collections:
                    collection.next_charge_at = None  # charged: nothing to retry
                return
            if collection not in st.collections:
                return
            if attempt <= len(CHARGE_RETRY_DAYS):
                collection.next_charge_at = workflow.now() + timedelta(
                    days=CHARGE_RETRY_DAYS[attempt - 1]
                )
            else:
                collection.next_charge_at = None  # give up: due-date rules take over

    def _paid(self, payment: PaymentResult) -> None:
        st = self.state
        inv = st.invoice(payment.invoice_key)
        if inv is None:
            return
        if payment.amount_paid < inv.amount_paid:
            return  # the first answer to a resent payment: this state is newer
        st.put_invoice(
            inv.model_copy(
                update={
                    "status": payment.status,
                    "amount_paid": payment.amount_paid,
                    "paid_on": payment.paid_on,
                }
            )
        )
        if payment.status == "paid":
            st.collections = [c for c in st.collections if c.invoice_key != payment.invoice_key]
        self._publish()

    async def _run_due_collection(self) -> None:
        st = self.state
        now = workflow.now()
        for collection in list(st.collections):
            # Each step re-checks under the lock: a payment handler may have
            # settled the invoice (and dropped its collection) while we waited.
            if collection.next_charge_at is not None and collection.next_charge_at <= now:
                collection.next_charge_at = None
                if workflow.patched("charge-outside-lock"):
                    await self._charge_unlocked(collection)
                else:
                    async with self._lock:
                        if collection in st.collections:
                            await self._charge(collection)
            for at, step in collection.next_steps(st.terms.timezone):
                if at > now:
                    break
                async with self._lock:
                    if collection not in st.collections:
                        break
                    await self._step_run(
                        ActivityName.DUNNING_STEP,
                        DunningRequest(
                            contract_id=st.terms.contract_id,
                            invoice_key=collection.invoice_key,
                            step=step,
                            on=st.local_date(at),
                        ),
                        summary=f"{step.value.replace('_', ' ')} {collection.invoice_key}",
                    )
                collection.steps_done.append(step)
                if step is DunningStep.OVERDUE:
                    inv = st.invoice(collection.invoice_key)
                    if inv is not None and inv.status == "open":
                        st.put_invoice(inv.model_copy(update={"status": "overdue"}))
            # After the last reminder nothing more is scheduled; the invoice
            # stays overdue in the ledger and in this state.
            if collection in st.collections and collection.next_instant(st.terms.timezone) is None:
                st.collections.remove(collection)
        self._publish()

    async def _pay(self, payment: PaymentInput) -> PaymentResult:
        st = self.state
        update = workflow.current_update_info()
        key = payment.payment_id or (f"payment:{update.id}" if update else None)
        if key is None:  # unreachable: the signal form requires payment_id
            raise ApplicationError("payment_id: required", type="InvalidPayment")
        async with self._lock:
            # Re-checked under the lock: payments accepted together must not
            # add up to more than the invoice, and an invoice the validator did
            # not know yet (a close still finishing) is known now or unknown.
            self._check_pay(payment, known_only=False)
            try:
                result = await self._call(
                    ActivityName.RECORD_PAYMENT,
                    PaymentRequest(
                        contract_id=st.terms.contract_id,
                        invoice_key=payment.invoice,
                        payment_key=key,
                        amount=payment.amount,
                        received_on=st.local_date(workflow.now()),
                    ),
                    PaymentResult,
                    summary=f"record payment {payment.amount} for {payment.invoice}",
                )
            except ACTIVITY_FAILURES as exc:
                # The ledger refused it (non-retryable): fail this update, not
                # the workflow, with the ledger's reason and type.
                cause = cause_of(exc)
                kind = cause.type if cause else None
                if kind == "NotFound":  # not in the ledger either
                    raise invalid("InvalidPayment", "invoice",
                                   f"unknown invoice {payment.invoice!r}") from exc
                raise ApplicationError(
                    cause.message if cause else str(exc),
                    *(cause.details if cause else ()),
                    type=kind if kind and kind != "BusinessError" else "InvalidPayment",
                    non_retryable=True,
                ) from exc
        if key not in st.payment_keys:
            st.payment_keys.append(key)
        self._paid(result)
        # A payment can only remove collection steps. Re-arm the main loop's
        # timer only if the step it sleeps for is gone: a cancelled timer costs
        # two history events, a timer that fires for nothing costs five.
        if self._next_wake() != self._sleeping_until:
            self._wakeup += 1
        return result

    def _check_pay(self, payment: PaymentInput, *, known_only: bool) -> None:
        """Refuse what can never be paid. An invoice this state does not know yet
        is let through: the state can lag the ledger (after a worker crash the
        step that issued it is replayed only once the main loop gets to it),
        and a payment for an invoice the ledger has is never refused for that
        (SPEC.md section 10). Under the lock the ledger decides (`_pay`)."""
        if payment.amount <= 0:
            raise invalid("InvalidPayment", "amount", "must be positive")
        inv = self.state.invoice(payment.invoice)
        if inv is None:
            if known_only or workflow.patched("unknown-invoice-to-ledger"):
                return
            raise invalid("InvalidPayment", "invoice", f"unknown invoice {payment.invoice!r}")
        if payment.payment_id is not None and payment.payment_id in self.state.payment_keys:
            return  # a resend: the ledger answers with what it recorded
        if inv.status in ("paid", "void"):
            raise invalid("InvalidPayment", "invoice", f"{inv.key} is already {inv.status}")
        outstanding = inv.outstanding
        if payment.amount > outstanding:
            raise invalid("InvalidPayment", "amount",
                           f"{payment.amount} exceeds the outstanding {outstanding}")
