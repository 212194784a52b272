"""Replay every saved history against the current workflows.

A contract workflow runs for years: a code change that takes a different
path on replay would wedge every running contract. Each file here was
recorded by ``python -m tests.histories.record <version>`` from a released
version of the workflow; this test fails on any non-determinism. Changes go
behind ``workflow.patched(...)`` and new histories are added, never swapped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.contract import ContractWorkflow
from workflows.usage_compaction import UsageCompactionWorkflow

HISTORIES = sorted(Path(__file__).parent.glob("*.json"))


def test_there_are_histories_to_replay() -> None:
    recorded = {p.name.split(".")[0] for p in HISTORIES}
    assert recorded >= {"acme", "amendments", "continue_as_new", "renewal", "usage_compaction"}


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_saved_history_replays_on_current_code(path: Path) -> None:
    saved = json.loads(path.read_text())
    replayer = Replayer(
        workflows=[ContractWorkflow, UsageCompactionWorkflow],
        data_converter=pydantic_data_converter,
    )
    for run in saved["runs"]:
        history = WorkflowHistory.from_json(saved["workflow_id"], run)
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
