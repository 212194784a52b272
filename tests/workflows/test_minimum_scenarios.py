"""Minimum commitments and spend limits through ``billow simulate`` (SPEC.md sections 9, 12).

Each scenario in tests/scenarios/ (sharing tests/scenarios/catalog.yaml) has its
expected output checked in beside it; the figures that matter are also written
out here, worked by hand, so the files are not just a snapshot of the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from models.catalog import load_catalog_file
from models.contract import load_contract_file
from models.timeline import load_timeline_file
from models.usage import parse_usage_jsonl
from tests.support.compare import differences
from worker.simulate import SimulationInput, run_simulation

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
CATALOG = SCENARIOS / "catalog.yaml"


def _true_ups(output: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["key"], ln["amount"]) for i in output["invoices"] for ln in i["lines"]
            if ln["kind"] == "true_up"]


def _limit_lines(output: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(i["key"], ln["kind"], ln["meter"], ln["amount"]) for i in output["invoices"]
            for ln in i["lines"] if ln["kind"] in ("minimum", "maximum")]


# Worked by hand (USD):
HEADLINES: dict[str, dict[str, Any]] = {
    # 3,000 (January gpt-4) + 1,500 + 1,500 (June) = 6,000 of 10,000: December trues up
    "term_short": {"true_ups": [("usage:2027-12-01", "4000.00")], "usage_billed": "10000.00",
                   "totals": {"usage:2027-12-01": "4500.00"}},
    # 3 x 3,000 tokens + 3,000 eu requests = 12,000: no true-up
    "term_exceeded": {"true_ups": [], "usage_billed": "12000.00"},
    # January 600 paid by credits is spend: true-up 200 (not paid by credits);
    # February 900 (400 credits + 500 billed): met; March nothing: 800
    "period_minimum_prepaid": {
        "true_ups": [("usage:2027-01-01", "200.00"), ("usage:2027-03-01", "800.00")],
        "totals": {"usage:2027-01-01": "700.00", "usage:2027-02-01": "1000.00",
                   "usage:2027-03-01": "1300.00"},
        "usage_from_credits": "1000.00", "usage_billed": "1500.00"},
    # January requests 150 (us) + 120 (eu) capped at 100; storage 5,000 GB x 0.25
    # = 1,250 capped at 1,000 by the plan; tokens 300 uncapped. February under both caps.
    "capped_meter": {
        "true_ups": [],
        "limits": [("usage:2027-01-01", "maximum", "requests", "-170.00"),
                   ("usage:2027-01-01", "maximum", "storage_gb", "-250.00")],
        "totals": {"usage:2027-01-01": "1900.00", "usage:2027-02-01": "1050.00"}},
    # 1,000 per period from March 1 (January and February keep none); 5,000 over
    # the term from May 1: spend 900 + 300 = 1,200, June trues up 3,800.
    "set_minimum_midterm": {
        "true_ups": [("usage:2027-03-01", "1000.00"), ("usage:2027-04-01", "700.00"),
                     ("usage:2027-06-01", "3800.00")],
        "usage_billed": "6700.00"},
}


@pytest.mark.parametrize("name", sorted(HEADLINES))
async def test_scenario_matches_its_expected_output(server_url: str, name: str) -> None:
    folder = SCENARIOS / name
    events, problems = parse_usage_jsonl((folder / "usage.jsonl").read_text())
    assert problems == []
    result = await run_simulation(
        SimulationInput(
            catalog=load_catalog_file(CATALOG),
            contract=load_contract_file(folder / "contract.yaml"),
            usage=events,
            timeline=load_timeline_file(folder / "timeline.yaml"),
        ),
        database_url=server_url,
    )
    output = result.output
    assert "refused" not in output
    expected = json.loads((folder / "expected.json").read_text())
    assert differences(expected, output) == []
    want = HEADLINES[name]
    assert _true_ups(output) == want["true_ups"]
    if "limits" in want:
        assert _limit_lines(output) == want["limits"]
    totals = {i["key"]: i["total"] for i in output["invoices"]}
    for key, total in want.get("totals", {}).items():
        assert totals[key] == total, key
    for field in ("usage_billed", "usage_from_credits"):
        if field in want:
            assert output["revenue"][field] == want[field]
    # a true-up is never paid with credits: credits_applied <= the usage-kind lines
    for inv in output["invoices"]:
        usage = sum((Decimal(ln["amount"]) for ln in inv["lines"]
                     if ln["kind"] in ("usage", "late_usage", "minimum", "maximum")), Decimal(0))
        assert Decimal(inv["credits_applied"]) <= usage


def test_billow_simulate_prints_a_true_up(server_url: str) -> None:
    """The command as a user runs it, with a minimum commitment in the contract file."""
    folder = SCENARIOS / "term_short"
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "simulate", "--catalog", str(CATALOG),
         "--contract", str(folder / "contract.yaml"), "--usage", str(folder / "usage.jsonl"),
         "--timeline", str(folder / "timeline.yaml"), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "BILLOW_DATABASE_URL": server_url},
    )
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)
    assert differences(json.loads((folder / "expected.json").read_text()), output) == []
    assert output["invoices"][-1]["lines"][-1] == {"kind": "true_up", "amount": "4000.00"}
