"""The worked example of SPEC.md, through the real workflow and activities."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pytest

from models.catalog import load_catalog_file
from models.contract import load_contract_file
from models.timeline import load_timeline_file
from models.usage import parse_usage_jsonl
from tests.support.compare import differences
from tests.support.paths import ACME
from worker.simulate import SimulationInput, run_simulation

EXPECTED = json.loads((ACME / "expected.json").read_text())


def test_billow_simulate_prints_the_expected_acme_output(server_url: str) -> None:
    """The exact command of the issue, as a user runs it."""
    env = {**os.environ, "BILLOW_DATABASE_URL": server_url}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "simulate",
            "--catalog",
            str(ACME / "catalog.yaml"),
            "--contract",
            str(ACME / "contract.yaml"),
            "--usage",
            str(ACME / "usage.jsonl"),
            "--timeline",
            str(ACME / "timeline.yaml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)
    # Without --until the simulation stops at term end + net-45 + 30 days; by
    # then every figure of the example is final, only `until` differs.
    assert output["until"] == "2028-03-16"
    expected = {k: v for k, v in EXPECTED.items() if k != "until"}
    assert differences(expected, output) == []
    # Exactly the SPEC.md section 9 keys: `refused` only appears when an action was.
    assert set(output) == set(EXPECTED)
    # Progress went to stderr (one line per phase when it is not a terminal).
    assert "simulate: ingesting 17 usage events" in proc.stderr
    assert "simulate: simulating " in proc.stderr and "→ 2028-03-16" in proc.stderr
    # The duplicate event and the other customer's event are reported, not billed.
    assert "acme-0003: duplicate" in proc.stderr
    assert "startup-0001: rejected" in proc.stderr


@pytest.mark.parametrize("compact", [False, True], ids=["raw", "rollups"])
async def test_acme_until_the_example_date_matches_every_field(
    server_url: str, compact: bool
) -> None:
    """``compact``: the nightly compactor folded every day first, so rating
    reads rollups; the figures must not move by a cent."""
    events, problems = parse_usage_jsonl((ACME / "usage.jsonl").read_text())
    assert problems == []
    result = await run_simulation(
        SimulationInput(
            catalog=load_catalog_file(ACME / "catalog.yaml"),
            contract=load_contract_file(ACME / "contract.yaml"),
            usage=events,
            timeline=load_timeline_file(ACME / "timeline.yaml"),
            until=date(2028, 6, 30),
            compact_usage=compact,
        ),
        database_url=server_url,
    )
    assert differences(EXPECTED, result.output) == []
    numbers = [inv["number"] for inv in result.output["invoices"]]
    assert numbers == [f"INV-{n:06d}" for n in range(1, 6)]
    assert (result.ingest.accepted, result.ingest.duplicate, result.ingest.rejected) == (15, 1, 1)
