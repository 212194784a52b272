"""Helpers shared by the API tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
from click.testing import Result
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from typer.testing import CliRunner

from api.app import AppDeps

WEBHOOK_SECRET = "whsec-test-0123456789abcdef"
TEMPORAL_UI = "http://localhost:8233"


@dataclass
class ApiServer:
    url: str
    deps: AppDeps
    keys: dict[str, str]  # scope -> plaintext key
    task_queue: str
    client: Client

    def http(self, scope: str | None = "ops") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[scope]}"} if scope else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0)


async def run_cli(api: ApiServer, args: list[str], scope: str = "ops",
                  columns: int | None = None) -> Result:
    """``billow <args>`` against the test server, from a thread (the server keeps serving).

    ``columns``: the terminal width the tables are laid out for (``COLUMNS``).
    """
    from worker.cli import app

    env = {"BILLOW_API_URL": api.url, "BILLOW_API_KEY": api.keys[scope]}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, args, env=env, catch_exceptions=False)


async def counts(engine: AsyncEngine, *tables: str) -> dict[str, int]:
    async with engine.connect() as conn:
        return {t: int(await conn.scalar(text(f"SELECT count(*) FROM {t}")) or 0)
                for t in tables}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem+json document with ``status``; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:billow:problem:")
    assert body["title"] and "detail" in body and isinstance(body["errors"], list)
    return body


def fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]
