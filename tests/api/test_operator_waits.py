"""What an operator sees of a contract's waits and of its late usage, through the CLI
and HTTP, on the real worker and the Temporal dev server in real time."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType

from models.periods import add_months
from tests.api.helpers import ApiServer, run_cli
from tests.support.paths import ACME


def _first_of_month(months_back: int) -> date:
    return add_months(datetime.now(UTC).date().replace(day=1), -months_back)


def _contract_file(tmp_path: Path, **fields: Any) -> tuple[Path, str, str]:
    suffix = uuid.uuid4().hex[:8]
    cid, customer = f"ops-{suffix}", f"ops-cust-{suffix}"
    doc = {"id": cid, "customer": {"id": customer, "name": "Ops Inc"}, "plan": "pro",
           "term_months": 12, **fields}
    path = tmp_path / f"{cid}.json"
    path.write_text(json.dumps(doc))
    return path, cid, customer


async def _timer_summaries(api: ApiServer, workflow_id: str) -> list[str]:
    history = await api.client.get_workflow_handle(workflow_id).fetch_history()
    return [json.loads(e.user_metadata.summary.data) for e in history.events
            if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
            and e.user_metadata.HasField("summary")]


async def test_a_backdated_contract_says_when_it_catches_up(
    api: ApiServer, worker: None, tmp_path: Path
) -> None:
    assert (await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml")])).exit_code == 0
    start = _first_of_month(12)
    path, cid, _ = _contract_file(tmp_path, starts_on=start.isoformat())

    created = await run_cli(api, ["contract", "create", str(path), "--json"])
    assert created.exit_code == 0, created.output
    close = json.loads(created.stdout)["next_close"]
    handle = api.client.get_workflow_handle(f"contract:{cid}")
    began = (await handle.describe()).start_time
    at = began + timedelta(hours=1)
    label = (f"closing 12 past periods at {at:%Y-%m-%d %H:%M} UTC, after the 1 h usage "
             "grace window")
    assert close["label"] == label
    assert close["catch_up"] is True and close["periods"] == 12
    assert datetime.fromisoformat(close["at"]) == at

    table = await run_cli(api, ["contract", "create", str(path)], columns=200)  # again
    assert table.exit_code == 0 and "exists (same terms" in table.stdout
    assert any("next close" in ln and label in ln for ln in table.stdout.splitlines())

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while label not in (summaries := await _timer_summaries(api, f"contract:{cid}")):
        assert loop.time() < deadline, summaries
        await asyncio.sleep(0.2)
    assert not any(f"sleep until {start}" in s for s in summaries)  # no boundary in the past

    shown = await run_cli(api, ["contract", "show", cid, "--json"])
    state = json.loads(shown.stdout)
    assert state["source"] == "workflow"
    assert state["next_close"]["label"] == label
    assert state["waiting_for"] == label
    wide = (await run_cli(api, ["contract", "show", cid], columns=200)).stdout
    assert any("next close" in ln and label in ln for ln in wide.splitlines()), wide

    metadata = await handle.query("__temporal_workflow_metadata")
    assert f"**Next close:** {label}" in metadata.current_details


async def test_a_scheduled_contract_says_when_its_first_period_closes(
    api: ApiServer, worker: None, tmp_path: Path
) -> None:
    assert (await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml")])).exit_code == 0
    start = _first_of_month(-2)
    path, _, _ = _contract_file(tmp_path, starts_on=start.isoformat(), billing_cycle="quarterly")
    created = await run_cli(api, ["contract", "create", str(path), "--json"])
    assert created.exit_code == 0, created.output
    close = json.loads(created.stdout)["next_close"]
    boundary = add_months(start, 3)
    assert close["catch_up"] is False and close["periods"] == 1
    assert close["label"].startswith(f"close {start:%Y}-")  # a quarter label, or a range
    assert close["label"].endswith(
        f"at {boundary} 01:00 UTC: the {boundary} boundary + the 1 h usage grace window")


async def test_usage_after_the_final_invoice_is_counted_while_the_workflow_collects(
    api: ApiServer, worker: None, tmp_path: Path
) -> None:
    """An ended contract keeps its workflow while invoices are unpaid: the count shows."""
    assert (await run_cli(api, ["catalog", "apply", str(ACME / "catalog.yaml")])).exit_code == 0
    start = _first_of_month(3)
    path, cid, customer = _contract_file(
        tmp_path, starts_on=start.isoformat(), term_months=2, usage_grace_hours="0.001")
    assert (await run_cli(api, ["contract", "create", str(path)])).exit_code == 0

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    async with api.http("crm") as http:
        while True:
            state = (await http.get(f"/v1/contracts/{cid}")).json()
            if state["status"] == "ended":
                break
            assert loop.time() < deadline, state
            await asyncio.sleep(0.3)
        assert state["source"] == "workflow"  # still collecting its two unpaid invoices
        late = [{"id": f"{cid}-late-{i}", "customer": customer, "meter": "tokens",
                 "timestamp": f"{start}T12:00:0{i}Z", "quantity": "10",
                 "dimensions": {"model": "gpt-4"}} for i in range(3)]
        async with api.http("usage") as usage:
            sent = await usage.post("/v1/usage", json={"events": late})
            assert sent.json()["accepted"] == 3, sent.text
        state = (await http.get(f"/v1/contracts/{cid}")).json()
    assert state["source"] == "workflow"
    assert state["unbilled_usage_events"] == 3
    shown = (await run_cli(api, ["contract", "show", cid], columns=200)).stdout
    assert any("unbilled usage" in ln and "3 events" in ln for ln in shown.splitlines()), shown
