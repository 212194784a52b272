"""The same amendment id with other content is a 409 naming ``id``; with the same
content it answers as the first time (issue 11 case 13, SPEC.md section 7)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import yaml

from tests.api.helpers import ApiServer, fields, problem
from tests.support.paths import ACME
from worker.main import build_worker

CATALOG: dict[str, Any] = yaml.safe_load((ACME / "catalog.yaml").read_text())


async def test_an_amendment_id_reused_for_other_content_is_a_conflict(api: ApiServer) -> None:
    suffix = uuid.uuid4().hex[:8]
    contract = {"id": f"amc-{suffix}", "customer": {"id": f"amc-co-{suffix}", "name": "A"},
                "plan": "pro", "starts_on": datetime.now(UTC).date().isoformat(),
                "term_months": 12}
    first = {"id": "crm-7", "kind": "change_payment_terms", "payment_terms_days": 60}
    path = f"/v1/contracts/{contract['id']}/amendments"
    async with api.http("ops") as http:
        assert (await http.put("/v1/catalog", json=CATALOG)).status_code == 201
        async with build_worker(api.client, api.deps.engine, api.task_queue):
            assert (await http.post("/v1/contracts", json=contract)).status_code == 201
            applied = await http.post(path, json=first)
            assert applied.status_code // 100 == 2, applied.text
            again = await http.post(path, json=first)
            other = await http.post(path, json={**first, "payment_terms_days": 90})
            shown = (await http.get(f"/v1/contracts/{contract['id']}")).json()
    assert again.status_code == applied.status_code, again.text
    assert (again.json()["status"], again.json()["effective"]) == (
        applied.json()["status"], applied.json()["effective"])
    assert fields(problem(other, 409)) == ["id"]
    assert shown["terms"]["payment_terms_days"] == 60
