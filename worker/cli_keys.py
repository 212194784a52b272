"""``billow apikey``: API keys, written to the database directly.

The first key has to come from somewhere: these commands talk to PostgreSQL
(``BILLOW_DATABASE_URL``, else the database of a `billow up` running on the
data directory), not to the API.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from worker.cli_common import (
    EXIT_CODES,
    EXIT_INPUT,
    EXIT_NOT_FOUND,
    EXIT_SERVER,
    JsonOpt,
    emit_json,
    err,
    out,
    show,
    width,
)
from worker.cli_tables import Column, Layout, kv, render
from worker.settings import load_settings

_emit_json = emit_json
_out = out
_kv_table = kv


apikey_app = typer.Typer(
    help="API keys, written to the database directly (BILLOW_DATABASE_URL, or the "
    "database of a running `billow up`).",
    no_args_is_help=True, epilog=EXIT_CODES)


def database_url() -> str:
    """BILLOW_DATABASE_URL, else the embedded database of a running `billow up`."""
    settings = load_settings()
    if settings.database_url:
        return settings.database_url
    from worker.embedded import running_url

    url = running_url(settings.data_dir)
    if url is None:
        err.print("[red]error:[/] no database configured: set BILLOW_DATABASE_URL "
                  "(or run `billow up` in this directory: its database is used)")
        raise typer.Exit(EXIT_INPUT)
    return url


async def with_conn(url: str, action: Any) -> Any:
    from activities.db import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await action(conn)
    finally:
        await engine.dispose()


@apikey_app.command("create")
def apikey_create(
    scope: Annotated[list[str], typer.Option(
        "--scope", "-s", help="crm, usage or ops (repeat, or comma-separate, for several)")],
    name: Annotated[str, typer.Option(help="What the key is for")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API key and print it — the only time it is shown."""
    from activities.api_keys import create_api_key, parse_scopes

    scopes = [s for item in scope for s in item.split(",") if s.strip()]
    try:
        parse_scopes(scopes)
    except ValueError as exc:
        err.print(f"[red]error:[/] --scope: {exc}")
        raise typer.Exit(EXIT_INPUT) from None
    url = database_url()
    try:
        new = asyncio.run(with_conn(url, lambda conn: create_api_key(conn, scopes, name)))
    except Exception as exc:
        err.print(f"[red]error:[/] cannot create the key: {exc}")
        raise typer.Exit(EXIT_SERVER) from None
    scopes_out = sorted(s.value for s in new.info.scopes)
    if as_json:
        _emit_json({"key": new.key, "key_id": new.info.key_id, "name": new.info.name,
                    "scopes": scopes_out})
        return
    _out().print(_kv_table("API key", [("key", new.key), ("key id", new.info.key_id),
                                    ("scopes", ", ".join(scopes_out)),
                                    ("name", new.info.name or "-")]))
    err.print("[yellow]Store the key now: billow keeps only its hash and cannot show it "
              "again.[/]")


@apikey_app.command("list")
def apikey_list(as_json: JsonOpt = False) -> None:
    """API keys (ids, scopes, status; never the keys themselves)."""
    from activities.api_keys import list_api_keys

    keys = asyncio.run(with_conn(database_url(), list_api_keys))
    rows = [{"key_id": k.key_id, "name": k.name, "scopes": sorted(s.value for s in k.scopes),
             "created_at": k.created_at.isoformat(),
             "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None} for k in keys]
    if as_json:
        _emit_json({"keys": rows})
        return
    layout = Layout("API keys", [
        Column("key id"), Column("name", kind="text"), Column("scopes"),
        Column("created", priority=1), Column("revoked", priority=2)])
    for r in rows:
        layout.add(r["key_id"], r["name"], ", ".join(r["scopes"]), r["created_at"],
                   r["revoked_at"] or "")
    show(render(layout, width()))


@apikey_app.command("revoke")
def apikey_revoke(key_id: Annotated[str, typer.Argument(help="Key id (not the key)")]) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from activities.api_keys import revoke_api_key

    done = asyncio.run(with_conn(database_url(), lambda conn: revoke_api_key(conn, key_id)))
    if not done:
        err.print(f"[red]error:[/] no active key {key_id!r}")
        raise typer.Exit(EXIT_NOT_FOUND)
    err.print(f"key {key_id} revoked")


