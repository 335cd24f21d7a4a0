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

CAIRN = str(Path(sys.executable).with_name("cairn"))
# The web stack, migrations, QEMU, the store's codecs and transports, remote access, the scheduler.
SERVER_SIDE = {"fastapi", "starlette", "uvicorn", "alembic", "mako", "qemu", "paramiko", "zstandard", "blake3",
               "cryptography", "psycopg", "libvirt", "croniter", "prometheus_client", "dedup", "transports",
               "restore", "chain", "vmm"}
# What each command may not import besides (`--help` reads no catalog; typer's coercion of a
# command's options is pydantic's), or may import after all (a VM's listing reads its spec and
# its live state with vmm, which speaks QMP; the VMs' visibility names starlette's Request).
MORE = {"--help": {"sqlalchemy", "pydantic", "procs", "appliance.context"}, "backup": {"rich.progress"},
        "job": {"appliance.jobs.kinds"}}
ALLOWED = {"vm": {"vmm", "qemu", "starlette"}}


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
    assert sorted(m for m in modules if m in forbidden or m.split(".")[0] in forbidden) == []
