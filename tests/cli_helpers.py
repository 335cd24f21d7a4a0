"""`cairn` run as a user runs it, here or signed in to a `cairn serve` on loopback: the helpers
of the tests that drive the CLI on both sides (test_cli_remote, test_vm_hardware_cli,
test_backup_protection, test_cli_local_socket), and what a command imports (test_startup)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web_helpers import PASSWORD, add_user, console_server

from appliance.access.roles import Role
from dedup import Store

CAIRN = str(Path(sys.executable).with_name("cairn"))
# The web stack, migrations, QEMU, the store's codecs and transports, remote access, the scheduler.
SERVER_SIDE = {"fastapi", "starlette", "uvicorn", "alembic", "mako", "qemu", "paramiko", "zstandard", "blake3",
               "cryptography", "psycopg", "libvirt", "croniter", "prometheus_client", "dedup", "transports",
               "restore", "chain", "vmm"}

# Through an appliance's API a listing needs no database library, nor this machine's appliance.
THROUGH_THE_API = SERVER_SIDE | {"sqlalchemy", "appliance.context", "appliance.catalog.paging", "appliance.cli.local"}


def imported(argv: list[str], env: dict[str, str]) -> set[str]:
    """Every module the command imports (python -X importtime lists each once)."""
    trace = subprocess.run([sys.executable, "-X", "importtime", "-m", "appliance.cli", *argv], env=env,
                           capture_output=True, text=True, check=True).stderr
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", trace, re.MULTILINE))


def among(modules: set[str], packages: Iterable[str]) -> list[str]:
    """The modules that are (or are in) one of the packages."""
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


@dataclass(frozen=True)
class Served:
    url: str
    data_dir: Path
    fingerprint: str   # of its certificate, computed here, as openssl prints it


def fingerprint_of(pem: Path) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).digest())


@pytest.fixture
def served(appliance_data_dir: Path) -> Iterator[Served]:
    """`cairn serve` on the test's data dir, with an admin `ops` and a viewer `eve`."""
    Store.init(appliance_data_dir / "store")
    add_user(appliance_data_dir, "ops", Role.ADMIN)
    add_user(appliance_data_dir, "eve", Role.VIEWER)
    with console_server(appliance_data_dir) as url:
        yield Served(url, appliance_data_dir, fingerprint_of(appliance_data_dir / "tls" / "cert.pem"))


class Cli:
    """`cairn` with an environment of its own: no CAIRN_* but the catalog's and what it is given,
    80 columns. A run that ends with another status than `code`, or prints a traceback, fails."""

    def __init__(self, **env: str):
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CAIRN_") or k == "CAIRN_CATALOG_URL"},
                    "COLUMNS": "80", **env}

    def __call__(self, *args: str, code: int = 0, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], env={**self.env, **env}, input=stdin, capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        return proc

    def json(self, *args: str, **env: str) -> Any:
        return json.loads(self(*args, "--json", **env).stdout)


def login(there: Cli, served: Served, user: str = "ops") -> subprocess.CompletedProcess:
    return there("login", served.url, "--user", user, "--password-stdin", "--fingerprint", served.fingerprint,
                 stdin=PASSWORD + "\n")
