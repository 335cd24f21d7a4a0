"""A request is authenticated before its body is read, and bodies are limited: a JSON request to
1 MiB, an image upload to $CAIRN_MAX_UPLOAD (streamed to disk, never held in memory). Against a
real `cairn serve`: what counts is what the server reads off the socket."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
from test_auth_serve import serving

from appliance.access.roles import Role
from appliance.context import Appliance
from dedup import Store

PASSWORD = "a long enough password"
MiB = 1 << 20


def answer_before_the_body(port: int, path: str, length: int, token: str | None = None,
                           method: str = "POST") -> tuple[int, float]:
    """Send a request announcing `length` bytes and only the first MiB of them: (status, seconds)
    of the answer the server gives without waiting for the rest (0 if it waits)."""
    headers = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
               f"Content-Length: {length}", "Connection: close"]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        started = time.monotonic()
        conn.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        try:
            conn.sendall(b"[" + b"0," * (MiB // 2 - 1))
        except OSError:
            pass   # the server answered and closed while we were still sending
        conn.settimeout(10)
        try:
            head = conn.recv(4096).decode(errors="replace")
        except TimeoutError:
            return 0, time.monotonic() - started
    return int(head.split(" ", 2)[1]), time.monotonic() - started


def test_bodies_wait_for_credentials_and_stay_small(appliance_data_dir: Path, tmp_path: Path, monkeypatch):
    Store.init(appliance_data_dir / "store")
    Appliance.open(str(appliance_data_dir)).users.create("ann", PASSWORD, Role.OPERATOR)
    monkeypatch.setenv("CAIRN_MAX_UPLOAD", "4M")
    with serving(appliance_data_dir, "--insecure-http") as (port, _):
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/api/v1/auth/login", json={"username": "ann", "password": PASSWORD}).json()["token"]
        # Anonymous, 200 MiB announced: refused at once, the body never read.
        assert answer_before_the_body(port, "/api/v1/vms", 200 * MiB)[0] == 401
        assert answer_before_the_body(port, "/api/v1/vms", 200 * MiB, token="cs_not-a-session")[0] == 401
        # Signed in, but more than a JSON request may be: 413, also at the public login.
        assert answer_before_the_body(port, "/api/v1/vms", 200 * MiB, token=token)[0] == 413
        assert answer_before_the_body(port, "/api/v1/auth/login", 200 * MiB)[0] == 413
        with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
            # No length announced (chunked): cut off at the limit all the same.
            chunked = http.post("/api/v1/vms", content=iter([b'{"name": "' + b"x" * MiB] * 3),
                                headers={"content-type": "application/json"})
            assert chunked.status_code == 413, chunked.text
            # An upload streams to disk up to $CAIRN_MAX_UPLOAD; a larger one leaves nothing behind.
            small = http.put("/api/v1/images/small", content=iter([b"\x5a" * MiB] * 3))
            assert small.status_code == 201, small.text
            big = http.put("/api/v1/images/big", content=iter([b"\x5a" * MiB] * 6))
            assert big.status_code == 413, big.text
            assert "4.0 MiB" in big.json()["error"]["message"]
            assert [i["name"] for i in http.get("/api/v1/images").json()] == ["small"]
    assert [p.name for p in (appliance_data_dir / "images").iterdir() if p.name.startswith(".upload")] == []
