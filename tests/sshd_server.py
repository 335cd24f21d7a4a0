"""A real OpenSSH server on loopback for tests of remote stores, hosts and transports.

`sshd_server` (a pytest fixture, imported by conftest) starts /usr/sbin/sshd on a free port with
its own host key and one authorized client key for the current user (root here), and stops it
after the test. Clients connect with `server.paramiko_client()` or `ssh *server.ssh_args()`.
`running_sshd()` starts one elsewhere: on an address of a network namespace (host_lab.py).
"""
from __future__ import annotations

import getpass
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SSHServer:
    host: str
    port: int
    user: str
    key_file: Path          # the client's private key (ed25519, no passphrase)
    known_hosts: Path       # a known_hosts file naming this server's host key
    workdir: Path           # a directory the test may use as the "remote" side

    def ssh_args(self) -> list[str]:
        """Options for the OpenSSH client (ssh, sshfs -o ssh_command, ...)."""
        return ["-p", str(self.port), "-i", str(self.key_file),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]

    def url(self, path: str | os.PathLike[str]) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}{Path(path).resolve()}"

    def paramiko_client(self):
        import paramiko
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.host, port=self.port, username=self.user, key_filename=str(self.key_file),
                       allow_agent=False, look_for_keys=False, timeout=10)
        return client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def _wait_listening(address: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {address}:{port} within {timeout}s: {log.read_text()}")


@pytest.fixture
def sshd_server() -> Iterator[SSHServer]:
    with running_sshd() as server:
        yield server


@contextmanager
def running_sshd(address: str = "127.0.0.1", port: int | None = None, netns: str | None = None) -> Iterator[SSHServer]:
    """sshd on `address`:`port` (default: a free port on loopback), in network namespace
    `netns` if given; the test process must reach that address."""
    if not os.path.exists(SSHD):
        pytest.fail("openssh-server is not installed (the Makefile's deps install it)")
    root = Path(tempfile.mkdtemp(prefix="cairn-sshd-"))
    host_key, client_key = root / "host_ed25519", root / "client_ed25519"
    host_pub = _keygen(host_key)
    (root / "authorized_keys").write_text(_keygen(client_key) + "\n")
    port = port or _free_port()
    (root / "known_hosts").write_text(f"[{address}]:{port} {host_pub}\n")
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", f"ListenAddress {address}", f"HostKey {host_key}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "StrictModes no", "UsePAM no", "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    (root / "remote").mkdir()
    log = root / "sshd.log"
    inside = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen([*inside, SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        _wait_listening(address, port, proc, log)
        yield SSHServer(address, port, getpass.getuser(), client_key, root / "known_hosts", root / "remote")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["rm", "-rf", str(root)], check=False)
