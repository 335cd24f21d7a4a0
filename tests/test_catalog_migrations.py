"""The catalog's schema comes from alembic migrations, on SQLite and on PostgreSQL."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from catalog_backends import catalog_url  # noqa: F401  (fixture)
from sqlalchemy import create_engine, inspect, text

from appliance.catalog.engine import catalog_engine, newest_revision, open_catalog
from appliance.catalog.migrate import BASELINE, _config, current_revision, head_revision, migration_gaps
from appliance.context import Appliance
from appliance.errors import CatalogError


def test_models_and_migrations_agree(catalog_url: str | None):  # noqa: F811
    """A model without its migration fails here: `cairn db revision "what"` writes the migration."""
    assert migration_gaps(catalog_url) == []


def test_the_quick_head_is_alembics_head():
    """open_catalog skips alembic when the catalog is at the head it reads from the file names."""
    assert newest_revision() == head_revision()


def test_open_upgrades_to_head(appliance_data_dir: Path, catalog_url: str | None):  # noqa: F811
    appliance = Appliance.open(str(appliance_data_dir), catalog_url)
    engine = appliance.catalog.kw["bind"]
    assert current_revision(engine) == head_revision()
    assert {"users", "sessions", "access_keys", "audit"} <= set(inspect(engine).get_table_names())
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    open_catalog(appliance.settings.catalog_url)  # a second open finds nothing to do
    assert current_revision(engine) == head_revision()


def test_a_catalog_from_before_migrations_is_adopted(tmp_path: Path):
    """Catalogs made by create_all before alembic keep their rows and get the new tables."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    legacy = create_engine(url)
    # Exactly the tables of then (the baseline revision's, not today's models), without alembic's mark.
    with legacy.begin() as conn:
        command.upgrade(_config(conn), BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO vms (name, spec, created_at) VALUES ('old', '{}', '2026-01-01 00:00:00')"))
    legacy.dispose()

    catalog = open_catalog(url)
    engine = catalog.kw["bind"]
    assert current_revision(engine) == head_revision() != BASELINE
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM vms")).scalars().all() == ["old"]
    assert "users" in inspect(engine).get_table_names()


def test_postgres_url_without_driver_uses_psycopg():
    engine = catalog_engine("postgresql://someone@127.0.0.1/nowhere")
    assert engine.dialect.driver == "psycopg"


def test_unusable_catalog_urls_get_clear_errors(appliance_data_dir: Path):
    with pytest.raises(CatalogError, match="the catalog URL 'nonsense' is not usable"):
        Appliance.open(str(appliance_data_dir), "nonsense")
    with pytest.raises(CatalogError, match=r"cannot open the catalog at postgresql\+psycopg://someone:\*\*\*@"
                                           r"127.0.0.1:1/nowhere: .*refused") as raised:
        Appliance.open(str(appliance_data_dir), "postgresql://someone:hunter22@127.0.0.1:1/nowhere")
    assert "hunter22" not in str(raised.value)


def test_db_commands(appliance_data_dir: Path):
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir)}
    cairn = [sys.executable, "-m", "appliance.cli"]
    upgraded = subprocess.run([*cairn, "db", "upgrade"], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"catalog at revision {head_revision()}" in upgraded.stdout
    checked = subprocess.run([*cairn, "db", "check", "--json"], check=False, env=env, capture_output=True, text=True, timeout=120)
    report = json.loads(checked.stdout)
    assert report["head"] == report["catalog"] == head_revision()
    assert checked.returncode == (1 if report["missing_from_migrations"] else 0)
