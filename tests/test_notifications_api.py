"""Notifications configured through the CLI and the API, and run by a real `cairn serve`: its
background loop raises the alarm, delivers it and its resolution; a test message on demand;
the admin's area refused to others; a bad rule parameter answered with what the rule takes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from notification_receivers import SECRET, free_port, signature_ok, webhook
from test_auth_serve import serving

from appliance.context import Appliance

CAIRN = str(Path(sys.executable).parent / "cairn")


def cli(data_dir: Path, *args: str) -> str:
    done = subprocess.run([CAIRN, "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(what: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.2)


def test_configured_by_cli_and_api_and_run_by_cairn_serve(appliance_data_dir: Path, tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    with webhook() as hook:
        cli(appliance_data_dir, "notify", "target", "add-webhook", "ops", hook.url, "--secret-file", str(secret))
        cli(appliance_data_dir, "notify", "target", "test", "ops")
        [test] = hook.received
        assert test["json"]["event"] == "test"
        assert signature_ok(SECRET, test["headers"]["X-Cairn-Signature"], test["body"])
        cli(appliance_data_dir, "notify", "rule", "set", "store.fill", "--param", "threshold_percent=0.0001")
        cli(appliance_data_dir, "notify", "quiet-hours", "set", "22:00", "07:00", "--timezone", "Europe/Berlin")
        assert json.loads(cli(appliance_data_dir, "notify", "quiet-hours", "show", "--json"))["end"] == "07:00:00"
        cli(appliance_data_dir, "notify", "quiet-hours", "clear")

        with serving(appliance_data_dir, "--insecure-http") as (port, _):
            api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            password = (appliance_data_dir / "initial-admin-password").read_text().strip()
            token = api.post("/api/v1/auth/login", json={"username": "admin", "password": password}).json()["token"]
            api.headers["Authorization"] = f"Bearer {token}"

            wait_for(lambda: len(hook.messages("store.fill")) == 1)   # the server's own loop found it
            [target] = api.get("/api/v1/notifications/targets").json()
            assert target["has_secret"] and SECRET not in json.dumps(target)
            [alarm] = api.get("/api/v1/alarms", params={"firing": True}).json()
            assert alarm["rule"] == "store.fill" and alarm["firing"]
            assert 'cairn_alarms_firing{rule="store.fill",severity="warning"} 1.0' in api.get("/metrics").text

            changed = api.patch("/api/v1/notifications/rules/store.fill", json={"params": {"threshold_percent": 100}})
            assert changed.status_code == 200 and changed.json()["params"]["threshold_percent"] == 100
            wait_for(lambda: len(hook.messages("store.fill")) == 2)
            assert [m["event"] for m in hook.messages("store.fill")] == ["firing", "resolved"]

            down = {"kind": "webhook", "name": "down", "url": f"http://127.0.0.1:{free_port()}/x"}
            assert api.post("/api/v1/notifications/targets", json=down).status_code == 201
            refused = api.post("/api/v1/notifications/targets/down/test")
            assert refused.status_code == 502 and "not reached" in refused.json()["error"]["message"]
            assert api.post("/api/v1/notifications/targets/ops/test").json()["delivered"]

    [resolved] = json.loads(cli(appliance_data_dir, "notify", "alarms", "--json"))
    assert resolved["resolved_at"] and not resolved["firing"]
    states = [m["state"] for m in json.loads(cli(appliance_data_dir, "notify", "outbox", "--json"))]
    assert states == ["delivered", "delivered"]


def test_notifications_are_the_admins_and_answers_say_what_is_wrong(appliance: Appliance, api_client: TestClient,
                                                                   viewer_client: TestClient,
                                                                   operator_client: TestClient):
    for client in (viewer_client, operator_client):
        assert client.get("/api/v1/notifications/targets").status_code == 403
        assert client.post("/api/v1/notifications/targets",
                           json={"kind": "webhook", "name": "x", "url": "http://127.0.0.1:1/"}).status_code == 403
        assert client.get("/api/v1/alarms").status_code == 200
    bad = api_client.patch("/api/v1/notifications/rules/store.fill", json={"params": {"threshold": 80}})
    assert bad.status_code == 422 and "threshold_percent" in bad.json()["error"]["message"]
    assert api_client.patch("/api/v1/notifications/rules/nope", json={}).status_code == 404
    unknown = api_client.patch("/api/v1/notifications/rules/store.fill", json={"targets": ["ghost"]})
    assert unknown.status_code == 404 and "add it first" in unknown.json()["error"]["message"]
    weak = api_client.post("/api/v1/notifications/targets",
                           json={"kind": "webhook", "name": "w", "url": "http://127.0.0.1:1/", "secret": "short"})
    assert weak.status_code == 422
    mail = {"kind": "email", "name": "m", "host": "127.0.0.1", "sender": "c@example.org",
            "recipients": ["a@example.org"], "password": "pw"}
    assert api_client.post("/api/v1/notifications/targets", json=mail).status_code == 201
    assert api_client.post("/api/v1/notifications/targets", json=mail).status_code == 409
    assert api_client.get("/api/v1/notifications/targets/m").json()["has_secret"]
    hours = {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
    assert api_client.put("/api/v1/notifications/quiet-hours", json=hours).status_code == 200
    assert api_client.get("/api/v1/notifications/quiet-hours").json()["timezone"] == "Europe/Berlin"
    assert api_client.delete("/api/v1/notifications/quiet-hours").status_code == 204
    assert api_client.get("/api/v1/notifications/quiet-hours").json() is None
    rules = {r["kind"]: r for r in api_client.get("/api/v1/notifications/rules").json()}
    assert set(rules) == {"backup.failed", "backup.missed", "verify.damage", "store.fill", "boottest.failed",
                          "ha.gave_up", "host.unreachable", "certificate.expiry"}
