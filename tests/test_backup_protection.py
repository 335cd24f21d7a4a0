"""Protecting a backup (never pruned, not deleted while protected) through the API, the local and the
remote CLI: the answer carries the backup's new state, the store's `protected` mark is the truth
and the catalog follows it, a prune keeps the protected backup, and roles and visibility apply."""
from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import Cli, Served, login
from cli_helpers import served as served
from conftest import TEST_PASSWORD
from fastapi.testclient import TestClient
from job_helpers import job_result

from appliance.access.roles import Role
from appliance.backups.records import BackupRecord, BackupStatus
from appliance.context import Appliance
from appliance.process import claim
from appliance.server.app import server_app
from dedup import Store, is_protected, protect


def user_client(appliance: Appliance, name: str, role: Role) -> TestClient:
    appliance.users.create(name, TEST_PASSWORD, role)
    client = TestClient(server_app(appliance))
    answer = client.post("/api/v1/auth/login", json={"username": name, "password": TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return client


def backed_up(client: TestClient, vm: str) -> str:
    """The id of a full backup of `vm` (stopped: its image is read directly) made as `client`."""
    return job_result(client, client.post(f"/api/v1/vms/{vm}/backups", json={"full": True}), timeout=120)["backup_id"]


def marked(appliance: Appliance, backup_id: str) -> bool:
    """What the store says: the truth prune and delete go by."""
    return is_protected(appliance.store, appliance.store.get_backup(backup_id))


@pytest.fixture
def alice(appliance: Appliance) -> TestClient:
    client = user_client(appliance, "alice", Role.OPERATOR)
    assert client.post("/api/v1/vms", json={"name": "a1", "disks": ["8M"]}).status_code == 201
    return client


def test_protect_answers_the_new_state_and_a_prune_keeps_the_backup(appliance: Appliance, alice: TestClient,
                                                                     api_client: TestClient):
    old, new = backed_up(alice, "a1"), backed_up(alice, "a1")
    r = alice.put(f"/api/v1/backups/{old}/protection")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == old and r.json()["protected"] is True and r.json()["status"] == "ok"
    assert marked(appliance, old) and not marked(appliance, new)
    assert alice.put(f"/api/v1/backups/{old}/protection").json()["protected"] is True   # asked again: the same
    listed = {b["id"]: b["protected"] for b in alice.get("/api/v1/backups", params={"vm": "a1"}).json()}
    assert listed == {old: True, new: False}
    only = alice.get("/api/v1/backups", params={"filter": "protected:eq:true"}).json()
    assert [b["id"] for b in only] == [old]

    # Deleting it is refused while it is protected; a prune keeping one backup keeps both.
    r = alice.delete(f"/api/v1/backups/{old}")
    assert r.status_code == 409 and "unprotect it first" in r.json()["error"]["message"]
    report = job_result(api_client, api_client.post("/api/v1/store/prune", json={"vm": "a1", "keep_last": 1}))
    assert {d["backup_id"]: (d["keep"], d["reasons"]) for d in report["decisions"]} == {
        old: (True, ["protected"]), new: (True, ["keep-last 1"])}
    assert {m.backup_id for m in appliance.store.list_backups("a1")} == {old, new}

    # Unprotected, the same prune removes it.
    r = alice.delete(f"/api/v1/backups/{old}/protection")
    assert r.status_code == 200 and r.json()["protected"] is False and not marked(appliance, old)
    report = job_result(api_client, api_client.post("/api/v1/store/prune", json={"vm": "a1", "keep_last": 1}))
    assert report["removed"] == [old]
    assert alice.get(f"/api/v1/backups/{old}").json()["status"] == "pruned"
    assert [m.backup_id for m in appliance.store.list_backups("a1")] == [new]


def test_viewers_may_not_and_another_operators_backup_is_not_found(appliance: Appliance, alice: TestClient):
    backup = backed_up(alice, "a1")
    viewer = user_client(appliance, "vic", Role.VIEWER)
    bob = user_client(appliance, "bob", Role.OPERATOR)
    for method in ("PUT", "DELETE"):
        r = viewer.request(method, f"/api/v1/backups/{backup}/protection")
        assert r.status_code == 403 and r.json()["error"]["code"] == "ForbiddenError", r.text
        r = bob.request(method, f"/api/v1/backups/{backup}/protection")
        assert r.status_code == 404 and r.json()["error"]["code"] == "NotFoundError", r.text
        assert alice.request(method, "/api/v1/backups/nope/protection").status_code == 404
    assert not marked(appliance, backup)
    assert alice.get(f"/api/v1/backups/{backup}").json()["protected"] is False


def test_a_running_or_failed_backup_is_refused_and_nothing_changes(appliance: Appliance, alice: TestClient):
    with appliance.catalog.begin() as s:
        s.add(BackupRecord(id="20261206T000000Z-run", vm_name="a1", store="x", kind="full",
                           status=BackupStatus.RUNNING, **claim()))
        s.add(BackupRecord(id="20261206T000001Z-bad", vm_name="a1", store="x", kind="full",
                           status=BackupStatus.FAILED, error="the disk could not be read"))
    r = alice.put("/api/v1/backups/20261206T000000Z-run/protection")
    assert r.status_code == 409
    assert r.json()["error"]["message"] == "backup 20261206T000000Z-run is still running: protect it once it is done"
    r = alice.delete("/api/v1/backups/20261206T000001Z-bad/protection")
    assert r.status_code == 409
    assert r.json()["error"]["message"] == "backup 20261206T000001Z-bad failed: the store holds nothing of it to unprotect"
    assert not any(b["protected"] for b in alice.get("/api/v1/backups").json())
    assert not (appliance.store.path / "backups" / "a1").exists()


def test_a_mark_set_in_the_store_alone_reaches_the_catalog_at_the_next_prune(appliance: Appliance,
                                                                            alice: TestClient,
                                                                            api_client: TestClient):
    """The store is the truth: a mark set there behind the appliance's back (dedup itself) shows
    in the list once a prune of the VM read it, a dry run too."""
    backup = backed_up(alice, "a1")
    protect(appliance.store, backup)
    assert alice.get(f"/api/v1/backups/{backup}").json()["protected"] is False
    job_result(api_client, api_client.post("/api/v1/store/prune", json={"vm": "a1", "keep_last": 1, "dry_run": True}))
    assert alice.get(f"/api/v1/backups/{backup}").json()["protected"] is True


# -- the CLI -------------------------------------------------------------------------------------------

def test_the_cli_protects_here_and_through_the_api_alike(served: Served, tmp_path: Path):
    here = Cli(CAIRN_DATA_DIR=str(served.data_dir))
    there = Cli(XDG_CONFIG_HOME=str(tmp_path / "ops"))
    viewer = Cli(XDG_CONFIG_HOME=str(tmp_path / "eve"))
    login(there, served, "ops")
    login(viewer, served, "eve")
    here("vm", "create", "web", "--disk", "8M")
    first, second = (here.json("backup", "create", "web", "--full")["backup_id"] for _ in range(2))

    protected_here = here.json("backup", "protect", first)
    protected_there = there.json("backup", "protect", second)
    assert protected_here["protected"] is protected_there["protected"] is True
    assert protected_here.keys() == protected_there.keys()
    assert there.json("backup", "list") == here.json("backup", "list")
    assert "no prune removes it" in here("backup", "protect", first).stdout
    table = there("backup", "list").stdout
    assert {f"{first}: protected: no prune removes it", f"{second}: protected: no prune removes it"} <= set(
        table.splitlines())   # under the table, which stays within 80 columns (test_cli_tour)

    store = Store.open(served.data_dir / "store")
    assert all(is_protected(store, m) for m in store.list_backups("web"))
    assert here.json("backup", "unprotect", second)["protected"] is False
    assert "no longer protected" in there("backup", "unprotect", first).stdout
    assert not any(is_protected(store, m) for m in store.list_backups("web"))

    # Refused, with the reason and the exit status of each: a viewer (5), a backup that is not there (1).
    assert "eve is a viewer" in viewer("backup", "protect", first, code=5).stderr
    assert "no backup nope" in there("backup", "protect", "nope", code=1).stderr
    assert "no backup nope" in here("backup", "unprotect", "nope", code=1).stderr
    # The store command it replaces is gone: one way to protect a backup.
    assert "No such command 'protect'" in here("store", "protect", first, code=2).stderr
