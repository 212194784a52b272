"""The harness itself: real servers, fast time skipping, isolation."""

from __future__ import annotations

import uuid
from datetime import timedelta

from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.migrate import alembic_config


@workflow.defn
class LongSleepWorkflow:
    @workflow.run
    async def run(self, days: int) -> str:
        start = workflow.now()
        await workflow.sleep(timedelta(days=days), summary=f"sleep {days} days")
        return str((workflow.now() - start).days)


async def test_a_400_day_sleep_finishes_in_seconds(temporal_env: WorkflowEnvironment) -> None:
    async with Worker(temporal_env.client, task_queue="harness", workflows=[LongSleepWorkflow]):
        elapsed_days = await temporal_env.client.execute_workflow(
            LongSleepWorkflow.run, 400, id=f"harness-{uuid.uuid4()}", task_queue="harness"
        )
    assert elapsed_days == "400"


async def test_rows_do_not_leak_between_tests_first(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(text("INSERT INTO customers (id, name) VALUES ('leak', 'Leak Ltd')"))
        count = await conn.scalar(text("SELECT count(*) FROM customers"))
    assert count == 1


async def test_rows_do_not_leak_between_tests_second(db: AsyncEngine) -> None:
    async with db.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM customers WHERE id = 'leak'"))
    assert count == 0


async def test_database_is_migrated_to_head(db: AsyncEngine, database_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    async with db.connect() as conn:
        version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        series = await conn.scalar(
            text("SELECT next_value FROM invoice_number_series WHERE series = 'default'"))
    assert version == head
    assert series == 1


async def test_tables_match_the_migrations(db: AsyncEngine) -> None:
    """The SQLModel classes and the Alembic migrations describe one schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    import activities.tables  # noqa: F401

    def diff(sync_conn: Connection) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))

    async with db.connect() as conn:
        differences = await conn.run_sync(diff)
    # Hand-written indexes (BRIN, covering) are not modelled on the classes.
    differences = [d for d in differences if not (isinstance(d, tuple) and d[0] == "remove_index")]
    assert differences == []


async def test_dev_server_has_visibility_and_search_attributes(
    dev_temporal_env: WorkflowEnvironment,
) -> None:
    async with Worker(
        dev_temporal_env.client, task_queue="harness-dev", workflows=[LongSleepWorkflow]
    ):
        wf_id = f"harness-dev-{uuid.uuid4()}"
        handle = await dev_temporal_env.client.start_workflow(
            LongSleepWorkflow.run, 0, id=wf_id, task_queue="harness-dev"
        )
        await handle.result()
    found = [w.id async for w in dev_temporal_env.client.list_workflows(f"WorkflowId = '{wf_id}'")]
    assert found == [wf_id]
