"""The OpenAPI document and the CLI's help read right for someone who only has the
package: each error status shows its own example, every write has a request
example, and the rules are cited from the repository's docs/, not from SPEC.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from typer.main import get_command

from activities.db import make_engine
from api.app import AppDeps, create_app
from worker.cli import app as cli_app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    async def no_temporal() -> Any:
        raise RuntimeError("not needed to build the document")

    deps = AppDeps(engine=make_engine("postgresql+asyncpg://billow@127.0.0.1:1/none"),
                   connect_temporal=no_temporal, temporal_ui_url="http://localhost:8233",
                   namespace="default", task_queue="q")
    document: dict[str, Any] = create_app(deps).openapi()
    return document


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items()]


def test_each_error_status_has_an_example_of_its_own(spec: dict[str, Any]) -> None:
    checked = 0
    for path, method, op in _operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            example = response["content"]["application/problem+json"].get("example")
            assert example is not None, (method, path, status)
            assert example["status"] == int(status), (method, path, status, example)
            assert example["type"].startswith("urn:billow:problem:")
            checked += 1
    assert checked > 40
    post = spec["paths"]["/v1/contracts"]["post"]["responses"]
    assert post["409"]["content"]["application/problem+json"]["example"]["type"].endswith(
        "contract-conflict")
    amend = spec["paths"]["/v1/contracts/{contract_id}/amendments"]["post"]["responses"]
    assert amend["409"]["content"]["application/problem+json"]["example"]["type"].endswith(
        "amendment-conflict")
    assert "Retry-After" in amend["504"]["headers"]


def test_already_exists_answers_say_created_false(spec: dict[str, Any]) -> None:
    for path, method in (("/v1/contracts", "post"), ("/v1/catalog", "put")):
        ok = spec["paths"][path][method]["responses"]["200"]
        assert ok["content"]["application/json"]["example"]["created"] is False, path
    webhook = spec["paths"]["/v1/webhooks/crm"]["post"]["responses"]["200"]
    assert webhook["content"]["application/json"]["example"]["status"] == "exists"


def test_usage_and_payments_have_request_examples(spec: dict[str, Any]) -> None:
    for path in ("/v1/usage", "/v1/invoices/{number}/payments"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        examples = body["examples"]
        assert len(examples) >= 2, path
        for ex in examples.values():
            assert ex["summary"] and ex["value"], path


def _cli_help_texts() -> list[str]:
    texts: list[str] = []

    def walk(command: click.Command) -> None:
        texts.append(command.help or "")
        texts.extend(getattr(p, "help", None) or "" for p in command.params)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    walk(get_command(cli_app))
    return texts


def test_nothing_a_user_reads_cites_a_file_they_do_not_have(spec: dict[str, Any]) -> None:
    document = json.dumps(spec)
    assert "SPEC" not in document
    help_texts = " ".join(_cli_help_texts())
    assert "SPEC" not in help_texts
    # They cite the repository's docs instead, and those exist.
    cited = set(re.findall(r"docs/[a-z-]+\.md", document + help_texts))
    assert cited, "the rules are cited from docs/"
    for name in cited:
        assert (REPO / name).is_file(), name
