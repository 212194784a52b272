"""The small configuration of ``python -m bench chaos`` (issue 12, "The proof").

About a dozen backdated contracts of every kind, their usage, amendments and payments,
and on about a quarter of them voids, reissues and credit notes (each sent twice
with the same ids), while workers, the API, PostgreSQL and the
Temporal server are killed (kill -9) 10 times and restarted; the result must be
identical to a fault-free control run of the same seed, pass the ledger checks,
and the client must never see a 500. Takes about 3 minutes on 2 cores.

The full run (>= 200 contracts, >= 150 faults) is recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

# Findings of the chaos run not fixed yet (/work/notes/chaos_findings.md); a failure
# line containing one of these does not fail this test. Remove an entry with its fix.
KNOWN_OPEN: tuple[str, ...] = ()
TIMEOUT_S = 420


def test_small_chaos_run_matches_the_control(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    proc = subprocess.run(
        # 12 contracts cover the 11 kinds; 8 faults still kill every process kind.
        # (20 contracts, 10 faults and 25 s of grace cost 130 s of the suite's 10 minutes.)
        [sys.executable, "-m", "bench", "chaos", "--contracts", "12", "--faults", "8",
         "--seed", "1", "--grace-seconds", "20", "--deadline", "300",
         "--workdir", str(tmp_path / "run"), "--report", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    output = proc.stdout[-6000:] + proc.stderr[-4000:]
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())

    faults = report["chaos"]["fault_counts"]
    assert sum(faults.values()) == 8, faults
    assert faults.get("postgres") == 1 and faults.get("temporal") == 1, faults
    assert faults.get("api", 0) >= 1 and faults.get("worker", 0) >= 1, faults
    assert report["control"]["fault_counts"] == {}
    assert report["control"]["quiet_s"] is not None, output
    assert report["chaos"]["quiet_s"] is not None, output

    unexpected = [f for f in report["failures"] if not any(k in f for k in KNOWN_OPEN)]
    assert not unexpected, "\n".join(unexpected) + "\n\n" + output
    for run in ("control", "chaos"):
        assert not any(report[run]["checks"].values()), report[run]["checks"]
        assert not any(v["what"] == "500" for v in report[run]["violations"])
        assert "failed: NON_DETERMINISTIC_ERROR" not in report[run]["workflow_tasks"]
        outcomes = report[run]["corrections"]
        assert sum(n for k, n in outcomes.items() if k.endswith(" applied")) >= 10, outcomes
        assert not [k for k in outcomes if " failed " in k], outcomes
    assert report["differences"] == [], output


def test_the_workload_is_the_same_for_a_seed_and_covers_every_kind() -> None:
    from datetime import date
    from decimal import Decimal

    from bench.chaos.faults import fault_sequence
    from bench.chaos.workload import KINDS, build_workload

    day = date(2026, 12, 1)
    a = build_workload(5, 22, day, Decimal("0.007"))
    b = build_workload(5, 22, day, Decimal("0.007"))
    assert [(c.document, c.usage_batches, c.payments, c.amend_early, c.amend_late)
            for c in a.contracts] == [(c.document, c.usage_batches, c.payments, c.amend_early,
                                       c.amend_late) for c in b.contracts]
    assert set(a.kinds()) == set(KINDS)
    kinds = {k for c in a.contracts for s in c.amend_early + c.amend_late
             for k in [s.body["kind"]]}
    assert {"terminate", "extend_term", "rate_override", "grant_credits",
            "change_billing_cycle"} <= kinds
    assert all(c.past_usage_keys for c in a.contracts)  # every contract is backdated
    # Corrections (issue 14) on about a quarter of the contracts, of every form.
    assert [c.corrections for c in a.contracts] == [c.corrections for c in b.contracts]
    corrected = [c for c in a.contracts if c.corrections]
    assert 4 <= len(corrected) <= 8, len(corrected)
    planned = {(x.action, x.form if x.action == "credit" else "", x.invalid)
               for c in corrected for x in c.corrections}
    assert {("void", "", None), ("reissue", "", None), ("credit", "amount", None),
            ("credit", "lines", None), ("credit", "amount", "id_reuse"),
            ("credit", "amount", "credit_void")} <= planned, planned
    remainders = {x.remainder for c in corrected for x in c.corrections if x.action == "credit"}
    assert remainders == {"refund", "credit"}
    assert any(x.invoice_key.startswith(("commitment:", "top_up:"))
               for c in corrected for x in c.corrections)
    seq = fault_sequence(150, random.Random(1))
    assert len(seq) == 150 and seq.count("postgres") == seq.count("temporal") == 1


def test_a_contract_settles_only_while_its_workflow_waits_for_a_future_instant() -> None:
    from bench.chaos.correcting import _future

    # The invoice key's date in a label is not the instant it waits for.
    assert _future("mark usage:2020-04-17 overdue (due 2099-01-15) at 2099-01-16 00:00 UTC")
    assert not _future("send the 7-day reminder for usage:2099-01-01 (due 2020-02-01) "
                       "at 2020-02-08 00:00 UTC")
    assert _future("sleep until 2099-12-17 boundary + 1 min usage grace, then close 2099-11")
    assert not _future("closing 3 past periods at 2020-01-01 10:00 UTC, after the 1 min usage "
                       "grace window")
    assert _future("wait for a payment or an amendment")
