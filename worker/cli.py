"""The ``billow`` command line.

Process commands (``up``, ``worker``, ``api``, ``migrate``, ``simulate``) run
billow's pieces; the ops commands talk to a running API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from worker.cli_corrections import register as register_correction_commands
from worker.cli_documents import register as register_document_commands
from worker.cli_events import register as register_event_commands
from worker.cli_exports import register as register_export_commands
from worker.cli_ops import register as register_ops_commands
from worker.settings import Settings, load_settings

app = typer.Typer(
    name="billow",
    help="Temporal-orchestrated billing for enterprise contracts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
# catalog, contract, usage, invoice, apikey (worker/cli_ops.py)
register_ops_commands(app)
register_document_commands()  # invoice pdf|html|preview
register_event_commands(app)  # events list|replay|endpoints|add-endpoint
register_export_commands(app)  # journal export, revenue deferred
# invoice void|reissue|credit, credit-note list|show (worker/cli_corrections.py)
register_correction_commands(app)


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

    from activities.db import make_engine
    from api.app import AppDeps, create_app
    from worker.temporal_client import connect

    settings = load_settings()
    url = _require_database_url(settings)
    deps = AppDeps(
        engine=make_engine(url),
        connect_temporal=lambda: connect(settings),
        temporal_ui_url=settings.temporal_ui_url,
        namespace=settings.temporal_namespace,
        task_queue=settings.task_queue,
        webhook_secret=settings.webhook_secret,
        webhook_tolerance_seconds=settings.webhook_tolerance_seconds,
        idempotency_lease_seconds=settings.api_idempotency_lease_seconds,
        seller=settings.seller,
        document_locale=settings.document_locale,
        delivery_options=settings.delivery_options,
    )
    from worker.logging_setup import configure_from_settings

    # billow's logging (text or JSON) for uvicorn's loggers too, from the first line.
    configure_from_settings()
    uvicorn.run(create_app(deps), host=settings.api_host, port=settings.api_port,
                log_config=None, timeout_graceful_shutdown=10)
    # The API's Temporal client runs the SDK core's threads too: end like the
    # worker, without interpreter finalization (worker.main.run_worker explains).
    from worker.main import exit_now

    exit_now(0)


@app.command()
def simulate(
    catalog: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="catalog.yaml")],
    contract: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="contract.yaml")],
    usage: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="usage.jsonl")
    ] = None,
    timeline: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="timeline.yaml")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="last simulated day (default: term end + payment terms + 30 days)"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option(
            "--json", help="print the JSON of docs/file-formats.md, 'Simulation output'")
    ] = False,
) -> None:
    """Run a contract's whole term on a time-skipping Temporal server and a fresh database."""
    from worker.simulate_cli import run_simulate_command

    raise typer.Exit(
        run_simulate_command(catalog, contract, usage, timeline, until, as_json, load_settings())
    )


if __name__ == "__main__":
    app()
