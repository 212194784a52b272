"""The benchmarks still run and still check their answers (tiny sizes; never timed).

Speed is judged by `python -m bench` as ratios in one run (bench/RESULTS.md);
these tests only keep the benchmark code working from a fresh clone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.db import asyncpg_dsn
from bench.ingest import run_ingest
from bench.lifecycle import run_lifecycle
from bench.rating import run_rating
from bench.sleeping import report as sleeping_report
from bench.sleeping import run_sleeping
from bench.storm import report as storm_report
from bench.storm import run_storm
from worker.tuning import WorkerTuning


@pytest.fixture
async def conn(db: AsyncEngine, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.parametrize("raw", [False, True], ids=["rollups", "raw"])
async def test_rating_bench_agrees_with_the_bare_group_by(
    conn: asyncpg.Connection, database_url: str, raw: bool
) -> None:
    # run_rating raises if billow's sum meters differ from the bare GROUP BY's
    figures = await run_rating(
        conn, asyncpg_dsn(database_url), events=4000, contracts=12, seed=7, repeat=1,
        concurrency=2, raw=raw, log=False,
    )
    assert figures.aggregate_rows > 12 * 5
    assert (figures.compaction_s is None) == raw
    assert figures.rollup_rows == 0 if raw else figures.rollup_rows > 0
    assert figures.ratio > 0


async def test_ingest_bench_stores_every_event(conn: asyncpg.Connection) -> None:
    figures = await run_ingest(conn, events=3000, customers=10, seed=7, repeat=1, log=False)
    assert figures.ratio > 0
    assert await conn.fetchval("SELECT count(*) FROM usage_events") == 3000


def test_lifecycle_fuzz_bench_runs_and_reports(database_url: str) -> None:
    # Two examples, no shrinking: the command works and prints its summary
    # (whether the examples pass is the CI property test's business).
    import io

    from bench.lifecycle_fuzz import FuzzArgs, run_lifecycle_fuzz

    out = io.StringIO()
    run_lifecycle_fuzz(database_url, FuzzArgs(examples=2, seed=7, shrink_classes=0,
                                              budget_s=60.0), out)
    report = out.getvalue()
    assert "examples: 2 (seed 7)" in report
    assert "failures by invariant:" in report and "\nruns: " in report


async def test_lifecycle_bench_closes_every_period_on_both_sides(
    conn: asyncpg.Connection, database_url: str
) -> None:
    figures = await run_lifecycle(
        database_url, asyncpg_dsn(database_url), contracts=2, periods=2, log=False
    )
    assert (figures.skeleton.rows, figures.billow.rows) == (4, 4)
    assert (figures.skeleton.runs, figures.billow.runs) == (2, 2)
    assert len(figures.billow.lateness_s) == 4 and figures.ratio > 0
    numbers = await conn.fetch(
        "SELECT number FROM invoices WHERE kind = 'usage' AND number IS NOT NULL ORDER BY number"
    )
    assert [r["number"] for r in numbers] == [f"INV-{n:06d}" for n in range(1, 5)]
    assert await conn.fetchval("SELECT count(*) FROM bench_skeleton_steps") == 2 * 3


async def test_sleeping_bench_puts_every_contract_to_sleep_on_both_sides(
    conn: asyncpg.Connection, database_url: str
) -> None:
    figures = await run_sleeping(database_url, asyncpg_dsn(database_url), contracts=3,
                                 max_cached=10, log=False)
    lines = sleeping_report(figures)
    active = await conn.fetchval("SELECT count(*) FROM contracts WHERE status = 'active'")
    opened = await conn.fetchval("SELECT count(*) FROM bench_skeleton_steps WHERE step = 0")
    assert (active, opened) == (3, 3)
    for side in (figures.skeleton, figures.billow):
        assert side.create_s > 0 and side.worker_asleep > 0
        assert side.wft.runs == 3 and side.wft.wft_failures == 0
    assert lines[-1].startswith("ratios billow/skeleton: worker memory per contract")


async def test_storm_bench_closes_every_contract_and_answers_during_it(
    conn: asyncpg.Connection, database_url: str
) -> None:
    # One worker process per side, with slots and sticky timeout passed through
    # to both (the API is its own process too: bench/processes.py).
    tuning = WorkerTuning(max_concurrent_workflow_tasks=3, max_concurrent_local_activities=5,
                          sticky_schedule_to_start_s=20)
    figures = await run_storm(database_url, asyncpg_dsn(database_url), contracts=3, lead_s=4,
                              log=False, workers=1, tuning=tuning)
    lines = storm_report(figures)
    assert "3 workflow tasks, 5 local activities; sticky schedule-to-start 20s" in lines[0]
    for side in ("skeleton", "billow"):  # the metrics were read, and no slot stayed taken
        assert "WorkflowWorker" in figures.slots_peak[side], figures.slots_peak
        assert not any(figures.slots_after[side].values()), figures.slots_after
    assert (figures.skeleton.rows, figures.billow.rows) == (3, 3)
    assert (figures.skeleton.runs, figures.billow.runs) == (3, 3)
    assert sorted(c.kind for c in figures.calls) == ["amend"] * 3 + ["pay"] * 3
    assert {c.status for c in figures.calls} == {200}, figures.calls
    paid = await conn.fetchval(
        "SELECT count(*) FROM invoices WHERE kind = 'commitment' AND status = 'paid'")
    assert paid == 3
    assert lines[-1].startswith("ratio billow/skeleton:")


async def test_a_bench_child_that_writes_after_ready_never_blocks_on_its_stdout() -> None:
    # A bench worker's stdout is the pipe its "ready" is read from. The SDK core
    # writes its warnings there too (a busy worker: hundreds of KiB). Nobody read
    # the pipe after "ready", so once 64 KiB were buffered the core's next write
    # blocked for good: workflow-task slots stayed taken, pollers went to 0, and
    # the worker never polled again (RESULTS section 10).
    import asyncio

    import psutil

    from bench.processes import ready_process

    script = ("import sys; print('ready', flush=True); "
              "[sys.stdout.write('core warning ' * 80 + '\\n') for _ in range(300)]; "
              "sys.stdout.flush()")
    async with ready_process(["-c", script]) as child:
        try:  # it exits once everything is written (asyncio reaps it: no exit code here)
            await asyncio.to_thread(child.wait, 15)
        except psutil.TimeoutExpired:
            pytest.fail("the child blocked writing to its stdout")
