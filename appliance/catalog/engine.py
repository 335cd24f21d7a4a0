"""Opening the catalog: an engine for its URL, its schema upgraded to the newest migration.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import (
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import CatalogError


def catalog_engine(url: str) -> Engine:
    """An engine for a catalog URL; `postgresql://` means the psycopg (3) driver, the one installed."""
    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() == "postgresql")
    except (ArgumentError, ImportError) as e:
        raise CatalogError(f"the catalog URL {url!r} is not usable: {e}") from e
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_catalog(url: str) -> sessionmaker[Session]:
    """The catalog at `url`, its schema upgraded to the newest migration first."""
    from .migrate import upgrade

    engine = catalog_engine(url)
    try:
        upgrade(engine)
    except OperationalError as e:
        raise unreachable(engine, e) from e
    return sessionmaker(engine, expire_on_commit=False)


def unreachable(engine: Engine, e: OperationalError) -> CatalogError:
    # Say where, never with the password, and why (e.orig: the driver's own words).
    return CatalogError(f"cannot open the catalog at {engine.url.render_as_string(hide_password=True)}: "
                        f"{str(e.orig).strip()}")


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
