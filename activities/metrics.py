"""billow's own Prometheus counters, incremented where the work happens.

The counters live here, not in ``worker``, because activities and usage
ingestion increment them and imports flow ``models`` <- ``activities`` <-
``worker``/``api``. They exist from import on in the process-wide default
registry, so whichever process does the work exposes them: the worker (on
``BILLOW_WORKER_APP_METRICS_PORT``) counts invoices, grants and dunning; the
API (on its ``/metrics``) counts ingested usage. Exposition is
``worker/metrics.py``'s job.

Every recorder is safe to call anywhere: a metrics problem is logged and
never fails an activity, and without ``prometheus_client`` installed the
counters are no-ops. Activities are idempotent and retried, so each recorder
is told whether this call did the work (``new``) and counts only then.

Names (``_total`` is added by the exposition):

- ``billow_usage_events_total{status}``: usage events by ingestion outcome
  (``accepted``, ``duplicate``, ``conflict``, ``rejected``); ``conflict``
  counts events sent with a stored id but other content (a producer reusing
  ids: those events are not stored, so not billed);
- ``billow_invoices_finalized_total{kind,currency}``: invoices given a number;
- ``billow_billed_amount_total{kind,currency}``: their totals (after credits),
  in major currency units;
- ``billow_invoices_held_total``: usage invoices held for attention;
- ``billow_credit_grants_total{currency}``: credit grants recorded;
- ``billow_dunning_steps_total{step}``: dunning steps recorded;
- ``billow_invoices_overdue_total``: invoices that went overdue;
- ``billow_usage_ingest_races_total``: batches redone because a concurrent
  batch stored one of their ids first (each is still stored once);
- ``billow_webhook_deliveries_total{outcome}``: webhook POSTs acknowledged or failed;
- ``billow_webhook_endpoints_disabled_total``: endpoints disabled after three days of
  failures (alert on any increase);
- ``billow_usage_events_folded_total``: events the compactor folded into
  rollups (compare with accepted events: a gap that keeps growing means
  compaction is paused or failing).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, TypeVar

from models.operations import DunningStep, GrantRequest, IssuedInvoice

log = logging.getLogger("billow.metrics")


class _Child(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Counter(_Child, Protocol):
    def labels(self, *labelvalues: str) -> _Child: ...


class _NoopCounter:
    """Stands in for a counter when prometheus_client is not installed."""

    def inc(self, amount: float = 1) -> None:
        pass

    def labels(self, *labelvalues: str) -> _NoopCounter:
        return self


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> _Counter:
    try:
        from prometheus_client import Counter
    except ImportError:  # pragma: no cover - prometheus-client is a dependency
        return _NoopCounter()
    counter: _Counter = Counter(name, doc, labels)
    return counter


USAGE_EVENTS = _counter(
    "billow_usage_events", "Usage events by ingestion outcome.", ("status",)
)
USAGE_INGEST_RACES = _counter(
    "billow_usage_ingest_races",
    "Usage batches redone on the ON CONFLICT path after racing a concurrent batch.",
)
USAGE_FOLDED = _counter(
    "billow_usage_events_folded", "Usage events folded into daily rollups by the compactor."
)
INVOICES_FINALIZED = _counter(
    "billow_invoices_finalized", "Invoices finalized (numbered).", ("kind", "currency")
)
BILLED_AMOUNT = _counter(
    "billow_billed_amount",
    "Total of finalized invoices after credits, in major currency units.",
    ("kind", "currency"),
)
INVOICES_HELD = _counter(
    "billow_invoices_held", "Usage invoices held for attention (e.g. unpriced usage)."
)
CREDIT_GRANTS = _counter("billow_credit_grants", "Credit grants recorded.", ("currency",))
DUNNING_STEPS = _counter("billow_dunning_steps", "Dunning steps recorded.", ("step",))
INVOICES_OVERDUE = _counter("billow_invoices_overdue", "Invoices that went overdue.")


def _guarded(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # metrics never fail billing
        log.warning("could not record metric %s", what, exc_info=True)


class _IngestCounts(Protocol):
    @property
    def accepted(self) -> int: ...
    @property
    def duplicate(self) -> int: ...
    @property
    def rejected(self) -> int: ...


_Report = TypeVar("_Report", bound=_IngestCounts)


def usage_folded(events: int) -> None:
    """Count the events one compaction run folded."""
    if events:
        _guarded("usage_folded", lambda: USAGE_FOLDED.inc(events))


def usage_ingested(report: _Report) -> _Report:
    """Count one ingested batch by outcome; returns ``report`` unchanged."""

    def record() -> None:
        for status in ("accepted", "duplicate", "conflict", "rejected"):
            n = getattr(report, status, 0)  # a report without conflicts may omit them
            if n:
                USAGE_EVENTS.labels(status).inc(n)

    _guarded("usage_ingested", record)
    return report


def invoice_finalized(invoice: IssuedInvoice | None, *, new: bool = True) -> None:
    """An invoice this call finalized (no-op for ``None``, a held one, or a repeat)."""

    def record() -> None:
        if invoice is None or invoice.number is None or not new:
            return
        INVOICES_FINALIZED.labels(invoice.kind, invoice.currency).inc()
        BILLED_AMOUNT.labels(invoice.kind, invoice.currency).inc(float(invoice.total))

    _guarded("invoice_finalized", record)


UNAPPLIED_PAYMENTS = _counter(
    "billow_unapplied_payments",
    "Charges a gateway accepted that their invoice refused (paid meanwhile): kept for ops.",
)


def unapplied_payment() -> None:
    _guarded("unapplied_payment", UNAPPLIED_PAYMENTS.inc)


def invoice_held() -> None:
    _guarded("invoice_held", INVOICES_HELD.inc)


def credits_granted(req: GrantRequest, invoice: IssuedInvoice | None, *, new: bool) -> None:
    """A grant (and the commitment/top-up invoice paying for it) this call recorded."""
    if not new:
        return
    _guarded("credits_granted", lambda: CREDIT_GRANTS.labels(req.currency).inc())
    invoice_finalized(invoice)


def dunning_recorded(step: DunningStep, *, new: bool) -> None:
    """A dunning step this call recorded; ``overdue`` also counts an overdue invoice."""
    if not new:
        return

    def record() -> None:
        DUNNING_STEPS.labels(step.value).inc()
        if step is DunningStep.OVERDUE:
            INVOICES_OVERDUE.inc()

    _guarded("dunning_recorded", record)


WEBHOOK_DELIVERIES = _counter(
    "billow_webhook_deliveries", "Webhook delivery attempts by outcome.", ("outcome",)
)
WEBHOOK_ENDPOINTS_DISABLED = _counter(
    "billow_webhook_endpoints_disabled",
    "Webhook endpoints disabled after their retries ran out (alert on any increase).",
)


def webhook_delivered(*, ok: bool) -> None:
    _guarded("webhook_delivered",
             lambda: WEBHOOK_DELIVERIES.labels("acknowledged" if ok else "failed").inc())


def webhook_endpoint_disabled() -> None:
    _guarded("webhook_endpoint_disabled", WEBHOOK_ENDPOINTS_DISABLED.inc)
