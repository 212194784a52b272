"""``python -m bench ingest|rating|chaos [--events N] [--contracts N] ...`` and
``python -m bench lifecycle-fuzz --examples N [--seed S]``,
``python -m bench lifecycle|storm|sleeping --contracts N``

Defaults are small (each command finishes in well under a minute). Full
sizes: ``python -m bench ingest --events 1000000``,
``python -m bench rating --events 10000000 --contracts 1000`` and
``python -m bench lifecycle-fuzz --examples 2000``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped

from bench._pg import bench_database, machine_details
from bench.bytecode import precompile
from bench.ingest import run_ingest
from bench.lifecycle import report as lifecycle_report
from bench.lifecycle import run_lifecycle
from bench.rating import run_rating


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ing = sub.add_parser("ingest", help="ingest_usage vs raw COPY (goal: ratio >= 0.5)")
    ing.add_argument("--events", type=int, default=100_000)
    ing.add_argument("--contracts", type=int, default=100, help="customers, one contract each")
    ing.add_argument("--repeat", type=int, default=3, help="runs of each side; best counts")
    rat = sub.add_parser("rating", help="per-contract aggregation vs bare GROUP BY (<= 1.5x)")
    rat.add_argument("--events", type=int, default=200_000)
    rat.add_argument("--contracts", type=int, default=50)
    rat.add_argument("--repeat", type=int, default=3, help="runs of each side; best counts")
    rat.add_argument(
        "--concurrency", type=int, default=1, help="contracts rated at once (connections)"
    )
    rat.add_argument(
        "--raw", action="store_true", help="no compaction: rate from raw events only"
    )
    _add_chaos(sub)
    fuzz = sub.add_parser(
        "lifecycle-fuzz",
        help="random contract lifecycles through the real workflow; invariants checked",
    )
    fuzz.add_argument("--examples", type=int, default=20)
    fuzz.add_argument("--seed", type=int, default=20270101)
    fuzz.add_argument(
        "--shrink-classes", type=int, default=5,
        help="failure classes to shrink (most frequent first; 0: none)",
    )
    fuzz.add_argument("--budget", type=float, default=300.0, help="wall seconds per example")
    fuzz.add_argument("--log", help="append every example run to this file (JSON lines)")
    for sp in (ing, rat):
        sp.add_argument(
            "--covering-index",
            action="store_true",
            help="also create (customer_id, ts) INCLUDE (meter, quantity, txid, dimensions, "
            "event_id), which billow's schema does not have",
        )
        sp.add_argument("--seed", type=int, default=20270101)
    life = sub.add_parser(
        "lifecycle", help="backdated contracts catching up vs a skeleton workflow (<= 1.5x)"
    )
    life.add_argument("--contracts", type=int, default=50)
    life.add_argument("--periods", type=int, default=12, help="monthly periods, all over")
    life.add_argument("--grace-hours", default="0.001", help="usage_grace_hours of each contract")
    life.add_argument("--pre-ping", action="store_true",
                      help="the engine with pool_pre_ping, as before (BEGIN/ROLLBACK per checkout)")
    storm = sub.add_parser(
        "storm", help="every contract closes at one instant, with API calls during it (<= 2x)"
    )
    storm.add_argument("--contracts", type=int, default=50)
    storm.add_argument("--lead", type=float, default=None,
                       help="seconds from setup to the instant (default: enough to create all)")
    storm.add_argument("--workers", type=int, default=0,
                       help="worker processes per side (default 0: one worker in this process)")
    storm.add_argument("--wft-slots", type=int, default=None,
                       help="workflow-task slots per worker, both sides (default: billow's, "
                       "4 per CPU; the SDK's is 100)")
    storm.add_argument("--la-slots", type=int, default=None,
                       help="local-activity slots per worker, both sides (default: billow's 15; "
                       "the SDK's is 100)")
    storm.add_argument("--sticky-timeout", type=float, default=None,
                       help="sticky queue schedule-to-start timeout in seconds, both sides "
                       "(default: billow's)")
    sleep = sub.add_parser(
        "sleeping", help="contracts between boundaries: memory per contract, creation rate"
    )
    sleep.add_argument("--contracts", type=int, default=50)
    sleep.add_argument("--max-cached", type=int, default=None,
                       help="the worker's sticky cache (default: the SDK's 1000)")
    return p


def _add_chaos(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cha = sub.add_parser("chaos", help="fault-injection run against a fault-free control "
                         "(issue 12); exits 1 unless identical, checks hold, no 500")
    cha.add_argument("--contracts", type=int, default=20)
    cha.add_argument("--faults", type=int, default=10)
    cha.add_argument("--seed", type=int, default=1)
    cha.add_argument("--events", type=int, default=30, help="usage events per contract")
    cha.add_argument("--grace-seconds", type=float, default=30.0,
                     help="usage grace window of the contracts (their catch-up waits this long)")
    cha.add_argument("--deadline", type=float, default=900.0,
                     help="seconds per run for the workload and quiescence")
    cha.add_argument("--compaction-minutes", type=int, default=0,
                     help="run the usage compaction schedule this often (0: off)")
    cha.add_argument("--workdir", type=Path, default=None,
                     help="keep data and logs here (default: a temporary directory, deleted)")
    cha.add_argument("--report", type=Path, default=None, help="write the JSON report here")


def _chaos(args: argparse.Namespace) -> int:
    from bench.chaos.run import ChaosConfig, run_chaos

    cfg = ChaosConfig(
        contracts=args.contracts, faults=args.faults, seed=args.seed,
        events_per_contract=args.events, grace_seconds=args.grace_seconds,
        deadline_s=args.deadline, compaction_minutes=args.compaction_minutes,
        workdir=args.workdir, report_path=args.report,
    )
    report = asyncio.run(run_chaos(cfg))
    return 0 if report.ok else 1


async def _main(args: argparse.Namespace) -> None:
    precompile()  # as the image does: see bench/bytecode.py
    async with bench_database() as db:
        conn = await asyncpg.connect(db.dsn)
        try:
            details = await machine_details(conn)
            where = "embedded" if db.embedded else "BILLOW_DATABASE_URL"
            print(f"# billow bench {args.command} - {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
            print("  " + ", ".join(f"{k}={v}" for k, v in details.items()) + f", server={where}")
            if args.command == "lifecycle-fuzz":
                from bench.lifecycle_fuzz import FuzzArgs, run_lifecycle_fuzz

                fuzz_args = FuzzArgs(
                    args.examples, args.seed, args.shrink_classes, args.budget, args.log
                )
                await asyncio.to_thread(run_lifecycle_fuzz, db.url, fuzz_args)
            elif args.command == "lifecycle":
                figures = await run_lifecycle(
                    db.url, db.dsn, contracts=args.contracts, periods=args.periods,
                    grace_hours=Decimal(args.grace_hours), pre_ping=args.pre_ping,
                )
                print("\n".join(lifecycle_report(figures)))
            elif args.command == "storm":
                from bench.storm import report as storm_report
                from bench.storm import run_storm
                from worker.tuning import WorkerTuning

                tuning = WorkerTuning(max_concurrent_workflow_tasks=args.wft_slots,
                                      max_concurrent_local_activities=args.la_slots,
                                      sticky_schedule_to_start_s=args.sticky_timeout)
                storm = await run_storm(db.url, db.dsn, contracts=args.contracts,
                                        lead_s=args.lead, workers=args.workers, tuning=tuning)
                print("\n".join(storm_report(storm)))
            elif args.command == "sleeping":
                from bench.sleeping import report as sleeping_report
                from bench.sleeping import run_sleeping

                sleeping = await run_sleeping(db.url, db.dsn, contracts=args.contracts,
                                              max_cached=args.max_cached)
                print("\n".join(sleeping_report(sleeping)))
            elif args.command == "ingest":
                f = await run_ingest(
                    conn,
                    events=args.events,
                    customers=args.contracts,
                    seed=args.seed,
                    repeat=args.repeat,
                    covering=args.covering_index,
                )
                print(
                    f"events: {f.events:,} in batches of 10,000 ({f.customers} customers), "
                    f"covering index: {'yes' if args.covering_index else 'no'}"
                )
                print(
                    f"raw COPY, one statement:    best {min(f.raw_copy_s):6.2f}s"
                    f"  {f.raw_rate:>9,.0f} events/s"
                )
                print(
                    f"raw COPY, 10,000 per txn:   best {min(f.raw_batched_s):6.2f}s"
                    f"  {f.raw_batched_rate:>9,.0f} events/s"
                )
                print(
                    f"billow ingest_usage:        best {min(f.billow_s):6.2f}s"
                    f"  {f.billow_rate:>9,.0f} events/s"
                )
                print(
                    f"billow resend (all dups):   best {min(f.resend_s):6.2f}s"
                    f"  {f.events / min(f.resend_s):>9,.0f} events/s"
                )
                print(f"ratio vs one COPY statement:  {f.ratio:.2f}  (goal >= 0.5)")
                print(f"ratio vs COPY per batch:      {f.ratio_batched:.2f}")
            else:
                r = await run_rating(
                    conn,
                    db.dsn,
                    events=args.events,
                    contracts=args.contracts,
                    seed=args.seed,
                    repeat=args.repeat,
                    concurrency=args.concurrency,
                    covering=args.covering_index,
                    raw=args.raw,
                )
                print(
                    f"events: {r.events:,} over one quarter, {r.contracts} contracts, "
                    f"concurrency {r.concurrency}, {r.aggregate_rows:,} aggregate rows, "
                    f"covering index: {'yes' if r.covering else 'no'}"
                )
                if r.compaction_s is not None:
                    print(
                        f"compaction (background): {r.compaction_s:6.2f}s"
                        f"  {r.events / r.compaction_s:>9,.0f} events/s,"
                        f" {r.rollup_rows:,} rollup rows"
                    )
                else:
                    print("compaction: none (--raw), rating reads raw events")
                print(f"bare GROUP BY:          best {min(r.bare_s):6.2f}s")
                print(f"bare sum per contract:  best {min(r.bare_per_contract_s):6.2f}s")
                print(
                    f"billow per contract:    best {min(r.billow_s):6.2f}s"
                    f"  ({min(r.billow_s) / r.contracts * 1000:.1f} ms per contract)"
                )
                print(f"ratio vs bare GROUP BY: {r.ratio:.2f}x  (goal <= 1.5x)")
                print(f"ratio vs per contract:  {r.ratio_per_contract:.2f}x")
        finally:
            await conn.close()


def main() -> None:
    args = _parser().parse_args()
    if args.command == "chaos":
        sys.exit(_chaos(args))
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
