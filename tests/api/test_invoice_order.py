"""Invoice numbers are listed in issue order past INV-999999 (issue 12 case 14)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import yaml
from sqlalchemy import text

from activities.ledger_reports import invoice_documents
from tests.api.helpers import ApiServer
from tests.support.paths import ACME


async def test_invoices_sort_by_their_sequence_not_as_text(api: ApiServer, worker: None) -> None:
    async with api.deps.engine.begin() as conn:
        await conn.execute(text(
            "UPDATE invoice_number_series SET next_value = 999999 WHERE series = 'default'"))
    suffix = uuid.uuid4().hex[:8]
    cid = f"order-{suffix}"
    today = datetime.now(UTC).date()
    async with api.http("ops") as http:
        catalog = yaml.safe_load((ACME / "catalog.yaml").read_text())
        assert (await http.put("/v1/catalog", json=catalog)).status_code == 201
        created = await http.post("/v1/contracts", json={
            "id": cid, "customer": {"id": f"order-co-{suffix}", "name": "Order Co"},
            "plan": "pro", "starts_on": today.replace(day=1).isoformat(), "term_months": 12,
            "commitment": {"amount": "1000.00", "bonus_percent": "0"}})
        assert created.status_code == 201, created.text
        for _ in range(100):  # the commitment invoice, issued when the term opens
            listed = (await http.get("/v1/invoices", params={"contract": cid})).json()
            if any(i["number"] for i in listed["invoices"]):
                break
            await asyncio.sleep(0.2)
        # A priced grant: a top-up invoice, issued now, after the commitment invoice.
        topped = await http.post(f"/v1/contracts/{cid}/amendments", json={
            "id": "top-up-1", "kind": "grant_credits", "credits": "10", "price": "10.00"})
        assert topped.status_code == 200, topped.text
        for _ in range(100):
            listed = (await http.get("/v1/invoices", params={"contract": cid})).json()
            numbers = [i["number"] for i in listed["invoices"] if i["number"]]
            if len(numbers) == 2:
                break
            await asyncio.sleep(0.2)
        assert numbers == ["INV-999999", "INV-1000000"]
        kinds = [i["kind"] for i in listed["invoices"] if i["number"]]
        assert kinds == ["commitment", "top_up"]
        detail = await http.get("/v1/invoices/INV-1000000")
        assert detail.status_code == 200 and detail.json()["kind"] == "top_up"
    # `billow simulate` and the invoice documents use the same issue order.
    async with api.deps.engine.connect() as conn:
        docs = await invoice_documents(conn, cid)
    assert [d["number"] for d in docs] == ["INV-999999", "INV-1000000"]
