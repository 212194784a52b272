"""The ops CLI against a running API: exit codes, JSON output, batches, API keys."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from tests.api.helpers import ApiServer, counts, run_cli
from tests.support.paths import ACME


async def _cli_with_db(database_url: str | None, args: list[str]) -> tuple[int, str, str]:
    from worker.cli import app

    env = {"BILLOW_DATABASE_URL": database_url, "DATABASE_URL": None}
    result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    return result.exit_code, result.stdout, result.stderr


async def test_apikey_commands_create_keys_that_work(api: ApiServer, database_url: str) -> None:
    code, stdout, _ = await _cli_with_db(
        database_url, ["apikey", "create", "--scope", "usage,crm", "--name", "crm sync",
                       "--json"])
    assert code == 0
    created = json.loads(stdout)
    assert created["key"].startswith(f"bk_{created['key_id']}_")
    assert created["scopes"] == ["crm", "usage"]
    async with api.http(None) as http:
        auth = {"Authorization": f"Bearer {created['key']}"}
        assert (await http.get("/v1/contracts", headers=auth)).status_code == 200
        assert (await http.post("/v1/usage", json={"events": []}, headers=auth)).status_code == 200
        assert (await http.put("/v1/catalog", json={}, headers=auth)).status_code == 403
    async with api.deps.engine.connect() as conn:
        from sqlalchemy import text

        stored = await conn.scalar(text("SELECT secret_hash FROM api_keys WHERE key_id = :k"),
                                   {"k": created["key_id"]})
    assert stored and created["key"].split("_", 2)[2] not in stored  # only the hash is kept

    code, stdout, _ = await _cli_with_db(database_url, ["apikey", "list", "--json"])
    assert code == 0
    listed = {k["key_id"]: k for k in json.loads(stdout)["keys"]}
    assert listed[created["key_id"]]["name"] == "crm sync"
    assert "key" not in listed[created["key_id"]]

    code, _, _ = await _cli_with_db(database_url, ["apikey", "revoke", created["key_id"]])
    assert code == 0
    async with api.http(None) as http:
        r = await http.get("/v1/contracts", headers={"Authorization": f"Bearer {created['key']}"})
        assert r.status_code == 401
    code, _, _ = await _cli_with_db(database_url, ["apikey", "revoke", created["key_id"]])
    assert code == 3

    code, _, stderr = await _cli_with_db(database_url, ["apikey", "create", "--scope", "admin"])
    assert code == 2 and "unknown scope" in stderr
    code, _, stderr = await _cli_with_db(None, ["apikey", "create", "--scope", "ops"])
    assert code == 2 and "BILLOW_DATABASE_URL" in stderr


async def test_exit_codes_and_batches(api: ApiServer, tmp_path: Path) -> None:
    # bad input: a file that is not a catalog; nothing stored
    bad = tmp_path / "catalog.yaml"
    bad.write_text("meters: [{key: tokens}]\n")
    r = await run_cli(api, ["catalog", "apply", str(bad), "--json"])
    assert r.exit_code == 2
    assert {e["field"] for e in json.loads(r.stdout)["errors"]} >= {"meters[0].name"}
    unparsable = tmp_path / "broken.yaml"
    unparsable.write_text("meters: [\n")
    assert (await run_cli(api, ["catalog", "apply", str(unparsable)])).exit_code == 2
    # missing file: a usage error
    assert (await run_cli(api, ["catalog", "apply", str(tmp_path / "nope.yaml")])).exit_code == 2
    # wrong scope: 403 -> 2
    assert (await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml")],
                          scope="crm")).exit_code == 2
    ok = await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml")])
    assert ok.exit_code == 0 and "created" in ok.stdout

    suffix = uuid.uuid4().hex[:8]
    contract = tmp_path / "contract.yaml"
    contract.write_text(
        f"id: cli-{suffix}\ncustomer: {{id: cli-cust-{suffix}, name: CLI Inc}}\nplan: pro\n"
        "starts_on: 2031-01-01\nterm_months: 12\n")
    created = await run_cli(api, ["contract", "create", str(contract)])
    assert created.exit_code == 0, created.output
    assert f"contract:cli-{suffix}" in created.stdout
    again = await run_cli(api, ["contract", "create", str(contract), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["created"] is False

    # usage in several batches, line numbers kept
    lines = [json.dumps({"id": f"{suffix}-{i}", "customer": f"cli-cust-{suffix}",
                         "meter": "tokens", "timestamp": "2031-01-05T00:00:00Z",
                         "quantity": "1", "dimensions": {"model": "gpt-4"}}) for i in range(5)]
    lines.insert(2, "")
    lines.append(lines[0])
    usage = tmp_path / "usage.jsonl"
    usage.write_text("\n".join(lines) + "\n")
    sent = await run_cli(api, ["usage", "send", str(usage), "--batch-size", "2", "--json"],
                         scope="usage")
    assert sent.exit_code == 0, sent.output
    report = json.loads(sent.stdout)
    assert (report["accepted"], report["duplicate"], report["rejected"]) == (5, 1, 0)
    assert report["issues"] == [{"line": 7, "id": f"{suffix}-0", "status": "duplicate",
                                 "reason": "already stored"}]
    assert (await counts(api.deps.engine, "usage_events"))["usage_events"] == 5
    table = await run_cli(api, ["usage", "send", str(usage)], scope="usage")
    assert table.exit_code == 0 and "duplicate" in table.stdout

    # not found -> 3, conflict -> 4
    assert (await run_cli(api, ["contract", "show", "nobody"])).exit_code == 3
    nobody = await run_cli(api, ["invoice", "list", "--contract", "nobody", "--json"])
    assert nobody.exit_code == 3, nobody.output  # like `contract show`, not an empty table
    assert json.loads(nobody.stdout)["errors"] == [
        {"field": "query.contract", "reason": "no contract 'nobody'"}]
    assert (await run_cli(api, ["invoice", "show", "INV-424242"])).exit_code == 3
    assert (await run_cli(api, ["invoice", "pay", "INV-424242", "--amount", "1"])).exit_code == 3
    bad_amount = await run_cli(api, ["invoice", "pay", "INV-424242", "--amount", "-1", "--json"])
    assert bad_amount.exit_code == 2
    assert json.loads(bad_amount.stdout)["errors"][0]["field"] == "amount"
    contract.write_text(contract.read_text().replace("term_months: 12", "term_months: 6"))
    conflict = await run_cli(api, ["contract", "create", str(contract)])
    assert conflict.exit_code == 4 and "term_months" in conflict.stderr
    listed = await run_cli(api, ["contract", "list", "--status", "scheduled", "--json"])
    assert [c["contract_id"] for c in json.loads(listed.stdout)["contracts"]] == [f"cli-{suffix}"]
    assert (await run_cli(api, ["contract", "list", "--overdue", "--json"])).stdout.count(
        "contract_id") == 0

    # no key -> 2, unreachable API -> 1
    from worker.cli import app

    no_key = await asyncio.to_thread(CliRunner().invoke, app, ["invoice", "list"],
                                     env={"BILLOW_API_URL": api.url, "BILLOW_API_KEY": None})
    assert no_key.exit_code == 2 and "BILLOW_API_KEY" in no_key.stderr
    down = await asyncio.to_thread(CliRunner().invoke, app, ["invoice", "list"],
                                   env={"BILLOW_API_URL": "http://127.0.0.1:9",
                                        "BILLOW_API_KEY": "x"})
    assert down.exit_code == 1 and "cannot reach" in down.stderr
    assert "`billow up`" in " ".join(down.stderr.split())  # what to do about it


async def test_usage_compact_folds_days_before_the_date(db: AsyncEngine, database_url: str) -> None:
    async with db.begin() as conn:
        await conn.execute(text(
            "INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions) "
            "VALUES ('e1', 'c', 'tokens', '2027-01-08T10:00Z', 2, '{}'), "
            "('e2', 'c', 'tokens', '2027-01-09T23:59:59Z', 3, '{}'), "
            "('e3', 'c', 'tokens', '2027-01-10T00:00Z', 4, '{}')"))
    code, _, stderr = await _cli_with_db(database_url, ["usage", "compact", "--before", "10/01"])
    assert code == 2 and "--before" in stderr
    code, stdout, _ = await _cli_with_db(
        database_url, ["usage", "compact", "--before", "2027-01-10", "--json"])
    assert code == 0
    assert json.loads(stdout) == {"compaction_id": 1, "folded_before": "2027-01-10T00:00:00+00:00",
                                  "events": 2, "rollup_rows": 2}
    again = ["usage", "compact", "--before", "2027-01-10"]
    code, _, stderr = await _cli_with_db(database_url, again)
    assert code == 0 and "nothing new to fold" in stderr
