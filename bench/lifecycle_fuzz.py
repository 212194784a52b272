"""``python -m bench lifecycle-fuzz --examples N [--seed S]``: random contract
lifecycles through the real workflow, long (billow issue 11, "The proof").

The generators, the run and the checks are the CI test's
(tests/support/lifecycle_*.py; tests/workflows/test_random_lifecycle.py runs
a bounded, derandomized configuration). Here ``N`` examples are drawn from
seed ``S`` and every violated invariant is counted; then each failure class
is shrunk by hypothesis to a small example, which is printed with what
happened. Needs the test extra (hypothesis, the time-skipping server):
``pip install -e '.[test]'``, run from the repository root.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class FuzzArgs:
    examples: int
    seed: int
    shrink_classes: int
    budget_s: float
    log: str | None = None


def run_lifecycle_fuzz(database_url: str, args: FuzzArgs, out: TextIO = sys.stdout) -> int:
    """Survey, shrink, print the summary; returns the number of failing examples."""
    # Activity failures are what the run looks for: their tracebacks are noise here.
    for name in ("temporalio", "billow"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from tests.support.lifecycle_fuzz import (
        Harness,
        describe,
        shrink_class,
        summary_of,
        survey,
    )

    started = time.monotonic()
    log = open(args.log, "a") if args.log else None  # noqa: SIM115 - closed below
    harness = Harness(database_url, budget_s=args.budget_s, log=log)
    try:
        def progress(n: int, found: dict[str, list[str]]) -> None:
            mark = ", ".join(found) if found else "ok"
            print(f"  [{n}/{args.examples}] {mark}", file=sys.stderr, flush=True)

        result = survey(harness, args.examples, args.seed, progress)
        surveyed_s = time.monotonic() - started
        print(f"examples: {result.examples} (seed {args.seed}), failing: {result.failing}, "
              f"survey {surveyed_s:.0f} s ({surveyed_s / max(result.examples, 1):.1f} s each)",
              file=out)
        print("failures by invariant:", file=out)
        for check, count in sorted(result.by_check.items(), key=lambda kv: -kv[1]):
            print(f"  {check}: {count}", file=out)
        if not result.by_check:
            print("  none", file=out)
        ranked = sorted(result.by_class.values(), key=lambda r: -r.count)
        print(f"failure classes ({len(ranked)}):", file=out)
        for rep in ranked:
            print(f"  [{rep.count}] {rep.signature}", file=out)
        print("coverage (examples that exercised ...):", file=out)
        for feature, count in sorted(harness.coverage.items()):
            print(f"  {feature}: {count}", file=out)
        for rep in ranked[: args.shrink_classes]:
            shrunk = shrink_class(harness, rep.signature, args.examples, args.seed)
            print(f"\n== shrunk: {rep.signature}", file=out)
            lc, found = shrunk if shrunk is not None else (rep.first, rep.first_found)
            if shrunk is None:
                print("(not reproduced by the shrink pass: first example as found)", file=out)
            assert lc is not None
            print(describe(lc, found, summary_of(harness, lc)), file=out, flush=True)
        print(f"\nruns: {harness.runs}, wall {time.monotonic() - started:.0f} s", file=out)
        return result.failing
    finally:
        harness.close()
        if log is not None:
            log.close()
