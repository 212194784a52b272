"""`POST /v1/usage` sends the ingestion report as it is: it must keep the
documented `UsageReport` shape (no server needed)."""

from __future__ import annotations

import json

from activities.usage_ingest import IngestReport, IngestResult, IngestStatus
from api.schemas import UsageReport


def test_the_ingestion_report_is_a_usage_report() -> None:
    report = IngestReport(
        accepted=1, duplicate=1, rejected=1,
        results=[
            IngestResult(index=0, id="a", status=IngestStatus.ACCEPTED),
            IngestResult(index=1, id="a", status=IngestStatus.DUPLICATE,
                         reason="same id as event 0 of this batch"),
            IngestResult(index=2, id=None, status=IngestStatus.REJECTED, reason="id: required"),
        ],
    )
    sent = json.loads(report.model_dump_json())
    assert UsageReport.model_validate(sent).model_dump() == sent
    assert set(sent) == set(UsageReport.model_fields)
    assert set(sent["results"][0]) == {"index", "id", "status", "reason"}
