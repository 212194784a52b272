"""Settings: environment names, precedence, and the choices they drive."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from activities.payments import ManualGateway, SimulatedCardGateway
from worker.main import build_worker, gateway_for
from worker.settings import Settings
from worker.tuning import DB_CONNECTIONS, STICKY_SCHEDULE_TO_START, default_workflow_tasks


def test_conventional_urls_are_honoured_and_prefixed_ones_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BILLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("BILLOW_TEMPORAL_ADDRESS", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://plain/db")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "plain:7233")
    assert (Settings().database_url, Settings().temporal_address) == (
        "postgresql://plain/db",
        "plain:7233",
    )
    monkeypatch.setenv("BILLOW_DATABASE_URL", "postgresql://billow/db")
    assert Settings().database_url == "postgresql://billow/db"


def test_unset_services_mean_the_embedded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "BILLOW_DATABASE_URL",
        "TEMPORAL_ADDRESS",
        "BILLOW_TEMPORAL_ADDRESS",
    ):
        monkeypatch.delenv(name, raising=False)
    assert (Settings().database_url, Settings().temporal_address) == (None, None)


def test_the_payment_gateway_is_chosen_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(gateway_for(Settings()), ManualGateway)
    monkeypatch.setenv("BILLOW_PAYMENT_GATEWAY", "simulated_card")
    assert isinstance(gateway_for(Settings()), SimulatedCardGateway)
    monkeypatch.setenv("BILLOW_PAYMENT_GATEWAY", "stripe")
    with pytest.raises(ValidationError, match="payment_gateway"):
        Settings()


async def test_worker_capacity_settings_reach_the_worker(
    monkeypatch: pytest.MonkeyPatch, temporal_env: WorkflowEnvironment, db: AsyncEngine,
) -> None:
    monkeypatch.setenv("BILLOW_WORKER_MAX_CACHED_WORKFLOWS", "50")
    monkeypatch.setenv("BILLOW_WORKER_MAX_CONCURRENT_WORKFLOW_TASKS", "8")
    monkeypatch.setenv("BILLOW_WORKER_MAX_CONCURRENT_LOCAL_ACTIVITIES", "12")
    monkeypatch.setenv("BILLOW_WORKER_STICKY_SCHEDULE_TO_START_SECONDS", "45.5")
    worker = build_worker(temporal_env.client, db, "tuning",
                          tuning=Settings().worker_tuning())
    config = worker.config()
    assert (config.get("max_cached_workflows"), config.get("max_concurrent_workflow_tasks"),
            config.get("max_concurrent_local_activities")) == (50, 8, 12)
    assert config.get("sticky_queue_schedule_to_start_timeout") == timedelta(seconds=45.5)
    default = build_worker(temporal_env.client, db, "tuning-default").config()
    assert default.get("max_cached_workflows") == 1000  # the SDK's, when unset
    # Sized to the machine and the connection pool, not the SDK's 100 (worker/tuning.py).
    assert default.get("max_concurrent_workflow_tasks") == default_workflow_tasks()
    assert default.get("max_concurrent_local_activities") == DB_CONNECTIONS
    assert default.get("sticky_queue_schedule_to_start_timeout") == STICKY_SCHEDULE_TO_START
    monkeypatch.setenv("BILLOW_WORKER_STICKY_SCHEDULE_TO_START_SECONDS", "0")
    with pytest.raises(ValidationError, match="worker_sticky_schedule_to_start_seconds"):
        Settings()
    monkeypatch.setenv("BILLOW_WORKER_MAX_CACHED_WORKFLOWS", "0")
    with pytest.raises(ValidationError, match="worker_max_cached_workflows"):
        Settings()
