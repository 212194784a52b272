"""Metrics recorders, the API's request metrics, JSON logs, SDK runtime fallbacks."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from activities import metrics
from models.operations import DunningStep, IssuedInvoice
from worker.logging_setup import JsonFormatter, TextFormatter, billing_context, configure_logging
from worker.metrics import install_http_metrics
from worker.settings import Settings
from worker.telemetry import worker_runtime


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def invoice(number: str | None = "INV-000001", total: str = "123.45") -> IssuedInvoice:
    return IssuedInvoice(
        key="usage-2027-01", number=number, kind="usage", status="open", currency="USD",
        period_start=date(2027, 1, 1), period_end=date(2027, 1, 31), issued_on=date(2027, 2, 1),
        due_on=date(2027, 3, 3), subtotal=Decimal(total), credits_applied=Decimal(0),
        total=Decimal(total),
    )


# --- billow's counters -------------------------------------------------------------------


def test_finalized_invoices_count_once_with_their_amount() -> None:
    labels = {"kind": "usage", "currency": "USD"}
    before = (sample("billow_invoices_finalized_total", **labels),
              sample("billow_billed_amount_total", **labels))
    metrics.invoice_finalized(invoice())
    metrics.invoice_finalized(invoice(), new=False)  # a retry that found it done
    metrics.invoice_finalized(invoice(number=None))  # held, not finalized
    metrics.invoice_finalized(None)
    after = (sample("billow_invoices_finalized_total", **labels),
             sample("billow_billed_amount_total", **labels))
    assert after[0] - before[0] == 1
    assert after[1] - before[1] == pytest.approx(123.45)


def test_usage_outcomes_are_counted_and_the_report_passes_through() -> None:
    class Report:
        accepted, duplicate, rejected = 15, 1, 1

    before = {s: sample("billow_usage_events_total", status=s)
              for s in ("accepted", "duplicate", "rejected")}
    report = Report()
    assert metrics.usage_ingested(report) is report
    assert {s: sample("billow_usage_events_total", status=s) - v for s, v in before.items()} == {
        "accepted": 15, "duplicate": 1, "rejected": 1}


def test_overdue_and_dunning_steps() -> None:
    overdue = sample("billow_invoices_overdue_total")
    reminders = sample("billow_dunning_steps_total", step="reminder_1")
    metrics.dunning_recorded(DunningStep.OVERDUE, new=True)
    metrics.dunning_recorded(DunningStep.OVERDUE, new=False)
    metrics.dunning_recorded(DunningStep.REMINDER_1, new=True)
    assert sample("billow_invoices_overdue_total") - overdue == 1
    assert sample("billow_dunning_steps_total", step="reminder_1") - reminders == 1


def test_a_metrics_failure_never_fails_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @property
        def accepted(self) -> int:
            raise RuntimeError("boom")

        duplicate = rejected = 0

    broken = Broken()
    with caplog.at_level(logging.WARNING, logger="billow.metrics"):
        assert metrics.usage_ingested(broken) is broken
    assert "could not record metric usage_ingested" in caplog.text


# --- API request metrics --------------------------------------------------------------------


async def test_api_request_metrics_use_route_templates() -> None:
    app = FastAPI()

    @app.get("/v1/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    install_http_metrics(app)
    route = "/v1/things/{thing_id}"
    before = sample("billow_http_requests_total", method="GET", route=route, status="200")
    unmatched = sample("billow_http_requests_total", method="GET", route="<unmatched>",
                       status="404")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for i in range(3):
            assert (await client.get(f"/v1/things/{i}")).status_code == 200
        assert (await client.get("/nope")).status_code == 404
        scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert sample("billow_http_requests_total", method="GET", route=route, status="200") \
        - before == 3
    assert sample("billow_http_requests_total", method="GET", route="<unmatched>",
                  status="404") - unmatched == 1
    text = scraped.text
    assert 'billow_http_request_duration_seconds_bucket{le="0.005",method="GET"' in text
    # billow's own counters are exposed by every process that imports them.
    assert "# TYPE billow_invoices_finalized_total counter" in text
    assert "/v1/things/0" not in text  # raw paths never become labels


# --- logs -------------------------------------------------------------------------------------


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("billow.test", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_contract_and_invoice_come_from_the_temporal_workflow_id() -> None:
    activity = {"workflow_id": "contract:acme-2027", "workflow_run_id": "r1",
                "activity_type": "close_period", "attempt": 2}
    assert billing_context(_record(temporal_activity=activity)) == {
        "workflow_id": "contract:acme-2027", "run_id": "r1", "activity_type": "close_period",
        "attempt": 2, "contract_id": "acme-2027"}
    wf = {"workflow_id": "invoice:acme-2027:usage-2027-Q1", "run_id": "r2"}
    ctx = billing_context(_record(temporal_workflow=wf))
    assert (ctx["contract_id"], ctx["invoice_key"]) == ("acme-2027", "usage-2027-Q1")


def test_json_lines_carry_explicit_extra_fields() -> None:
    line = JsonFormatter().format(_record(contract_id="c-1", invoice_key="usage-2027-01",
                                          amount=Decimal("10.50")))
    doc = json.loads(line)
    assert doc["message"] == "hello x"
    assert doc["level"] == "INFO"
    assert (doc["contract_id"], doc["invoice_key"], doc["amount"]) == (
        "c-1", "usage-2027-01", "10.50")
    assert doc["ts"].endswith("+00:00")


def test_json_lines_carry_exceptions() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in doc["exc_info"]


def test_text_lines_name_the_contract() -> None:
    line = TextFormatter().format(_record(contract_id="c-1", invoice_key="k"))
    assert line.endswith("hello x [contract=c-1 invoice=k]")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    from temporalio import activity, workflow

    activity.logger.activity_info_on_message = True
    workflow.logger.workflow_info_on_message = True


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    configure_logging("json", "DEBUG")
    configure_logging("json", "INFO")
    ours = [h for h in root.handlers if getattr(h, "_billow_handler", False)]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    assert foreign in root.handlers
    assert root.level == logging.INFO


# --- SDK runtime --------------------------------------------------------------------------


def test_a_busy_sdk_metrics_port_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(metrics_host="127.0.0.1", worker_metrics_port=port)
        with caplog.at_level(logging.ERROR, logger="billow.telemetry"):
            runtime = worker_runtime(settings)
    assert runtime is not None
    assert "Temporal SDK metrics disabled" in caplog.text
