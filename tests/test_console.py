"""The VNC console through the appliance's WebSocket proxy, against a real QEMU: a one-time token
opens the RFB stream, VNC authentication takes the VM's random password, and a used token is
refused. Also a standard VNC client's view: the unix socket speaks RFB with the password."""
from __future__ import annotations

import socket
import struct
import warnings

import pytest
from backup_helpers import wait_serial
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_vm_lifecycle import guest_body

from vmm.console import ConsoleTokens

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # cryptography < 43
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

RFB_VERSION = b"RFB 003.008\n"
VNC_AUTH = 2


def vnc_response(password: str, challenge: bytes) -> bytes:
    """RFB VNC authentication: DES-encrypt the challenge with the password, each key byte's
    bits mirrored (RFC 6143 7.2.2 as implemented by every VNC server)."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode().ljust(8, b"\0")[:8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encryptor = Cipher(TripleDES(key), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


class WSStream:
    """Read exact byte counts from the proxied WebSocket (messages split anywhere)."""

    def __init__(self, ws):
        self.ws, self.buffer = ws, b""

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self.ws.receive_bytes()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def write(self, data: bytes) -> None:
        self.ws.send_bytes(data)


def rfb_login(stream, password: str) -> int:
    """Handshake up to the security result: 0 is success."""
    assert stream.read(12) == RFB_VERSION
    stream.write(RFB_VERSION)
    count = stream.read(1)[0]
    assert VNC_AUTH in stream.read(count)
    stream.write(bytes([VNC_AUTH]))
    stream.write(vnc_response(password, stream.read(16)))
    return struct.unpack(">I", stream.read(4))[0]


@pytest.fixture
def console_vm(api_client, appliance, guest_kernel) -> str:
    assert api_client.post("/api/v1/vms", json=guest_body(guest_kernel, "desk", disks=["128M"])).status_code == 201
    assert api_client.post("/api/v1/vms/desk/start").status_code == 200
    wait_serial(appliance, "desk", "CAIRN: READY")
    return "desk"


def test_console_through_the_proxy_with_one_time_tokens(api_client, console_vm):
    ticket = api_client.post(f"/api/v1/vms/{console_vm}/console").json()
    assert len(ticket["password"]) == 8 and ticket["url"].endswith(ticket["token"])
    # The token is the credential: a browser's WebSocket cannot send an Authorization header.
    browser = TestClient(api_client.app)
    with browser.websocket_connect(ticket["url"], subprotocols=["binary"]) as ws:
        assert ws.accepted_subprotocol == "binary"
        assert rfb_login(WSStream(ws), ticket["password"]) == 0
    for refused in (ticket["url"], "/api/v1/console?token=guessed"):   # used up; never issued
        with pytest.raises(WebSocketDisconnect) as closed, api_client.websocket_connect(refused) as ws:
            ws.receive_bytes()
        assert closed.value.code == 1008
    wrong = api_client.post(f"/api/v1/vms/{console_vm}/console").json()
    with api_client.websocket_connect(wrong["url"]) as ws:
        assert rfb_login(WSStream(ws), "not-it") != 0         # the password is a second lock


def test_the_vnc_socket_speaks_rfb_to_a_standard_client(appliance, api_client, console_vm):
    password = api_client.post(f"/api/v1/vms/{console_vm}/console").json()["password"]
    rundir = appliance.driver.paths(console_vm)
    assert rundir.vnc_socket.stat().st_mode & 0o002 == 0       # other users cannot connect
    assert rundir.vnc_password_file.stat().st_mode & 0o777 == 0o600
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(rundir.vnc_socket))
        assert rfb_login(sock.makefile("rwb", buffering=0), password) == 0


def test_console_refusals(api_client, guest_kernel):
    api_client.post("/api/v1/vms", json=guest_body(guest_kernel, "off", disks=["16M"]))
    r = api_client.post("/api/v1/vms/off/console")
    assert r.status_code == 409 and "start it" in r.json()["error"]["message"]
    api_client.post("/api/v1/vms", json=guest_body(guest_kernel, "blind", disks=["16M"], console=False))
    r = api_client.post("/api/v1/vms/blind/console")
    assert r.status_code == 409 and "no console" in r.json()["error"]["message"]
    assert api_client.post("/api/v1/vms/ghost/console").status_code == 404


def test_tokens_are_one_time_and_expire():
    now = [0.0]
    tokens = ConsoleTokens(ttl_seconds=30, clock=lambda: now[0])
    a, b = tokens.issue("vm1"), tokens.issue("vm2")
    assert a != b and len(a) >= 40
    assert tokens.redeem(a) == "vm1" and tokens.redeem(a) is None
    now[0] = 31
    assert tokens.redeem(b) is None
