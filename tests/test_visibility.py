"""Per-user and group visibility of VMs (appliance/access/visibility.py): a user sees their own VMs, their
groups' and the shared (ownerless) ones, with their backups, jobs and events; the rest is not found."""
from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from catalog_backends import catalog_url  # noqa: F401  (fixture)
from conftest import TEST_PASSWORD
from fastapi.testclient import TestClient
from job_helpers import job_result

from appliance.access.roles import Role
from appliance.api.app import create_app
from appliance.backups.records import BackupRecord
from appliance.context import Appliance
from dedup import Store

DISK = 8 << 20


@pytest.fixture
def appliance(appliance_data_dir: Path, catalog_url: str | None) -> Appliance:  # noqa: F811
    """On SQLite, and on PostgreSQL when $CAIRN_TEST_POSTGRES_URL is set."""
    Store.init(appliance_data_dir / "store")
    return Appliance.open(str(appliance_data_dir), catalog_url)


def user_client(appliance: Appliance, name: str, role: Role, groups: list[str] = ()) -> TestClient:
    """A client signed in as a new user `name` with this role and these groups."""
    appliance.users.create(name, TEST_PASSWORD, role)
    if groups:
        appliance.users.update(name, groups=list(groups))
    client = TestClient(create_app(appliance))
    answer = client.post("/api/v1/auth/login", json={"username": name, "password": TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return client


def backed_up(client: TestClient, vm: str) -> tuple[str, str]:
    """(job id, backup id) of a full backup of `vm` started and followed by `client`."""
    r = client.post(f"/api/v1/vms/{vm}/backups", json={"full": True})
    return r.json()["id"], job_result(client, r, timeout=60)["backup_id"]


def names(answer) -> list[str]:
    assert answer.status_code == 200, answer.text
    return sorted(v["name"] for v in answer.json())


def not_found(answer) -> None:
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "NotFoundError"


@pytest.fixture
def alice(appliance: Appliance) -> TestClient:
    return user_client(appliance, "alice", Role.OPERATOR, ["red"])


@pytest.fixture
def bob(appliance: Appliance) -> TestClient:
    return user_client(appliance, "bob", Role.OPERATOR, ["blue"])


@pytest.fixture
def two_vms(appliance: Appliance, alice: TestClient, bob: TestClient) -> None:
    """alice made `a1`, bob made `b1` through the API; `shared` comes from the local CLI (no owner)."""
    assert alice.post("/api/v1/vms", json={"name": "a1", "disks": ["8M"]}).status_code == 201
    assert bob.post("/api/v1/vms", json={"name": "b1", "disks": ["8M"]}).status_code == 201
    appliance.vms.create("shared", [DISK])


def test_each_operator_sees_only_their_own_vm_and_the_shared_one(
        two_vms: None, alice: TestClient, bob: TestClient, api_client: TestClient):
    assert names(alice.get("/api/v1/vms")) == ["a1", "shared"]
    assert names(bob.get("/api/v1/vms")) == ["b1", "shared"]
    assert names(api_client.get("/api/v1/vms")) == ["a1", "b1", "shared"]
    assert alice.get("/api/v1/vms/a1").status_code == 200
    assert alice.get("/api/v1/vms/shared").status_code == 200
    assert alice.get("/api/v1/vms/a1/access").json() == {"vm": "a1", "owner": "alice", "group": None}
    assert alice.get("/api/v1/vms/shared/access").json() == {"vm": "shared", "owner": None, "group": None}
    # bob's VM is as missing to alice as one that does not exist: same status, same error.
    hidden, missing = alice.get("/api/v1/vms/b1"), alice.get("/api/v1/vms/zz")
    not_found(hidden)
    assert hidden.json()["error"]["message"] == missing.json()["error"]["message"].replace("zz", "b1")
    for method, path, body in (("POST", "/api/v1/vms/b1/start", None), ("PATCH", "/api/v1/vms/b1", {"vcpus": 2}),
                               ("DELETE", "/api/v1/vms/b1", None), ("GET", "/api/v1/vms/b1/snapshots", None),
                               ("POST", "/api/v1/vms/b1/snapshots", {}), ("GET", "/api/v1/vms/b1/tags", None),
                               ("PUT", "/api/v1/vms/b1/tags", ["web"]), ("POST", "/api/v1/vms/b1/console", None),
                               ("POST", "/api/v1/vms/b1/backups", {}), ("GET", "/api/v1/vms/b1/access", None),
                               ("POST", "/api/v1/vms/b1/clones", {"names": ["mine"]})):
        not_found(alice.request(method, path, json=body))
    not_found(alice.post("/api/v1/jobs", json={"kind": "backup", "params": {"vm": "b1"}}))
    # Nor can alice take the name of a VM she does not see.
    assert alice.post("/api/v1/vms", json={"name": "b1", "disks": ["8M"]}).status_code == 409
    assert alice.put("/api/v1/vms/a1/access", json={"owner": "bob"}).status_code == 403
    # What alice makes from a VM she sees is hers.
    job_result(alice, alice.post("/api/v1/vms/shared/clones", json={"names": ["a2"]}))
    assert names(alice.get("/api/v1/vms")) == ["a1", "a2", "shared"]
    assert names(bob.get("/api/v1/vms")) == ["b1", "shared"]


def test_backups_jobs_and_events_follow_their_vm(two_vms: None, alice: TestClient, bob: TestClient,
                                                  api_client: TestClient):
    a_job, a_backup = backed_up(alice, "a1")
    b_job, b_backup = backed_up(bob, "b1")
    s_job, s_backup = backed_up(bob, "shared")

    def backups(client: TestClient, **params: str) -> set[str]:
        return {b["id"] for b in client.get("/api/v1/backups", params=params).json()}

    assert backups(alice) == {a_backup, s_backup}
    assert backups(bob) == {b_backup, s_backup}
    assert backups(api_client) == {a_backup, b_backup, s_backup}
    assert backups(alice, vm="b1") == set()
    assert alice.get(f"/api/v1/backups/{a_backup}").status_code == 200
    assert alice.get(f"/api/v1/backups/{s_backup}").status_code == 200
    not_found(alice.get(f"/api/v1/backups/{b_backup}"))
    not_found(alice.get(f"/api/v1/backups/{b_backup}/disks/vda/files"))
    not_found(alice.get(f"/api/v1/backups/{b_backup}/boot-tests"))
    not_found(alice.delete(f"/api/v1/backups/{b_backup}", params={"dry_run": True}))
    not_found(alice.post(f"/api/v1/backups/{b_backup}/restore", json={"mode": "new", "name": "stolen"}))
    assert bob.get(f"/api/v1/backups/{b_backup}").status_code == 200
    restoring = alice.post(f"/api/v1/backups/{a_backup}/restore", json={"mode": "new", "name": "a1-copy"})
    job_result(alice, restoring)
    restore_job = restoring.json()["id"]   # a job on vm:a1-copy, which is alice's
    assert alice.get("/api/v1/vms/a1-copy/access").json()["owner"] == "alice"
    not_found(bob.get("/api/v1/vms/a1-copy"))

    def jobs(client: TestClient) -> set[str]:
        return {j["id"] for j in client.get("/api/v1/jobs").json()}

    assert jobs(alice) == {a_job, s_job, restore_job}
    assert jobs(bob) == {b_job, s_job}
    assert jobs(api_client) == {a_job, b_job, s_job, restore_job}
    r = alice.get("/api/v1/jobs", params={"filter": "kind:eq:backup"})
    assert r.headers["X-Total-Count"] == "2"
    not_found(alice.get(f"/api/v1/jobs/{b_job}"))
    not_found(alice.post(f"/api/v1/jobs/{b_job}/cancel"))
    not_found(alice.get("/api/v1/events/stream", params={"job": b_job}))

    def resources(client: TestClient) -> set[str]:
        return {e["resource"] for e in client.get("/api/v1/events", params={"limit": 1000}).json()}

    assert {"vm:a1", "vm:shared"} <= resources(alice) and "vm:b1" not in resources(alice)
    assert {"vm:a1", "vm:b1", "vm:shared"} <= resources(api_client)

    # A deleted VM's backups stay as private as it was, and its name is not alice's to take.
    assert bob.delete("/api/v1/vms/b1").status_code == 200
    assert backups(alice) == {a_backup, s_backup} and b_backup in backups(bob)
    not_found(alice.get(f"/api/v1/backups/{b_backup}"))
    assert alice.post("/api/v1/vms", json={"name": "b1", "disks": ["8M"]}).status_code == 409


def test_pages_hold_only_what_the_caller_sees(appliance: Appliance, two_vms: None, alice: TestClient,
                                             api_client: TestClient):
    """Visibility narrows the query itself: a page is full of visible items, the total counts only those."""
    with appliance.catalog.begin() as s:
        s.add_all(BackupRecord(id=f"{vm}-{n}", vm_name=vm, store="s", kind="full", status="ok", notes=[], damage=[],
                               started_at=datetime(2026, 1, 1, n, tzinfo=UTC))
                  for n in range(3) for vm in ("a1", "b1", "shared"))

    def page(client: TestClient, path: str, **params: object) -> tuple[list[str], str]:
        r = client.get(path, params=params)
        assert r.status_code == 200, r.text
        return [item.get("name", item.get("id")) for item in r.json()], r.headers["X-Total-Count"]

    assert page(alice, "/api/v1/vms", limit=1) == (["a1"], "2")
    assert page(alice, "/api/v1/vms", limit=1, offset=1) == (["shared"], "2")
    assert page(alice, "/api/v1/vms", filter="name:eq:b1") == ([], "0")
    assert page(api_client, "/api/v1/vms", limit=1, offset=1) == (["b1"], "3")
    assert page(alice, "/api/v1/backups", limit=2, offset=2) == (["a1-1", "shared-1"], "6")
    assert page(alice, "/api/v1/backups", filter="vm_name:eq:b1") == ([], "0")
    assert page(alice, "/api/v1/backups", latest=True, sort="vm_name") == (["a1-2", "shared-2"], "2")
    assert page(api_client, "/api/v1/backups", latest=True, sort="vm_name")[1] == "3"


def test_groups_viewers_and_the_admin_reassigning(appliance: Appliance, two_vms: None, alice: TestClient,
                                                 bob: TestClient, api_client: TestClient):
    carol = user_client(appliance, "carol", Role.OPERATOR)
    viewer = user_client(appliance, "dave", Role.VIEWER)
    assert names(carol.get("/api/v1/vms")) == ["shared"]
    _, backup = backed_up(alice, "a1")

    # The admin shares a1 with group red, and puts carol and the viewer dave in it.
    r = api_client.put("/api/v1/vms/a1/access", json={"owner": "alice", "group": "red"})
    assert r.status_code == 200 and r.json() == {"vm": "a1", "owner": "alice", "group": "red"}
    for user in ("carol", "dave"):
        r = api_client.patch(f"/api/v1/users/{user}", json={"groups": ["red"]})
        assert r.status_code == 200 and r.json()["groups"] == ["red"]
    assert names(carol.get("/api/v1/vms")) == ["a1", "shared"]
    assert carol.patch("/api/v1/vms/a1", json={"vcpus": 2}).status_code == 200
    assert names(viewer.get("/api/v1/vms")) == ["a1", "shared"]
    assert viewer.get("/api/v1/vms/a1").status_code == 200
    assert viewer.get(f"/api/v1/backups/{backup}").status_code == 200
    assert viewer.get("/api/v1/vms/a1/snapshots").status_code == 200
    # ... reads, and changes nothing.
    assert viewer.post("/api/v1/vms/a1/backups", json={}).status_code == 403
    assert viewer.post("/api/v1/vms/a1/stop", json={"force": True}).status_code == 403
    assert viewer.put("/api/v1/vms/a1/tags", json=["x"]).status_code == 403
    not_found(bob.get("/api/v1/vms/a1"))

    # The admin gives a1 to bob, with no group: alice and red lose it, bob gains it.
    assert api_client.put("/api/v1/vms/a1/access", json={"owner": "bob"}).json()["group"] is None
    assert names(bob.get("/api/v1/vms")) == ["a1", "b1", "shared"]
    assert bob.get(f"/api/v1/backups/{backup}").status_code == 200
    for client in (alice, carol, viewer):
        assert names(client.get("/api/v1/vms")) == ["shared"]
        not_found(client.get(f"/api/v1/backups/{backup}"))
    # No owner: shared with everyone.
    assert api_client.put("/api/v1/vms/a1/access", json={}).json() == {"vm": "a1", "owner": None, "group": None}
    assert names(alice.get("/api/v1/vms")) == ["a1", "shared"]
    # Only existing users own VMs; only VMs have owners; only an admin says who.
    not_found(api_client.put("/api/v1/vms/a1/access", json={"owner": "nobody"}))
    not_found(api_client.put("/api/v1/vms/zz/access", json={"owner": "bob"}))
    assert api_client.put("/api/v1/vms/a1/access", json={"group": "Bad Group"}).status_code == 400
    assert api_client.patch("/api/v1/users/carol", json={"groups": ["Bad Group"]}).status_code == 400
    assert bob.put("/api/v1/vms/b1/access", json={"owner": "alice"}).status_code == 403
    assert names(api_client.get("/api/v1/vms")) == ["a1", "b1", "shared"]


def test_the_event_stream_leaves_out_what_the_caller_does_not_see(appliance: Appliance, two_vms: None,
                                                                  alice: TestClient):
    got: list[dict] = []

    def follow() -> None:
        with alice.stream("GET", "/api/v1/events/stream") as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    got.append(json.loads(line.removeprefix("data:")))
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    deadline = time.monotonic() + 20
    while follower.is_alive() and time.monotonic() < deadline:   # until the stream listens
        appliance.jobs.events.publish({"kind": "test.hidden", "resource": "vm:b1", "job_id": None})
        appliance.jobs.events.publish({"kind": "test.seen", "resource": "vm:a1", "job_id": None})
        time.sleep(0.2)
    follower.join(10)
    assert [e["kind"] for e in got] == ["test.seen"]
