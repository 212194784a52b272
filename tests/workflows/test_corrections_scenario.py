"""A scenario with a void, a reissue and two credit notes through ``billow simulate``:
its output is checked in (tests/scenarios/corrections/expected.json), verified by hand:

- January (100000 gpt-4 tokens at 0.03 = 3000.00, 2000 credits) is voided after the
  negotiated 0.02 rate arrives backdated, and reissued as usage:2027-01-01/2 on the day
  of the void: 2000.00 of usage, all paid by the credits the void gave back, + 500.00;
- February takes the rate from its start; its paid requests line (100.00) is credited
  and refunded;
- March (paid) gets 300.00 of goodwill kept as customer credit, which pays April's
  200.00 of usage; the 100.00 left expires at term end (breakage at cost basis 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.compare import differences

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "corrections"


def test_billow_simulate_prints_the_expected_corrections_output(server_url: str) -> None:
    env = {**os.environ, "BILLOW_DATABASE_URL": server_url}
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "simulate",
         "--catalog", str(SCENARIO / "catalog.yaml"),
         "--contract", str(SCENARIO / "contract.yaml"),
         "--usage", str(SCENARIO / "usage.jsonl"),
         "--timeline", str(SCENARIO / "timeline.yaml"), "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)
    expected = json.loads((SCENARIO / "expected.json").read_text())
    assert differences(expected, output) == []
    assert list(output) == ["contract_id", "currency", "until", "invoices", "credit_notes",
                            "credits", "revenue"]
    assert "refused" not in output
