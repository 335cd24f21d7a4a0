"""`cairn` on the appliance's host with `cairn serve` running: its listings read through the
appliance's local socket (<data dir>/api.sock) and print what they print in-process, importing no
database library; only root and the user the appliance runs as get in, the kernel says who; a
socket a killed appliance left is passed over, and replaced by the next start."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cli_helpers import THROUGH_THE_API, Cli, Served, among, imported
from cli_helpers import served as served
from web_helpers import console_server

from appliance.cli.client import Client
from appliance.cli.machine import READS
from appliance.cli.remote import ApiError, LocalSocket, RemoteClient
from appliance.server.local_socket import bind_local_socket
from dedup import Store

LISTINGS = (("backup", "list", "--json"), ("vm", "list", "--json"), ("job", "list", "--json"),
            ("backup", "list"), ("vm", "list"), ("job", "list"))
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# A read through the socket by RemoteClient, as whoever runs it: what it answered, or its error.
ASK = ("import sys; from pathlib import Path; from appliance.cli.remote import LocalSocket, RemoteClient\n"
       "try:\n    print(RemoteClient(LocalSocket(Path(sys.argv[1])), '', '').call('GET', '/backups'))\n"
       "except Exception as e:\n    sys.exit(f'{type(e).__name__}: {e}')")


def listed(here: Cli) -> dict[tuple[str, ...], str]:
    return {argv: here(*argv).stdout for argv in LISTINGS}


def peer_pid(path: Path) -> int:
    """The pid of the process listening on the socket, as the kernel says."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(path))
        pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid


def refused(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(path))
        except ConnectionRefusedError:
            return True
    return False


def test_every_read_the_socket_answers_is_a_client_query():
    assert READS - {name for name in dir(Client) if not name.startswith("_")} == set()


def test_a_live_socket_is_kept_and_a_dead_one_replaced(tmp_path: Path):
    """Another node's `cairn serve` on the data dir keeps its socket; a killed one's file is replaced."""
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen()
        assert bind_local_socket(path) is None
        assert peer_pid(path) == os.getpid(), "still the other one's"
    assert path.exists() and refused(path)   # what a killed server leaves
    bound = bind_local_socket(path)
    assert bound is not None
    with bound:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        bound.listen()
        assert not refused(path)


@pytest.mark.slow
def test_a_local_listing_reads_through_the_running_appliance_and_prints_the_same(appliance_data_dir: Path):
    Store.init(appliance_data_dir / "store")
    here = Cli(CAIRN_DATA_DIR=str(appliance_data_dir))
    path = appliance_data_dir / "api.sock"
    with console_server(appliance_data_dir):
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
        # Changes and jobs run in the command's process, as without the appliance.
        here("vm", "create", "web", "--disk", "16M")
        backup = here.json("backup", "create", "web")
        running = listed(here)
        assert backup["backup_id"] in running[("backup", "list", "--json")]
        assert '"web"' in running[("vm", "list", "--json")] and '"backup"' in running[("job", "list", "--json")]
        for argv in LISTINGS[:3]:
            modules = imported(list(argv), here.env)
            assert "appliance.cli.remote" in modules, argv   # the trace is of a listing through the socket
            assert among(modules, THROUGH_THE_API) == [], argv

        # Killed, the appliance leaves its socket file: the next listing is refused at once and
        # reads in-process.
        killed = peer_pid(path)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not refused(path):
            assert time.monotonic() < deadline, "the killed appliance's socket still takes connections"
            time.sleep(0.1)
        began = time.monotonic()
        assert listed(here) == running
        assert time.monotonic() - began < 120, "a listing waited on the dead socket"
        assert "appliance.cli.local" in imported(["backup", "list", "--json"], here.env)
    assert path.exists()

    with console_server(appliance_data_dir):   # the next start replaces the stale file
        assert peer_pid(path) != killed and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert listed(here) == running
        assert "appliance.cli.remote" in imported(["backup", "list", "--json"], here.env)
    assert not path.exists(), "a clean stop removes the socket"
    assert listed(here) == running


@pytest.mark.slow
def test_only_root_and_the_appliances_user_get_in_and_tcp_still_needs_a_token(served: Served):
    path = served.data_dir / "api.sock"

    def ask_as_nobody() -> subprocess.CompletedProcess:
        return subprocess.run([*NOBODY, sys.executable, "-c", ASK, str(path)], capture_output=True, text=True,
                              cwd="/", timeout=120, check=False)

    # Root reads; a change through the socket is refused: the local CLI makes changes in its own process.
    through_socket = RemoteClient(LocalSocket(path), "", "")
    assert through_socket.call("GET", "/backups") == []
    with pytest.raises(ApiError, match="local socket answers reads only") as change:
        through_socket.call("POST", "/jobs", {"kind": "gc", "params": {}})
    assert change.value.status == 403

    served.data_dir.chmod(0o711)   # anyone may pass through the data dir: only the socket's own mode keeps them out
    try:
        kept_out = ask_as_nobody()
        assert kept_out.returncode != 0 and "UnreachableError" in kept_out.stderr, kept_out
        assert "Permission denied" in kept_out.stderr
        path.chmod(0o666)   # and when the file lets anyone in, the kernel still says who connects
        answered = ask_as_nobody()
        assert answered.returncode != 0 and "ApiError" in answered.stderr, answered
        assert ("the appliance's local socket serves root and the user it runs as (uid 0), not uid "
                f"{int(subprocess.check_output(['id', '-u', 'nobody']))}") in answered.stderr
    finally:
        path.chmod(0o600)
        served.data_dir.chmod(0o700)

    # Over TCP, nothing a request says makes it the socket's: no token, no answer.
    trusted = ssl.create_default_context(cafile=str(served.data_dir / "tls" / "cert.pem"))
    with httpx.Client(base_url=served.url, verify=trusted, timeout=60) as api:
        for headers in ({}, {"cairn.socket_peer_uid": "0"}, {"X-Forwarded-For": "127.0.0.1"},
                        {"Authorization": "Bearer local socket"}):
            answer = api.get("/api/v1/backups", headers=headers)
            assert answer.status_code == 401, (headers, answer.text)
