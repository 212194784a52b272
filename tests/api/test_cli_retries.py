"""The ops CLI retries a call whose answer was lost, and the retry does nothing twice.

A proxy between the CLI and the API drops the answer to the first request that
changes something: the API did the work, the CLI saw the connection close. The
CLI sends the same ``Idempotency-Key`` again and gets the first answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from typer.testing import CliRunner

from tests.api.helpers import ApiServer, counts


async def _whole_request(reader: asyncio.StreamReader) -> bytes:
    """One HTTP request, headers and body (its Content-Length), however it
    arrives in segments: the API answers only once it has all of it."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(ln.split(b":", 1)[1]) for ln in head.lower().split(b"\r\n")
                   if ln.startswith(b"content-length:")), 0)
    return head + (await reader.readexactly(length) if length else b"")


class AnswerLosingProxy:
    """Forwards HTTP connections to the API; the first answer to a POST is lost."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.lost = 0
        self.keys: list[str] = []  # the Idempotency-Key of every POST seen

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        first = await _whole_request(client_r)
        is_post = first.startswith(b"POST ")
        if is_post:
            head = first.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            self.keys += [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")
                          if ln.startswith("idempotency-key:")]
        up_w.write(first)
        await up_w.drain()
        if is_post and self.lost == 0:
            self.lost += 1
            await up_r.read(65536)  # the API answered: the work is done
            client_w.close()  # ... and the answer never reaches the CLI
            up_w.close()
            return
        await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            yield f"http://127.0.0.1:{port}"


async def test_a_lost_answer_is_retried_with_the_same_key_and_creates_one_endpoint(
    api: ApiServer,
) -> None:
    from worker.cli import app

    proxy = AnswerLosingProxy(api.url)
    async with proxy.running() as url:
        result = await asyncio.to_thread(
            CliRunner().invoke, app,
            ["events", "add-endpoint", "https://erp.example.com/hook", "--json"],
            env={"BILLOW_API_URL": url, "BILLOW_API_KEY": api.keys["ops"]})
    assert result.exit_code == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["secret"].startswith("whsec_")
    assert proxy.lost == 1
    assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1]
    assert (await counts(api.deps.engine, "webhook_endpoints")) == {"webhook_endpoints": 1}
