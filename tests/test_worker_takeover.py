"""Two workers on one task queue share the contracts, and when one is lost the
other finishes its work (issue 13, "scale out").

The stack is the one `billow up` runs, as separate processes (bench/chaos's
`Stack`: a Temporal dev server, the API and two `billow worker` processes on
an embedded PostgreSQL). Backdated contracts are created and registered;
their past periods close one usage grace window after creation. Before that,
one worker is killed with SIGKILL and never comes back: every period must
still be invoiced, by the other worker, with gapless numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.db import asyncpg_dsn
from bench.chaos.processes import NAMESPACE, Postgres, Stack
from bench.lifecycle import CATALOG, first_of_month

CONTRACTS = 6
PERIODS = 2
GRACE_S = 15  # the closes wait this long after creation: time to kill a worker first


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    pg = Postgres(tmp_path / "pg")
    await asyncio.to_thread(pg.start, "takeover")
    s = Stack("takeover", tmp_path, pg, "takeover", workers=2)
    try:
        await s.start()
        yield s
    finally:
        await s.stop()
        await asyncio.to_thread(pg.stop)


async def test_a_second_worker_takes_over_the_contracts_of_a_killed_one(stack: Stack) -> None:
    starts_on = first_of_month(datetime.now(UTC).date(), PERIODS)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30, trust_env=False,
                                 headers={"Authorization": f"Bearer {stack.api_key}"}) as http:
        r = await http.put("/v1/catalog", json=CATALOG, headers={"Idempotency-Key": "catalog"})
        assert r.status_code in (200, 201), r.text
        for i in range(CONTRACTS):
            r = await http.post("/v1/contracts", headers={"Idempotency-Key": f"c-{i}"}, json={
                "id": f"c-{i}", "plan": "pro", "starts_on": starts_on.isoformat(),
                "term_months": PERIODS, "usage_grace_hours": str(GRACE_S / 3600)[:10],
                "customer": {"id": f"cust-{i}", "name": f"Customer {i}"},
            })
            assert r.status_code == 201, r.text
    db = await asyncpg.connect(asyncpg_dsn(stack.postgres.url(stack.database)))
    client = await Client.connect(f"127.0.0.1:{stack.temporal_port}", namespace=NAMESPACE)
    try:
        await _until(lambda: _count(db, "SELECT count(*) FROM contracts WHERE status = 'active'"),
                     CONTRACTS, 30)
        stack.kill_for_good("worker-1")
        killed_at = datetime.now(UTC)
        invoiced = "SELECT count(*) FROM invoices WHERE kind = 'usage' AND number IS NOT NULL"
        await _until(lambda: _count(db, invoiced), CONTRACTS * PERIODS, 180)
        numbers = [r["number"] for r in await db.fetch(
            "SELECT number FROM invoices WHERE number IS NOT NULL ORDER BY number")]
        identities = await _task_identities(client, killed_at)
    finally:
        await db.close()
    assert numbers == [f"INV-{n:06d}" for n in range(1, CONTRACTS * PERIODS + 1)]
    before, after = identities
    assert len(before) == 2, f"both workers took contracts before the kill: {before}"
    assert len(after) == 1 and after < before, f"one worker after the kill: {after}"


async def _count(db: asyncpg.Connection, sql: str) -> int:
    return int(await db.fetchval(sql))


async def _until(read: object, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen = -1
    while time.monotonic() < deadline:
        seen = await read()  # type: ignore[operator]
        if seen >= expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{seen} of {expected} after {timeout_s}s")


async def _task_identities(client: Client, killed_at: datetime) -> tuple[set[str], set[str]]:
    """Identities of the workers that completed workflow tasks, before and after the kill."""
    before: set[str] = set()
    after: set[str] = set()
    async for wf in client.list_workflows("WorkflowType = 'ContractWorkflow'"):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        for ev in history.events:
            if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                who = ev.workflow_task_completed_event_attributes.identity
                (after if ev.event_time.ToDatetime(UTC) > killed_at else before).add(who)
    return before, after
