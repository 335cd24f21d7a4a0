"""The catalog backends a test runs on: SQLite always, PostgreSQL when $CAIRN_TEST_POSTGRES_URL names
a role that may create databases (.ci/run sets it up). Each PostgreSQL test gets a database of its own,
a file copy of one migrated at the start of the session.

Every test whose appliance has a catalog (`catalog_backend` among its fixtures: `appliance`,
`appliance_data_dir`, the API clients) runs twice, `[sqlite]` then `[postgresql]`: its appliance
and every Cairn process it starts ($CAIRN_CATALOG_URL) use that catalog. Nothing to mark, so no new
test misses PostgreSQL: the guests, libvirt, Ceph, the hosts over SSH and the browser too, whatever
they cost. Not doubled: a test that chooses its catalog itself (`catalog_url`: SQLite and PostgreSQL
as it says; `postgres_url`, `postgres_server`: several nodes, PostgreSQL only), and a test about
SQLite itself, marked `@pytest.mark.sqlite_only(reason=...)` (a reason is required; cost is none):

SQLite only (test_*.py::test_*)                       why: what it proves is SQLite's own
security_modes::everything_the_cli_writes_is_private  the modes of the SQLite catalog's files
startup::quick_commands_import_only_what_they_use     what a start on SQLite imports (on
                                                      PostgreSQL a command loads its driver)
nodes::a_sqlite_catalog_has_one_node                  SQLite refuses a second node
security_runners::a_backup_whose_runner_is_gone_      a runner of another boot is gone on SQLite;
 is_interrupted_though_its_pid_lives                  on PostgreSQL it may be another node's
                                                      (jobs.nodes.process_gone): test_nodes judges it
"""
from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from psycopg.errors import InsufficientPrivilege
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from appliance.catalog.engine import open_catalog

POSTGRES_ENV = "CAIRN_TEST_POSTGRES_URL"


def _admin_url() -> str:
    url = make_url(os.environ[POSTGRES_ENV])
    return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


@contextmanager
def postgres_database(template: str | None = None) -> Iterator[str]:
    """The URL of a new PostgreSQL database, empty or a copy of `template`, dropped afterwards
    (its sessions ended first); the test is skipped where there is no PostgreSQL to ask."""
    if not os.environ.get(POSTGRES_ENV):
        pytest.skip(f"${POSTGRES_ENV} is not set (.ci/run starts a PostgreSQL server and sets it)")
    name = f"cairn_test_{secrets.token_hex(6)}"
    admin = create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"{_copied_by_file(conn)}'
                                                              if template else "")))
        yield make_url(_admin_url()).set(database=name).render_as_string(hide_password=False)
        _drop(admin, name)
    finally:
        admin.dispose()


def _copied_by_file(conn: Connection) -> str:
    """PostgreSQL 15 copies a template through its WAL unless told otherwise: for a catalog's few
    pages a copy of the files and its checkpoint take a tenth of that, and its drop too (measured
    here: 0.06 s and 0.04 s instead of 0.38 s and 0.60 s), for each of some 400 tests."""
    return " STRATEGY FILE_COPY" if int(conn.execute(text("SHOW server_version_num")).scalar_one()) >= 150000 else ""


def _drop(admin: Engine, name: str) -> None:
    """DROP DATABASE ... WITH (FORCE) ends the test's sessions, but may not end an autovacuum worker
    (the superuser's) that a test's many writes started there: it is refused until the worker is done."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as e:
            if not isinstance(e.orig, InsufficientPrivilege) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    """The name of a database migrated to the newest schema, which each appliance's catalog
    on PostgreSQL copies: a copy takes a fraction of a run of every migration."""
    with postgres_database() as url:
        open_catalog(url).kw["bind"].dispose()   # no session may stay on a template
        name = make_url(url).database
        assert name is not None
        yield name


@pytest.fixture(params=["sqlite", "postgresql"])   # CATALOG_BACKENDS (defined below, with the hook)
def catalog_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (the data dir's SQLite file) or the URL of a new, empty PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_database() as url:
        yield url


CATALOG_BACKENDS = ("sqlite", "postgresql")
SQLITE_ONLY = "sqlite_only"
CHOOSES_ITS_CATALOG = {"catalog_url", "postgres_url", "postgres_server"}   # postgres_server: tests/postgres_server.py


def without_catalog_backend(test_id: str) -> str:
    """A test's id as written before it ran on both catalogs: `t[sqlite-commit]` -> `t[commit]`,
    `t[postgresql]` -> `t` (what docs name a test by)."""
    name, bracket, params = test_id.partition("[")
    if not bracket:
        return test_id
    kept = [p for p in params.rstrip("]").split("-") if p not in CATALOG_BACKENDS]
    return f"{name}[{'-'.join(kept)}]" if kept else name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test whose appliance has a catalog (`catalog_backend` among its fixtures) runs on SQLite,
    then on PostgreSQL; not one that picks its catalog itself, nor one marked `sqlite_only(reason=...)`."""
    if "catalog_backend" not in metafunc.fixturenames or CHOOSES_ITS_CATALOG & set(metafunc.fixturenames):
        return
    sqlite_only = metafunc.definition.get_closest_marker(SQLITE_ONLY)
    if sqlite_only is None:
        metafunc.parametrize("catalog_backend", CATALOG_BACKENDS, indirect=True)
    elif not sqlite_only.kwargs.get("reason"):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.sqlite_only needs reason=: "
                                "what the test proves of SQLite itself")


@pytest.fixture
def catalog_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """The catalog of the test's appliance: the data dir's SQLite file (None), then a new PostgreSQL
    database, named by $CAIRN_CATALOG_URL for the test's appliance and every Cairn process it starts."""
    if getattr(request, "param", "sqlite") == "sqlite":
        monkeypatch.delenv("CAIRN_CATALOG_URL", raising=False)
        yield None
        return
    with postgres_database(request.getfixturevalue("migrated_postgres_template")) as url:
        monkeypatch.setenv("CAIRN_CATALOG_URL", url)
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """For what only PostgreSQL has (several nodes): the URL of a new, empty database."""
    with postgres_database() as url:
        yield url
