"""The loopback OpenSSH server that remote-access tests rely on."""
from __future__ import annotations

import subprocess

from sshd_server import SSHServer


def test_sshd_server_answers_ssh_and_sftp(sshd_server: SSHServer):
    out = subprocess.run(["ssh", *sshd_server.ssh_args(), f"{sshd_server.user}@{sshd_server.host}", "echo", "hi"],
                         check=False, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "hi", out.stderr
    with (sshd_server.paramiko_client() as client, client.open_sftp() as sftp,
          sftp.open(str(sshd_server.workdir / "probe"), "w") as f):
        f.write(b"data")
    assert (sshd_server.workdir / "probe").read_bytes() == b"data"
