"""What an unauthenticated client can get or cost (issue 12 cases 12 and 13)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from tests.api.helpers import ApiServer, problem


async def test_metrics_without_a_key_show_no_business_series(api: ApiServer) -> None:
    async with api.http(None) as anonymous:
        await anonymous.get("/healthz")
        open_view = await anonymous.get("/metrics")  # probes and the scrape configs
        assert open_view.status_code == 200
        assert "billow_http_requests_total" in open_view.text
        assert "billow_usage_events_total" in open_view.text
        assert "billow_billed_amount" not in open_view.text
        assert "billow_invoices_finalized" not in open_view.text
        bad = await anonymous.get("/metrics", headers={"Authorization": "Bearer bk_x_nope"})
        problem(bad, 401)
    async with api.http("crm") as crm:
        assert "billow_billed_amount" not in (await crm.get("/metrics")).text
    async with api.http("ops") as ops:
        full = await ops.get("/metrics")
        assert full.status_code == 200
        assert "billow_billed_amount" in full.text
        assert "billow_http_requests_total" in full.text


async def _send_headers_only(api: ApiServer, headers: str) -> bytes:
    """Send a request's headers announcing a 5 MB body, never the body; the answer."""
    url = urlsplit(api.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write((f"POST /v1/usage HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 5000000\r\n"
                      f"{headers}\r\n").encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), timeout=5)
    finally:
        writer.close()


async def test_an_unauthenticated_request_is_answered_before_its_body_is_read(
    api: ApiServer,
) -> None:
    answer = await _send_headers_only(api, "")
    assert answer.startswith(b"HTTP/1.1 401"), answer
    answer = await _send_headers_only(api, "Authorization: Bearer bk_0123456789ab_wrong\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer
