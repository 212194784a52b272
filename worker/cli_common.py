"""What every ops command shares: the API client, errors and exit codes, output.

The ops commands call a running billow API (``BILLOW_API_URL``; else the API
of a `billow up` running in this directory, found through its data
directory; else http://127.0.0.1:8000) with ``BILLOW_API_KEY``.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console, RenderableType

from worker.settings import Settings, load_settings

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4

EXIT_CODES = (
    "Exit codes: 0 ok; 1 API or server error (unreachable, 5xx); 2 bad input or usage "
    "(invalid file or field, missing/insufficient API key, rejected usage events); "
    "3 not found; 4 conflict (e.g. same contract id with different terms, invoice "
    "already paid)."
)

err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
WideOpt = Annotated[bool, typer.Option(
    "--wide", help="Every column, however wide the terminal (tables drop the least "
    "important columns to fit it otherwise).")]


def out() -> Console:
    """A console for stdout made per command: its width is the terminal's (or
    ``COLUMNS``) when the command runs, not when the module was imported."""
    return Console()


def show(renderable: RenderableType, wide: bool = False) -> None:
    """Print to stdout; ``wide`` lets lines run past the terminal's width."""
    console = Console(width=1000) if wide else out()
    console.print(renderable)


def width() -> int:
    return out().width


class CliFailure(Exception):
    def __init__(self, code: int, message: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problem = problem


def exit_code(status: int) -> int:
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if 400 <= status < 500:
        return EXIT_INPUT
    return EXIT_SERVER


def fail(exc: CliFailure, as_json: bool) -> NoReturn:
    if as_json:
        doc = exc.problem or {"title": "error", "detail": exc.message, "errors": []}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    err.print(f"[red]error:[/] {exc.message}", highlight=False)
    if exc.problem:
        for item in exc.problem.get("errors") or []:
            where = item.get("field") or "(document)"
            err.print(f"  {where}: {item.get('reason')}", highlight=False, markup=False)
    raise typer.Exit(exc.code)


def api_base_url(settings: Settings) -> str:
    """BILLOW_API_URL; else the API of a `billow up` running on the data directory
    (``./.billow``); else api_host:api_port (http://127.0.0.1:8000)."""
    from worker.stack_file import running_api_url

    if settings.api_base_url:
        return settings.api_base_url.rstrip("/")
    running = running_api_url(settings.data_dir)
    return (running or settings.api_url).rstrip("/")


UNREACHABLE_HINT = ("is the API running? Start the whole stack with `billow up` (a second "
                    "shell in the same directory finds it), or set BILLOW_API_URL")


# A call whose outcome is unknown is tried again after these pauses (seconds).
RETRY_DELAYS_S = (0.5, 1.0, 2.0)
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UNKNOWN_OUTCOME = frozenset({502, 503, 504})
# Calls whose body carries its own idempotency ids: usage events are taken once
# per event id, so a key (and the stored copy of a 10,000-event answer) adds nothing.
_OWN_IDS = frozenset({"/v1/usage"})


class Api:
    def __init__(self, settings: Settings) -> None:
        self.base_url = api_base_url(settings)
        headers = {"Accept": "application/json"}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=60.0)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, *, body: Any = None,
             params: dict[str, Any] | None = None) -> Any:
        """One API call, retried while its outcome is unknown.

        A request that changes something carries an ``Idempotency-Key`` of its
        own, and every retry sends the same key: a retry after a lost answer
        (connection dropped, 502/503/504) gets the first answer instead of
        doing it twice (a second webhook endpoint, say).
        """
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        headers = ({"Idempotency-Key": f"cli-{uuid.uuid4()}"}
                   if method.upper() in _MUTATING and path not in _OWN_IDS else {})
        for delay in (*RETRY_DELAYS_S, None):
            try:
                response = self.client.request(method, path, json=body, params=clean,
                                               headers=headers)
            except httpx.HTTPError as exc:
                if delay is None:
                    raise CliFailure(EXIT_SERVER, f"cannot reach the billow API at "
                                     f"{self.base_url} ({exc}): {UNREACHABLE_HINT}") from exc
                time.sleep(delay)
                continue
            if response.status_code in _UNKNOWN_OUTCOME and delay is not None:
                time.sleep(delay)
                continue
            break
        if response.status_code >= 400:
            problem: dict[str, Any] | None = None
            try:
                parsed = response.json()
                problem = parsed if isinstance(parsed, dict) else None
            except ValueError:
                problem = None
            title = (problem or {}).get("title") or response.reason_phrase
            detail = (problem or {}).get("detail") or response.text[:200]
            hint = ""
            if response.status_code == 401:
                hint = " (set BILLOW_API_KEY; create a key with `billow apikey create`)"
            raise CliFailure(exit_code(response.status_code),
                             f"{title} ({response.status_code}): {detail}{hint}", problem)
        return response.json()


def api() -> Api:
    return Api(load_settings())


def read_document(path: Path) -> Any:
    """A YAML or JSON file as plain data (dates stay strings, as the loaders do)."""
    from models._loading import parse_text, read_file
    from models.errors import BillowValidationError

    try:
        text, fmt = read_file(path)
        return parse_text(text, fmt)
    except BillowValidationError as exc:
        raise CliFailure(EXIT_INPUT, f"{path}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CliFailure(EXIT_INPUT, f"{path}: {exc}") from exc


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def seg(value: str) -> str:
    """One URL path segment."""
    from urllib.parse import quote

    return quote(value, safe="")
