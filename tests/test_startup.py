"""What the CLI's quickest commands import: nothing of the machinery they do not use, so that
`cairn --help` and `cairn backup list` start at once and cannot silently slow down again.

Checked by what is imported, not by how long it takes (timings on a shared machine say little;
bench/startup.py measures them beside a bare Python start).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Cli, Served, login
from cli_helpers import served as served

CAIRN = str(Path(sys.executable).with_name("cairn"))
# The web stack, migrations, QEMU, the store's codecs and transports, remote access, the scheduler.
SERVER_SIDE = {"fastapi", "starlette", "uvicorn", "alembic", "mako", "qemu", "paramiko", "zstandard", "blake3",
               "cryptography", "psycopg", "libvirt", "croniter", "prometheus_client", "dedup", "transports",
               "restore", "chain", "vmm"}
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
# Through an appliance's API a listing needs no database library, nor this machine's appliance.
THROUGH_THE_API = SERVER_SIDE | {"sqlalchemy", "appliance.context", "appliance.catalog.paging", "appliance.cli.local"}


def imported(argv: list[str], env: dict[str, str]) -> set[str]:
    """Every module the command imports (python -X importtime lists each once)."""
    trace = subprocess.run([sys.executable, "-X", "importtime", "-m", "appliance.cli", *argv], env=env,
                           capture_output=True, text=True, check=True).stderr
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", trace, re.MULTILINE))


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
    assert sorted(m for m in modules if any(m == f or m.startswith(f"{f}.") for f in forbidden)) == []


def test_listings_through_the_api_import_no_database_library(served: Served, tmp_path: Path):
    there = Cli(XDG_CONFIG_HOME=str(tmp_path / "config"))
    login(there, served)
    for argv in (["backup", "list", "--json"], ["vm", "list", "--json"], ["job", "list", "--json"]):
        there(*argv)   # it works there
        modules = imported(argv, there.env)
        assert "appliance.cli.remote" in modules, argv   # the trace is of a command through the API
        assert sorted(m for m in modules if any(m == f or m.startswith(f"{f}.") for f in THROUGH_THE_API)) == [], argv
