"""What the CLI's quickest commands import: nothing of the machinery they do not use, so that
`cairn --help` and `cairn backup list` start at once and cannot silently slow down again.

Checked by what is imported, not by how long it takes (timings on a shared machine say little;
bench/startup.py measures them beside a bare Python start).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import SERVER_SIDE, THROUGH_THE_API, Cli, Served, among, imported, login
from cli_helpers import served as served

CAIRN = str(Path(sys.executable).with_name("cairn"))
# What each command may not import besides (`--help` reads no catalog; typer's coercion of a
# command's options is pydantic's; a listing on a named data dir reads no login; the job list
# reads the catalog, not the engine that runs jobs; the VM list neither the VMs' visibility rule,
# which needs every domain's tables, nor the VM service that defines, places and networks VMs,
# nor the hardware changes', jobs', backups' or recycle bin's code), or may import after all (a
# VM's listing reads its spec and its live state with vmm, which speaks QMP).
LISTING = {"appliance.cli.login", "appliance.jobs.engine", "appliance.jobs.claims"}
MORE = {"--help": {"sqlalchemy", "pydantic", "procs", "appliance.context", "appliance.cli.login"},
        "backup": LISTING | {"rich.progress"},
        "job": LISTING | {"appliance.jobs.kinds"},
        "vm": LISTING | {"appliance.access.visibility", "appliance.vms.service", "appliance.pools",
                         "appliance.vms.hardware", "appliance.jobs.records", "appliance.backups", "appliance.deletion"}}
ALLOWED = {"vm": {"vmm", "qemu"}}


@pytest.mark.parametrize("argv", [["--help"], ["backup", "list", "--json"], ["vm", "list", "--json"],
                                  ["job", "list", "--json"]], ids=" ".join)
@pytest.mark.sqlite_only(reason="the imports of a start on SQLite; on PostgreSQL a command needs its driver (psycopg)")
def test_quick_commands_import_only_what_they_use(argv: list[str], appliance_data_dir: Path):
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir)}
    # The catalog made and at its newest revision: a start after an upgrade migrates (alembic) once.
    subprocess.run([CAIRN, "backup", "list"], env=env, capture_output=True, check=True)
    modules = imported(argv, env)
    assert "appliance.cli.main" in modules   # the trace is the command's
    forbidden = (SERVER_SIDE - ALLOWED.get(argv[0], set())) | MORE.get(argv[0], set())
    assert among(modules, forbidden) == []


def test_listings_through_the_api_import_no_database_library(served: Served, tmp_path: Path):
    there = Cli(XDG_CONFIG_HOME=str(tmp_path / "config"))
    login(there, served)
    for argv in (["backup", "list", "--json"], ["vm", "list", "--json"], ["job", "list", "--json"]):
        there(*argv)   # it works there
        modules = imported(argv, there.env)
        assert "appliance.cli.remote" in modules, argv   # the trace is of a command through the API
        assert among(modules, THROUGH_THE_API) == [], argv
