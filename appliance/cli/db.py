"""`cairn db`: the catalog's schema (alembic migrations) — check, upgrade, write a new revision."""
from __future__ import annotations

import typer

from appliance.catalog.engine import catalog_engine
from appliance.catalog.migrate import current_revision, head_revision, migration_gaps, new_revision, upgrade
from appliance.settings import Settings

from .common import JsonOpt, emit_json, err, out, reports_errors, state

db_app = typer.Typer(help="The catalog's schema: migrations (on the appliance's host).", no_args_is_help=True)


@db_app.callback()
@reports_errors
def on_this_host() -> None:
    """The catalog is this machine's data dir's: not reached through an appliance's API."""
    state.host_only()


@db_app.command("check")
@reports_errors
def db_check(as_json: bool = JsonOpt) -> None:
    """Do the migrations make exactly the tables the models describe, and is this catalog at the newest?

    Exits 1 when a model has no migration yet (`cairn db revision` writes one)."""
    gaps = migration_gaps()
    engine = catalog_engine(Settings.resolve(state.data_dir).catalog_url)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    if as_json:
        emit_json({"head": head_revision(), "catalog": current, "missing_from_migrations": gaps})
    else:
        out.print(f"migrations head {head_revision()}, this catalog at {current or 'no revision'}")
        for gap in gaps:
            out.print(f"  not in any migration: {gap}", highlight=False)
    if gaps:
        raise typer.Exit(1)


@db_app.command("upgrade")
@reports_errors
def db_upgrade() -> None:
    """Upgrade the catalog to the newest revision (every start does this too)."""
    engine = catalog_engine(Settings.resolve(state.data_dir).catalog_url)
    try:
        upgrade(engine)
        out.print(f"catalog at revision {current_revision(engine)}")
    finally:
        engine.dispose()


@db_app.command("revision")
@reports_errors
def db_revision(message: str = typer.Argument(..., help="What the migration changes.")) -> None:
    """Write a new migration from what the models have and the migrations lack; review it before use."""
    if not migration_gaps():
        err.print("the models and the migrations agree: nothing to write")
        raise typer.Exit(1)
    out.print(f"wrote {new_revision(message)}")
