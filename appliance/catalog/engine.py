"""Opening the catalog: an engine for its URL, its schema upgraded to the newest migration.

A catalog already at the newest revision opens without alembic (a third of a second to
import): the CLI opens it on every command.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import CatalogError, CatalogValueError


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
        _private_sqlite_files(parsed.database)
        event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "before_cursor_execute", _refuse_nul_characters)
    return engine


def _refuse_nul_characters(_conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any,
                           _executemany: bool) -> None:
    """PostgreSQL refuses a text holding a NUL character, as a server error, where SQLite takes it:
    a name such as "x\\x00y" would fail on one catalog and pass a lookup on the other. Both refuse it
    here, before the database sees it, as the caller's fault."""
    for value in _values(parameters):
        if isinstance(value, str) and "\x00" in value:
            raise CatalogValueError(f"a NUL character cannot be stored or looked up: {value[:80]!r}")


def _values(parameters: Any) -> Iterator[Any]:
    """Every value of a statement's parameters: a row's (a dict or a tuple), or each row's of a batch,
    however the dialect groups them (an insert of many rows may come as one flat tuple)."""
    for item in parameters.values() if isinstance(parameters, dict) else parameters or ():
        if isinstance(item, (dict, list, tuple)):
            yield from _values(item)
        else:
            yield item


def _private_sqlite_files(database: str | None) -> None:
    """The catalog holds password hashes: its file is 0600 before SQLite opens it (SQLite gives
    its -wal and -shm files the database file's mode), and an older, looser one is tightened.

    By path, never by opening a file that exists: SQLite's locks are POSIX record locks, which
    a process loses on any close() of the file, so a second open of the catalog in a process
    would drop the locks of its first and let another process write beside it (a corrupt
    catalog). Only a database file that does not exist yet is created here."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    for path in (database, f"{database}-wal", f"{database}-shm"):
        try:
            os.chmod(path, 0o600)
        except FileNotFoundError:
            continue


MIGRATIONS = Path(__file__).with_name("migrations")


def newest_revision() -> str:
    """The migrations' head, read from their file names (`<revision>_<what>.py`, numbered in order;
    tests/test_catalog_migrations.py holds this equal to alembic's own head)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def open_catalog(url: str) -> sessionmaker[Session]:
    """The catalog at `url`, its schema upgraded to the newest migration first."""
    engine = catalog_engine(url)
    try:
        if _revision(engine) != newest_revision():
            from .migrate import upgrade

            upgrade(engine)
    except OperationalError as e:
        raise unreachable(engine, e) from e
    return sessionmaker(engine, expire_on_commit=False)


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


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
