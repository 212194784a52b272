"""Both runs, the comparison, the checks, and the verdict.

The control runs first (no faults) and sets the fault run's pace: its faults
are spread over about as long as the control took to catch up. Both use the same
workload (same seed, same day) on their own database and Temporal server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client

from activities.db import make_engine
from bench.chaos.checks import CheckResult, run_checks
from bench.chaos.client import Tally
from bench.chaos.compare import Difference, compare, compare_corrections, snapshot
from bench.chaos.driver import Driver, RunRecord
from bench.chaos.faults import counts, inject
from bench.chaos.processes import NAMESPACE, Fault, Postgres, Stack, UnplannedExit
from bench.chaos.tasks import NONDETERMINISM, workflow_task_trouble
from bench.chaos.workload import Workload, build_workload, grace_hours_for

MIN_WINDOW_S = 15.0


@dataclass
class ChaosConfig:
    contracts: int = 20
    faults: int = 10
    seed: int = 1
    events_per_contract: int = 30
    grace_seconds: float = 30.0
    deadline_s: float = 900.0  # per run, workload and quiescence together
    compaction_minutes: int = 0
    workdir: Path | None = None  # kept when given; else a temporary directory, deleted
    report_path: Path | None = None


@dataclass
class RunResult:
    record: RunRecord
    tally: Tally
    faults: list[Fault]
    unplanned: list[UnplannedExit]
    checks: list[CheckResult] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)  # workflow-task trouble (tasks.py)


@dataclass
class Report:
    config: dict[str, Any]
    started: str
    machine: dict[str, str]
    kinds: dict[str, int]
    events: int
    control: RunResult
    chaos: RunResult
    differences: list[Difference]
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


async def run_chaos(cfg: ChaosConfig, log: bool = True) -> Report:
    say = print if log else (lambda *_: None)
    started = datetime.now(UTC)
    workload = build_workload(cfg.seed, cfg.contracts, started.date(),
                              grace_hours_for(cfg.grace_seconds), cfg.events_per_contract)
    if cfg.workdir is not None and cfg.workdir.exists() and any(cfg.workdir.iterdir()):
        # An earlier run's Temporal database keeps its search attributes (start-dev
        # adds none to an existing file) and its PostgreSQL its rows: never reuse them.
        raise SystemExit(f"--workdir {cfg.workdir} is not empty: give a new directory")
    root = cfg.workdir or Path(tempfile.mkdtemp(prefix="billow-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    pg = Postgres(root / "pg")
    say(f"# billow chaos: {cfg.contracts} contracts, {cfg.faults} faults, seed {cfg.seed}, "
        f"in {root}")
    try:
        await asyncio.to_thread(pg.start, "billow_control")
        await asyncio.to_thread(pg.start, "billow_chaos")
        machine = await _machine(pg.url("billow_control"))
        control = await _run(cfg, workload, pg, "control", 0, 0.0, say)
        rec = control.record
        window = max((rec.quiet_s or 0) - (rec.catchup_s or 0), MIN_WINDOW_S)
        chaos = await _run(cfg, workload, pg, "chaos", cfg.faults, window, say)
        snaps = []
        for name, result in (("billow_control", control), ("billow_chaos", chaos)):
            engine = make_engine(pg.url(name))
            try:
                async with engine.connect() as conn:
                    result.checks = await run_checks(conn, workload, result.record)
                    snaps.append(await snapshot(conn, workload))
            finally:
                await engine.dispose()
        differences = compare(snaps[0], snaps[1]) + compare_corrections(
            control.record.corrections, chaos.record.corrections)
        if started.date() != datetime.now(UTC).date():
            say("warning: the runs crossed midnight UTC; dates on invoices may differ for that")
        report = Report(
            config={k: str(v) for k, v in asdict(cfg).items()}, started=started.isoformat(),
            machine=machine, kinds=workload.kinds(),
            events=sum(c.events for c in workload.contracts), control=control, chaos=chaos,
            differences=differences, failures=[])
        report.failures = _failures(report)
        say(summary(report))
        if cfg.report_path is not None:
            cfg.report_path.write_text(json.dumps(_jsonable(report), indent=2, default=str))
        return report
    finally:
        await asyncio.to_thread(pg.stop)
        if cfg.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


async def _machine(url: str) -> dict[str, str]:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped

    from activities.db import asyncpg_dsn
    from bench._pg import machine_details

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await machine_details(conn)
    finally:
        await conn.close()


async def _run(cfg: ChaosConfig, workload: Workload, pg: Postgres, name: str, faults: int,
               window_s: float, say: Any) -> RunResult:
    stack = Stack(name, pg.root.parent, pg, f"billow_{name}",
                  compaction_minutes=cfg.compaction_minutes)
    began = time.monotonic()
    await stack.start()
    say(f"{name}: stack up in {time.monotonic() - began:.1f} s (API {stack.api_url})")
    driver = Driver(stack, workload, cfg.deadline_s)
    supervisor = asyncio.create_task(stack.supervise())
    injector = (asyncio.create_task(inject(stack, driver, faults, window_s, cfg.seed))
                if faults else None)
    tasks: dict[str, int] = {}
    try:
        record = await driver.run(injector)
    finally:
        if injector is not None and not injector.done():
            injector.cancel()
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        try:
            tasks = await workflow_task_trouble(await Client.connect(
                f"127.0.0.1:{stack.temporal_port}", namespace=NAMESPACE))
        finally:
            await stack.stop()
    quiet = f"{record.quiet_s:.1f} s" if record.quiet_s is not None else "NOT reached"
    say(f"{name}: workload sent in {record.workload_done_s} s, quiescent after {quiet}, "
        f"{len(stack.faults)} faults {counts(stack.faults)}")
    return RunResult(record, driver.client.tally, stack.faults, stack.unplanned, tasks=tasks)


def _failures(r: Report) -> list[str]:
    out: list[str] = []
    for name, run in (("control", r.control), ("chaos", r.chaos)):
        if run.record.quiet_s is None:
            out.append(f"{name}: not quiescent by the deadline: "
                       + "; ".join(run.record.not_quiet[:5]))
        for v in run.tally.violations[:10]:
            out.append(f"{name}: client saw {v.what}: {v.request}: {v.detail[:300]}")
        if len(run.tally.violations) > 10:
            out.append(f"{name}: ... {len(run.tally.violations) - 10} more client violations")
        for c in run.checks:
            out += [f"{name}: {c.name}: {f}" for f in c.failures[:10]]
        out += [f"{name}: workload stuck: {s}" for s in run.record.stuck[:10]]
        out += [f"{name}: harness: {h}" for h in run.record.harness]
        if run.tasks.get(NONDETERMINISM):
            out.append(f"{name}: {run.tasks[NONDETERMINISM]} workflow tasks failed on "
                       "nondeterminism (a contract that cannot replay)")
    for d in r.differences[:20]:
        out.append(f"differs from control: {d.contract_id} {d.what}: {d.detail}")
    if len(r.differences) > 20:
        out.append(f"... {len(r.differences) - 20} more differences")
    return out


def summary(r: Report) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in r.kinds.items())
    lines = [f"contracts {sum(r.kinds.values())} ({kinds}), {r.events} usage events"]
    for name, run in (("control", r.control), ("chaos", r.chaos)):
        t = run.tally
        statuses = Counter({k: v for k, v in t.statuses.items()})
        lines.append(
            f"{name}: quiescent after {run.record.quiet_s} s; faults {counts(run.faults)}; "
            f"unplanned exits {len(run.unplanned)}; requests {sum(statuses.values())} "
            f"(refused {t.refused}, resets {t.resets}, timeouts {t.timeouts}, "
            f"503/504 retried {t.retried_5xx}), violations {len(t.violations)}")
        lines.append("  statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
        lines.append("  corrections: " + (", ".join(
            f"{k} {v}" for k, v in sorted(correction_counts(run.record).items())) or "none"))
        lines.append("  workflow tasks: " + (", ".join(
            f"{k} {v}" for k, v in sorted(run.tasks.items())) or "no timeouts, no failures"))
        lines.append("  checks: " + ", ".join(
            f"{c.name} {'ok' if c.ok else 'FAILED'}" for c in run.checks))
    lines.append(f"differences from the control: {len(r.differences)}")
    if r.ok:
        lines.append("PASS: identical to the control, every check holds, no 500")
    else:
        lines.append(f"FAIL ({len(r.failures)}):")
        lines += [f"  - {f}" for f in r.failures[:40]]
    return "\n".join(lines)


def correction_counts(record: RunRecord) -> dict[str, int]:
    """Corrections by what happened: ``<action>[/<form>] applied|refused|skipped|failed``."""
    out: Counter[str] = Counter()
    for c in record.corrections:
        what = c.action
        if c.body is not None and c.action == "credit":
            what += "/lines" if "lines" in c.body else "/amount"
            what += f"/{c.body.get('remainder')}"
        if c.invalid:
            what += f" ({c.invalid})"
        if c.skipped is not None:
            out[f"{what} skipped"] += 1
        elif c.applied:
            out[f"{what} applied"] += 1
        elif c.invalid and c.status is not None and 400 <= c.status < 500:
            out[f"{what} refused"] += 1
        else:
            out[f"{what} failed ({c.status})"] += 1
    return dict(out)


def _jsonable(r: Report) -> dict[str, Any]:
    def run(x: RunResult) -> dict[str, Any]:
        return {
            "quiet_s": x.record.quiet_s, "workload_done_s": x.record.workload_done_s,
            "catchup_s": x.record.catchup_s,
            "not_quiet": x.record.not_quiet[:20], "harness": x.record.harness,
            "stuck": x.record.stuck,
            "faults": [asdict(f) for f in x.faults], "fault_counts": counts(x.faults),
            "unplanned": [asdict(u) for u in x.unplanned],
            "statuses": dict(x.tally.statuses), "refused": x.tally.refused,
            "resets": x.tally.resets, "timeouts": x.tally.timeouts,
            "retried_5xx": x.tally.retried_5xx,
            "violations": [asdict(v) for v in x.tally.violations],
            "checks": {c.name: c.failures for c in x.checks},
            "workflow_tasks": x.tasks,
            "corrections": correction_counts(x.record),
            "corrections_sent": [asdict(c) for c in x.record.corrections],
        }
    return {"ok": r.ok, "config": r.config, "started": r.started, "machine": r.machine,
            "kinds": r.kinds, "events": r.events, "control": run(r.control),
            "chaos": run(r.chaos), "differences": [asdict(d) for d in r.differences],
            "failures": r.failures}
