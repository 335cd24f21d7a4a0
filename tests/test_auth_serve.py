"""`cairn serve` for real: HTTPS with the generated certificate, the first-start admin, plain HTTP on request."""
from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from appliance.server.tls import self_signed

START_TIMEOUT = 90  # a shared 2-core machine: importing and starting can take a while


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(data_dir: Path, *args: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir)}
    server = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--port", str(port), *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert server.poll() is None, server.communicate()[0]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "cairn serve did not start listening"
            time.sleep(0.2)
        yield port, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def output(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    return server.stdout.read()


def test_https_by_default_with_a_first_start_admin(appliance_data_dir: Path):
    password_file = appliance_data_dir / "initial-admin-password"
    with serving(appliance_data_dir) as (port, server):
        cert = appliance_data_dir / "tls" / "cert.pem"
        pinned = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=pinned, timeout=30) as https:
            assert https.get("/api/v1/health").json()["status"] == "ok"
            assert https.get("/api/v1/vms").status_code == 401
            password = password_file.read_text().strip()
            token = https.post("/api/v1/auth/login", json={"username": "admin", "password": password}).json()["token"]
            me = https.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
            assert me["name"] == "admin" and me["role"] == "admin"
        with httpx.Client(verify=ssl.create_default_context(), timeout=30) as untrusting:
            try:
                untrusting.get(f"https://127.0.0.1:{port}/api/v1/health")
                raise AssertionError("a self-signed certificate passed the system's trust store")
            except httpx.ConnectError as e:
                assert "CERTIFICATE_VERIFY_FAILED" in str(e)
        with httpx.Client(timeout=30) as plain:
            try:
                plain.get(f"http://127.0.0.1:{port}/api/v1/health")
            except httpx.HTTPError:
                pass  # the TLS server drops plain HTTP
            else:
                raise AssertionError("plain HTTP was answered")
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password not in output(server)                       # the log says where it is, not what

    cert_pem = cert.read_bytes()
    with serving(appliance_data_dir) as (_, server):
        pass
    assert "created user admin" not in output(server)
    assert password_file.read_text().strip() == password and cert.read_bytes() == cert_pem


def test_insecure_http_on_request(appliance_data_dir: Path):
    with serving(appliance_data_dir, "--insecure-http") as (port, _):
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=30)
        assert r.status_code == 200
    assert not (appliance_data_dir / "tls").exists()


def test_own_certificate(appliance_data_dir: Path, tmp_path: Path):
    mine = self_signed(tmp_path / "mine", "127.0.0.1")
    with serving(appliance_data_dir, "--cert", str(mine.cert), "--key", str(mine.key)) as (port, _):
        pinned = ssl.create_default_context(cafile=str(mine.cert))
        assert httpx.get(f"https://127.0.0.1:{port}/api/v1/health", verify=pinned, timeout=30).status_code == 200
    assert not (appliance_data_dir / "tls").exists()

    # Bad options: a clear error, nothing served.
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir), "COLUMNS": "500"}  # no wrapped messages
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--cert", str(cert)], check=False, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--cert and --key go together" in r.stderr
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--cert", str(tmp_path / "nope.pem")],
                       check=False, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr
