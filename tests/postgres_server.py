"""A PostgreSQL server of the test's own, to kill: the suite's shared one
($CAIRN_TEST_POSTGRES_URL) serves other tests meanwhile.

initdb and postgres refuse to run as root, so they run as the `postgres` user the
postgresql package creates, on a data directory under /tmp, listening on 127.0.0.1 only.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT = 60.0


@dataclass
class PostgresServer:
    root: Path
    port: int
    user: pwd.struct_passwd

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.user.pw_name, "--", *argv]

    def start(self) -> None:
        """Start the server (after a kill it recovers from its log first) and wait until it answers."""
        log = open(self.root / "server.log", "a")   # noqa: SIM115 (the server writes it for as long as it runs)
        subprocess.Popen(self._as_postgres(str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                           "-k", str(self.root), "-c", "listen_addresses=127.0.0.1"),
                         stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run([str(BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                             check=False).returncode != 0:
            assert time.monotonic() < deadline, (self.root / "server.log").read_text()[-2000:]
            time.sleep(0.1)

    def kill(self) -> None:
        """kill -9 of the postmaster and of every server process it started, as in a crash."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == postmaster]
        for pid in [postmaster, *children]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in [postmaster, *children]:
            while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
                time.sleep(0.01)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
                           check=False, capture_output=True)


def _parent(proc: Path) -> int | None:
    try:
        status = (proc / "status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "Z"
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    if not (BIN / "postgres").exists():
        pytest.skip(f"no PostgreSQL 15 in {BIN}")
    user = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="cairn-pg-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(root, _free_port(), user)
    subprocess.run(server._as_postgres(str(BIN / "initdb"), "-D", str(server.data), "-U", "postgres",
                                       "--auth=trust", "--no-sync", "-E", "UTF8"), check=True, capture_output=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
