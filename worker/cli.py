"""The ``billow`` command line.

Process commands (``up``, ``worker``, ``api``, ``migrate``, ``simulate``) run
billow's pieces; the ops commands talk to a running API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console

from worker.settings import Settings, load_settings

app = typer.Typer(
    name="billow",
    help="Temporal-orchestrated billing for enterprise contracts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def _require_database_url(settings: Settings) -> str:
    if not settings.database_url:
        err.print(
            "[red]error:[/] no database configured: set BILLOW_DATABASE_URL (or DATABASE_URL), "
            "or run the whole stack with `billow up`."
        )
        raise typer.Exit(2)
    return settings.database_url


@app.command()
def up() -> None:
    """Start PostgreSQL, Temporal (with its UI), migrations, the worker and the API."""
    from worker.devstack import run_up

    raise typer.Exit(run_up(load_settings()))


@app.command()
def migrate() -> None:
    """Apply database migrations to the configured database."""
    from activities.migrate import upgrade

    settings = load_settings()
    upgrade(_require_database_url(settings))
    err.print("[green]database is at the latest migration[/]")


@app.command()
def worker() -> None:
    """Run a Temporal worker against the configured database and Temporal."""
    from worker.main import run_worker

    settings = load_settings()
    _require_database_url(settings)
    asyncio.run(run_worker(settings))


@app.command()
def api() -> None:
    """Serve the HTTP API against the configured database and Temporal."""
    import uvicorn

    from api.app import AppDeps, create_app
    from activities.db import make_engine
    from worker.temporal_client import connect

    settings = load_settings()
    url = _require_database_url(settings)
    deps = AppDeps(
        engine=make_engine(url),
        connect_temporal=lambda: connect(settings),
        temporal_ui_url=settings.temporal_ui_url,
        namespace=settings.temporal_namespace,
        task_queue=settings.task_queue,
    )
    uvicorn.run(create_app(deps), host=settings.api_host, port=settings.api_port,
                log_level="info", timeout_graceful_shutdown=10)


@app.command()
def simulate(
    catalog: Path = typer.Option(..., exists=True, dir_okay=False, help="catalog.yaml"),
    contract: Path = typer.Option(..., exists=True, dir_okay=False, help="contract.yaml"),
    usage: Path | None = typer.Option(None, exists=True, dir_okay=False, help="usage.jsonl"),
    timeline: Path | None = typer.Option(None, exists=True, dir_okay=False, help="timeline.yaml"),
    until: str | None = typer.Option(
        None, help="last simulated day (default: term end + payment terms + 30 days)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the SPEC.md section 9 JSON"),
) -> None:
    """Run a contract's whole term on a time-skipping Temporal server and a fresh database."""
    from worker.simulate_cli import run_simulate_command

    raise typer.Exit(
        run_simulate_command(catalog, contract, usage, timeline, until, as_json, load_settings())
    )


if __name__ == "__main__":
    app()
