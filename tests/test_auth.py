"""Users, sessions, TOTP, access keys, roles and the audit log through the web API, on SQLite and PostgreSQL."""
from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from catalog_backends import catalog_url  # noqa: F401  (fixture)
from conftest import TEST_PASSWORD
from fastapi.testclient import TestClient
from job_helpers import job_done
from sqlalchemy import select, update

from appliance.access.records import AuditRecord, SessionRecord, UserRecord
from appliance.access.roles import PUBLIC, Role
from appliance.api.app import create_app
from appliance.catalog.base import utcnow
from appliance.context import Appliance


@pytest.fixture
def appliance(appliance_data_dir: Path, catalog_url: str | None) -> Appliance:  # noqa: F811
    return Appliance.open(str(appliance_data_dir), catalog_url)


@pytest.fixture
def anonymous(appliance: Appliance) -> TestClient:
    return TestClient(create_app(appliance))


def login(client: TestClient, name: str, password: str = TEST_PASSWORD, totp: str | None = None):
    return client.post("/api/v1/auth/login", json={"username": name, "password": password, "totp": totp})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_but_the_public_ones_refuses_anonymous_access(anonymous: TestClient):
    paths = anonymous.get("/api/v1/openapi.json").json()["paths"]
    assert len(paths) > 10
    for template, operations in paths.items():
        path = re.sub(r"\{[^}]+\}", "x", template)
        for method in operations:
            if (method.upper(), template) in PUBLIC:
                continue
            r = anonymous.request(method.upper(), path)
            assert r.status_code == 401, (method, template, r.text)
            assert r.json()["error"]["code"] == "UnauthorizedError"
            assert r.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/api/v1/health").status_code == 200


def test_bad_logins_are_refused_and_audited(api_client: TestClient, anonymous: TestClient):
    for name, password in (("test-admin", "wrong password"), ("nobody", "whatever1")):
        r = login(anonymous, name, password)
        assert r.status_code == 401 and r.json()["error"]["message"] == "wrong user name or password"
    r = anonymous.post("/api/v1/auth/login", json={"username": "test-admin"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "ValidationError"
    r = anonymous.get("/api/v1/vms", headers=bearer("cs_made-up"))
    assert r.status_code == 401 and "sign in again" in r.json()["error"]["message"]
    r = anonymous.get("/api/v1/vms", headers=bearer("not-a-cairn-token"))
    assert r.status_code == 401

    lines = api_client.get("/api/v1/audit", params={"result": "denied"}).json()
    assert [(x["actor"], x["path"], x["status"]) for x in lines[:2]] == [
        ("nobody", "/api/v1/auth/login", 401), ("test-admin", "/api/v1/auth/login", 401)]
    assert "UnauthorizedError" in lines[0]["error"]


def test_password_guessing_is_throttled(api_client: TestClient, anonymous: TestClient, appliance: Appliance):
    appliance.users.create("other", TEST_PASSWORD, Role.VIEWER)
    for _ in range(5):
        assert login(anonymous, "test-admin", "a guess").status_code == 401
    r = login(anonymous, "test-admin")                                      # even the right password waits
    assert r.status_code == 429 and "try again in" in r.json()["error"]["message"]
    assert login(anonymous, "other").status_code == 200                     # per user (and address)
    assert api_client.get("/api/v1/audit", params={"limit": 2}).json()[1]["result"] == "denied"
    later = utcnow() + timedelta(minutes=6)
    appliance.auth.throttle.clock = lambda: later
    assert login(anonymous, "test-admin").status_code == 200


def test_sessions_expire_and_end_at_logout(appliance: Appliance, api_client: TestClient, anonymous: TestClient):
    token = login(anonymous, "test-admin").json()["token"]
    assert anonymous.get("/api/v1/auth/me", headers=bearer(token)).json()["name"] == "test-admin"
    with appliance.catalog.begin() as s:
        s.execute(update(SessionRecord).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = anonymous.get("/api/v1/auth/me", headers=bearer(token))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]

    token = login(anonymous, "test-admin").json()["token"]
    assert anonymous.delete("/api/v1/auth/session", headers=bearer(token)).status_code == 204
    assert anonymous.get("/api/v1/auth/me", headers=bearer(token)).status_code == 401


def test_roles(api_client: TestClient, operator_client: TestClient, viewer_client: TestClient,
               appliance: Appliance):
    appliance.vms.create("v1", [32 << 20])
    # A viewer reads, and changes nothing.
    assert [v["name"] for v in viewer_client.get("/api/v1/vms").json()] == ["v1"]
    r = viewer_client.post("/api/v1/vms/v1/backups", json={"full": True})
    assert r.status_code == 403 and r.json()["error"]["code"] == "ForbiddenError"
    assert "needs an operator" in r.json()["error"]["message"]
    assert viewer_client.delete("/api/v1/vms/v1/snapshots/s1").status_code == 403
    assert viewer_client.get("/api/v1/users").status_code == 403
    assert viewer_client.get("/api/v1/audit").status_code == 403
    assert appliance.backups.list("v1") == []
    # An operator operates, and does not administer.
    assert operator_client.post("/api/v1/vms/ghost/backups", json={}).status_code == 404
    assert operator_client.post("/api/v1/users", json={"name": "eve", "password": "x" * 12}).status_code == 403
    assert operator_client.post("/api/v1/store/gc", json={"dry_run": True}).status_code == 403
    assert operator_client.get("/api/v1/store/stats").status_code == 200
    # Everyone manages their own account.
    assert viewer_client.get("/api/v1/auth/me").json()["role"] == "viewer"
    assert viewer_client.post("/api/v1/tokens", json={"name": "grafana"}).status_code == 201
    assert job_done(api_client, api_client.post("/api/v1/store/gc", json={"dry_run": True}))["state"] == "succeeded"


def test_users_resource(api_client: TestClient, anonymous: TestClient, appliance: Appliance):
    r = api_client.post("/api/v1/users", json={"name": "alice", "password": "alice-secret", "role": "operator"})
    assert r.status_code == 201 and r.json()["role"] == "operator" and "password" not in r.text
    assert api_client.post("/api/v1/users", json={"name": "alice", "password": "another-one"}).status_code == 409
    r = api_client.post("/api/v1/users", json={"name": "Bad Name", "password": "long-enough"})
    assert r.status_code == 400 and "invalid user name" in r.json()["error"]["message"]
    r = api_client.post("/api/v1/users", json={"name": "bob", "password": "short"})
    assert r.status_code == 400 and "at least 8" in r.json()["error"]["message"]
    assert api_client.post("/api/v1/users", json={"name": "bob", "password": "long-enough", "role": "god"}
                           ).status_code == 422
    assert [u["name"] for u in api_client.get("/api/v1/users").json()] == ["alice", "test-admin"]
    with appliance.catalog() as s:
        stored = s.scalar(select(UserRecord.password_hash).where(UserRecord.name == "alice"))
    assert stored.startswith("scrypt$") and "alice-secret" not in stored

    alice = login(anonymous, "alice", "alice-secret").json()["token"]
    assert api_client.patch("/api/v1/users/alice", json={"disabled": True}).json()["disabled"] is True
    assert anonymous.get("/api/v1/auth/me", headers=bearer(alice)).status_code == 401   # sessions ended
    assert login(anonymous, "alice", "alice-secret").status_code == 401

    # The last admin stays.
    r = api_client.patch("/api/v1/users/test-admin", json={"role": "viewer"})
    assert r.status_code == 409 and "last enabled admin" in r.json()["error"]["message"]
    assert api_client.delete("/api/v1/users/test-admin").status_code == 409
    assert api_client.delete("/api/v1/users/alice").status_code == 204
    assert api_client.get("/api/v1/users/alice").status_code == 404


def test_password_change(api_client: TestClient, anonymous: TestClient):
    body = {"current": "not it", "new": "a new password"}
    assert api_client.post("/api/v1/auth/password", json=body).status_code == 403
    assert api_client.post("/api/v1/auth/password", json={**body, "current": TEST_PASSWORD}).status_code == 204
    assert login(anonymous, "test-admin").status_code == 401
    assert login(anonymous, "test-admin", "a new password").status_code == 200


def test_totp_enrolment_and_login(api_client: TestClient, anonymous: TestClient, appliance: Appliance):
    enrolment = api_client.post("/api/v1/auth/totp").json()
    secret = enrolment["secret"]
    assert enrolment["uri"].startswith("otpauth://totp/Cairn:test-admin?secret=" + secret)
    with appliance.catalog() as s:
        sealed = s.scalar(select(UserRecord.totp_secret).where(UserRecord.name == "test-admin"))
    assert secret not in sealed and appliance.secrets.unseal_text(sealed) == secret   # encrypted at rest

    totp = pyotp.TOTP(secret)
    r = api_client.post("/api/v1/auth/totp/confirm",
                        json={"code": next(c for c in ("000000", "111111") if c != totp.now())})
    assert r.status_code == 403 and "wrong TOTP code" in r.json()["error"]["message"]
    assert login(anonymous, "test-admin").status_code == 200                 # not in force before confirming
    assert api_client.post("/api/v1/auth/totp/confirm", json={"code": totp.now()}).json()["totp_enabled"]

    r = login(anonymous, "test-admin")
    assert r.status_code == 401 and r.json()["error"]["code"] == "TotpRequiredError"
    assert login(anonymous, "test-admin", totp="12345x").status_code == 422
    near = {totp.at(time.time() + drift) for drift in (-60, -30, 0, 30, 60)}
    wrong = next(code for code in ("000000", "111111", "222222", "333333", "444444", "555555") if code not in near)
    assert login(anonymous, "test-admin", totp=wrong).status_code == 401
    later = totp.at(time.time() + 30)                                       # the next step: not yet used
    assert login(anonymous, "test-admin", totp=later).status_code == 200
    r = login(anonymous, "test-admin", totp=later)
    assert r.status_code == 401 and "already used" in r.json()["error"]["message"]
    assert login(anonymous, "test-admin", "wrong password", totp=totp.now()).status_code == 401

    assert api_client.post("/api/v1/auth/totp").status_code == 409          # reset by an admin only
    assert api_client.patch("/api/v1/users/test-admin", json={"reset_totp": True}).json()["totp_enabled"] is False
    assert login(anonymous, "test-admin").status_code == 200


def test_access_keys(api_client: TestClient, viewer_client: TestClient, anonymous: TestClient,
                     appliance: Appliance):
    issued = viewer_client.post("/api/v1/tokens", json={"name": "monitoring"}).json()
    key_id, token = issued["id"], issued["token"]
    assert token.startswith(key_id + ".") and issued["owner"] == "test-viewer"
    assert anonymous.get("/api/v1/auth/me", headers=bearer(token)).json()["name"] == "test-viewer"
    assert anonymous.post("/api/v1/users", headers=bearer(token), json={}).status_code == 403  # the owner's role
    assert anonymous.get("/api/v1/vms", headers=bearer(key_id + ".wrong")).status_code == 401
    listed = viewer_client.get("/api/v1/tokens").json()
    assert [t["id"] for t in listed] == [key_id] and "token" not in listed[0] and listed[0]["last_used_at"]
    assert token.split(".", 1)[1] not in str(appliance.auth.list_keys(appliance.auth.authenticate(token)))

    # Another non-admin cannot see or revoke it; its owner or an admin can.
    mine = api_client.post("/api/v1/tokens", json={"name": "ci", "expires_in_days": 1}).json()
    assert [t["id"] for t in viewer_client.get("/api/v1/tokens").json()] == [key_id]
    assert {t["id"] for t in api_client.get("/api/v1/tokens").json()} == {key_id, mine["id"]}
    assert viewer_client.delete(f"/api/v1/tokens/{mine['id']}").status_code == 404
    revoked = viewer_client.delete(f"/api/v1/tokens/{key_id}").json()
    assert revoked["revoked_at"] is not None
    r = anonymous.get("/api/v1/vms", headers=bearer(token))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert anonymous.delete("/api/v1/auth/session", headers=bearer(mine["token"])).status_code == 400


def test_every_change_is_audited(api_client: TestClient, viewer_client: TestClient, appliance: Appliance):
    appliance.vms.create("v1", [32 << 20])
    api_client.post("/api/v1/users", json={"name": "carol", "password": "carol-secret"})
    viewer_client.post("/api/v1/vms/v1/backups", json={})
    api_client.post("/api/v1/vms/ghost/backups", json={})
    api_client.get("/api/v1/vms")                                             # reads are not changes
    lines = api_client.get("/api/v1/audit", params={"limit": 3}).json()
    assert [(x["actor"], x["method"], x["path"], x["status"], x["result"]) for x in lines] == [
        ("test-admin", "POST", "/api/v1/vms/ghost/backups", 404, "rejected"),
        ("test-viewer", "POST", "/api/v1/vms/v1/backups", 403, "denied"),
        ("test-admin", "POST", "/api/v1/users", 201, "ok"),
    ]
    assert lines[0]["credential"] == "session" and lines[0]["client"] and "no VM named ghost" in lines[0]["error"]
    with appliance.catalog() as s:
        assert all(r.method != "GET" for r in s.scalars(select(AuditRecord)))
    assert api_client.get("/api/v1/audit", params={"actor": "test-viewer"}).json()[0]["result"] == "denied"
    assert api_client.get("/api/v1/audit", params={"result": "maybe"}).status_code == 422


def test_routes_added_later_are_protected_and_audited(appliance: Appliance):
    app = create_app(appliance)

    @app.post("/api/v1/later")
    def later() -> None:
        raise RuntimeError("it broke")

    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/api/v1/later").status_code == 401
    appliance.users.create("viewer", TEST_PASSWORD, Role.VIEWER)
    appliance.users.create("operator", TEST_PASSWORD, Role.OPERATOR)
    viewer, operator = (login(client, name).json()["token"] for name in ("viewer", "operator"))
    assert client.post("/api/v1/later", headers=bearer(viewer)).status_code == 403
    r = client.post("/api/v1/later", headers=bearer(operator))
    assert r.status_code == 500 and r.json()["error"]["code"] == "InternalError"
    last = appliance.audit.list(limit=1)[0]
    assert (last.actor, last.path, last.status, last.result, last.error) == (
        "operator", "/api/v1/later", 500, "failed", "RuntimeError: it broke")


def test_unknown_route_has_the_usual_error_body(api_client: TestClient):
    r = api_client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NotFoundError"
    r = api_client.put("/api/v1/health")
    assert r.status_code == 405 and r.json()["error"]["code"] == "MethodNotAllowedError"
