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

import pytest

from models.catalog import load_catalog_file
from models.contract import load_contract
from models.errors import BillowValidationError
from models.timeline import parse_timeline_text
from tests.support.compare import differences
from tests.support.scenario import contract_doc, event
from worker.simulate import SimulationInput, run_simulation

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


def test_timeline_corrections_are_validated_naming_the_field() -> None:
    with pytest.raises(BillowValidationError) as exc:
        parse_timeline_text(
            "- {at: 2027-02-10T00:00:00Z, action: credit, id: cn, invoice: usage:2027-01-01,"
            " reason: goodwill, amount: '1.00', lines: [{line: 1, amount: '1.00'}]}\n")
    assert "either lines or amount" in str(exc.value)
    with pytest.raises(BillowValidationError) as bad_reason:
        parse_timeline_text("- {at: 2027-02-10T00:00:00Z, action: credit, id: cn, "
                            "invoice: usage:2027-01-01, reason: oops, amount: '1.00'}\n")
    assert "reason" in str(bad_reason.value)


async def test_a_refused_correction_is_listed_and_the_run_goes_on(server_url: str) -> None:
    timeline = parse_timeline_text(
        "- {at: 2027-02-05T00:00:00Z, action: credit, id: cn-1, invoice: usage:2027-01-01,"
        " reason: billing_error, lines: [{line: 1, amount: '999.00'}]}\n"
        "- {at: 2027-02-06T00:00:00Z, action: void, id: v-1, invoice: usage:2027-01-01}\n")
    result = await run_simulation(SimulationInput(
        catalog=load_catalog_file(SCENARIO / "catalog.yaml"),
        contract=load_contract(contract_doc(term_months=1)),
        usage=[event("e1", "2027-01-10T00:00:00Z", "1000")],
        timeline=timeline,
    ), database_url=server_url)
    refused = result.output["refused"]
    assert [(r["action"], r["id"], r["invoice"], r["errors"]) for r in refused] == [
        ("credit", "cn-1", "usage:2027-01-01",
         [{"field": "lines[0].amount", "reason": "999.00 exceeds what is uncredited on line 1 "
                                                 "(30.00)"}])]
    jan = next(i for i in result.output["invoices"] if i["key"] == "usage:2027-01-01")
    assert jan["status"] == "void"
    assert "credit_notes" not in result.output
