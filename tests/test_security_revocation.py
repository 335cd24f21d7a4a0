"""A user disabled, deleted or given a new password loses every session and every access key at
once, and a live event stream or console they hold ends within seconds."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from conftest import TEST_PASSWORD
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from test_console import WSStream, console_vm, rfb_login  # noqa: F401  (console_vm: a fixture)

from appliance.access.roles import Role
from appliance.api.app import create_app
from appliance.context import Appliance

NEW_PASSWORD = "a brand new password"


def credentials(appliance: Appliance) -> tuple[TestClient, dict[str, str], dict[str, str]]:
    """A client, and ann's session and access key as headers (ann: an operator)."""
    appliance.users.create("ann", TEST_PASSWORD, Role.OPERATOR)
    client = TestClient(create_app(appliance))
    session = client.post("/api/v1/auth/login", json={"username": "ann", "password": TEST_PASSWORD}).json()["token"]
    key = client.post("/api/v1/tokens", json={"name": "script"},
                      headers={"Authorization": f"Bearer {session}"}).json()["token"]
    return client, {"Authorization": f"Bearer {session}"}, {"Authorization": f"Bearer {key}"}


CHANGES: dict[str, Callable[[TestClient, dict[str, str]], object]] = {
    "disabled": lambda admin, ann: admin.patch("/api/v1/users/ann", json={"disabled": True}),
    "password set by an admin": lambda admin, ann: admin.patch("/api/v1/users/ann", json={"password": NEW_PASSWORD}),
    "own password changed": lambda admin, ann: TestClient(admin.app).post(
        "/api/v1/auth/password", json={"current": TEST_PASSWORD, "new": NEW_PASSWORD}, headers=ann),
    "deleted": lambda admin, ann: admin.delete("/api/v1/users/ann"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_every_session_and_key_ends_at_once(appliance: Appliance, api_client: TestClient, change: str):
    client, session, key = credentials(appliance)
    for headers in (session, key):
        assert client.get("/api/v1/vms", headers=headers).status_code == 200
    answer = CHANGES[change](api_client, session)
    assert answer.status_code in (200, 204), answer.text
    for headers in (session, key):
        assert client.get("/api/v1/vms", headers=headers).status_code == 401, change


def test_a_live_event_stream_ends_with_its_session(appliance: Appliance, api_client: TestClient):
    client, session, _ = credentials(appliance)
    lines: list[str] = []

    def follow() -> None:
        with client.stream("GET", "/api/v1/events/stream", headers=session) as stream:
            for line in stream.iter_lines():
                lines.append(line)
    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(1.5)                     # the stream is open and listening
    assert follower.is_alive()
    assert api_client.patch("/api/v1/users/ann", json={"disabled": True}).status_code == 200
    follower.join(10)
    assert not follower.is_alive(), "the stream of a disabled user is still open"


def test_an_open_console_closes_with_its_session(appliance: Appliance, api_client: TestClient,
                                                 console_vm: str):  # noqa: F811
    appliance.users.create("boss", TEST_PASSWORD, Role.ADMIN)
    client = TestClient(api_client.app)
    boss = {"Authorization": "Bearer " + client.post("/api/v1/auth/login", json={
        "username": "boss", "password": TEST_PASSWORD}).json()["token"]}
    unused, used = (client.post(f"/api/v1/vms/{console_vm}/console", headers=boss).json() for _ in range(2))
    ended: list[int] = []
    with client.websocket_connect(used["url"]) as ws:
        assert rfb_login(WSStream(ws), used["password"]) == 0

        def until_closed() -> None:
            try:
                while True:
                    ws.receive_bytes()
            except WebSocketDisconnect as closed:
                ended.append(closed.code)
        watcher = threading.Thread(target=until_closed, daemon=True)
        watcher.start()
        assert api_client.patch("/api/v1/users/boss", json={"disabled": True}).status_code == 200
        watcher.join(15)
        assert ended, "the console of a disabled user is still open"
    # A ticket issued before the revocation opens nothing after it.
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(unused["url"]) as ws:
        ws.receive_bytes()
    assert closed.value.code == 1008
