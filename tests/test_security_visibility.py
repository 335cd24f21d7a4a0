"""Visibility reaches every list and every reference to a VM (appliance/visibility.py): scheduling
groups, store stats, network attachments and leases, policy previews, the recycle bin; and a VM's
owner is the user, not a name a new user could take."""
from __future__ import annotations

from fastapi.testclient import TestClient
from network_helpers import netns  # noqa: F401  (fixture)
from test_visibility import backed_up, user_client

from appliance.access.roles import Role
from appliance.context import Appliance

MANDATORY = {"policy": "vm-host-anti-affinity", "enforcement": "mandatory", "hosts": ["local"]}


def two_owners(appliance: Appliance) -> tuple[TestClient, TestClient, TestClient]:
    """alice (red) owns a1, bob (blue) owns b1; carol is a viewer in no group."""
    alice = user_client(appliance, "alice", Role.OPERATOR, ["red"])
    bob = user_client(appliance, "bob", Role.OPERATOR, ["blue"])
    carol = user_client(appliance, "carol", Role.VIEWER)
    assert alice.post("/api/v1/vms", json={"name": "a1", "disks": ["8M"]}).status_code == 201
    assert bob.post("/api/v1/vms", json={"name": "b1", "disks": ["8M"]}).status_code == 201
    return alice, bob, carol


def test_scheduling_groups_name_only_vms_their_author_sees(appliance: Appliance, api_client: TestClient):
    _alice, bob, carol = two_owners(appliance)
    # bob cannot keep alice's VM off the host, nor name it where every viewer would read it.
    r = bob.put("/api/v1/scheduling-groups/keep-off", json={**MANDATORY, "vms": ["a1"]})
    assert r.status_code == 404, r.text
    r = bob.put("/api/v1/scheduling-groups/keep-off", json={**MANDATORY, "vms": ["a1", "b1"]})
    assert r.status_code == 404, r.text
    assert bob.put("/api/v1/scheduling-groups/future", json={**MANDATORY, "vms": ["a9"]}).status_code == 404
    assert api_client.get("/api/v1/scheduling-groups").json() == []
    # An admin's group naming both: each sees only their own VM in it, and may not change it.
    assert api_client.put("/api/v1/scheduling-groups/both", json={**MANDATORY, "vms": ["a1", "b1"]}).status_code == 200
    assert [g["vms"] for g in bob.get("/api/v1/scheduling-groups").json()] == [["b1"]]
    assert [g["vms"] for g in carol.get("/api/v1/scheduling-groups").json()] == [[]]
    r = bob.put("/api/v1/scheduling-groups/both", json={**MANDATORY, "vms": ["b1"]})
    assert r.status_code == 409 and "an admin" in r.json()["error"]["message"], r.text
    assert bob.delete("/api/v1/scheduling-groups/both").status_code == 409
    assert [g["vms"] for g in api_client.get("/api/v1/scheduling-groups").json()] == [["a1", "b1"]]
    # What bob sees, bob may group.
    assert bob.put("/api/v1/scheduling-groups/mine", json={**MANDATORY, "vms": ["b1"]}).status_code == 200


def test_store_stats_and_the_recycle_bin_follow_the_vm(appliance: Appliance, api_client: TestClient):
    alice, bob, carol = two_owners(appliance)
    _, a_backup = backed_up(alice, "a1")
    _, b_backup = backed_up(bob, "b1")
    per_backup = lambda client: sorted(u["backup_id"] for u in client.get("/api/v1/store/stats").json()["per_backup"])  # noqa: E731
    assert per_backup(api_client) == sorted([a_backup, b_backup])
    assert per_backup(alice) == [a_backup] and per_backup(bob) == [b_backup] and per_backup(carol) == []
    assert api_client.delete(f"/api/v1/backups/{a_backup}").status_code == 200
    assert alice.delete("/api/v1/vms/a1").status_code == 200
    binned = lambda client: sorted((r["kind"], r["name"]) for r in client.get("/api/v1/recycle-bin").json())  # noqa: E731
    assert binned(api_client) == [("backup", a_backup), ("vm", "a1")]
    assert binned(alice) == [("backup", a_backup), ("vm", "a1")]
    assert binned(bob) == [] and binned(carol) == []


def test_a_new_user_with_a_deleted_users_name_inherits_nothing(appliance: Appliance, api_client: TestClient):
    alice, _, _ = two_owners(appliance)
    _, a_backup = backed_up(alice, "a1")
    assert api_client.delete("/api/v1/users/alice").status_code == 204
    assert api_client.get("/api/v1/vms/a1/access").json()["owner"] != "alice"
    newcomer = user_client(appliance, "alice", Role.OPERATOR)
    assert [v["name"] for v in newcomer.get("/api/v1/vms").json()] == []
    assert newcomer.get("/api/v1/vms/a1").status_code == 404
    assert newcomer.get(f"/api/v1/backups/{a_backup}").status_code == 404
    assert newcomer.get("/api/v1/backups").json() == []


def test_network_attachments_leases_and_previews_follow_the_vm(appliance: Appliance, api_client: TestClient,
                                                               netns: str):  # noqa: F811
    alice, bob, carol = two_owners(appliance)
    assert api_client.post("/api/v1/pools", json={"kind": "address", "name": "lan-pool",
                                                  "subnet": "10.71.0.0/28"}).status_code == 201
    r = api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "lan-pool", "netns": netns})
    assert r.status_code == 201, r.text
    for vm in ("a1", "b1"):
        assert api_client.post("/api/v1/networks/lan/attachments", json={"vm": vm}).status_code == 201
    attached = lambda client: [a["vm"] for a in client.get("/api/v1/networks/lan/attachments").json()]  # noqa: E731
    assert attached(api_client) == ["a1", "b1"]
    assert attached(alice) == ["a1"] and attached(bob) == ["b1"] and attached(carol) == []
    assert [a["vm"] for a in bob.get("/api/v1/networks/lan").json()["attachments"]] == ["b1"]
    leases = lambda client: [x["owner"] for x in client.get("/api/v1/pools/address/lan-pool/leases").json()]  # noqa: E731
    assert leases(api_client) == ["a1", "b1"] and leases(bob) == ["b1"]
    assert [x["owner"] for x in bob.get("/api/v1/pools/address/lan-pool").json()["leases"]] == ["b1"]
    policy = {"kind": "backup", "name": "nightly", "schedule": "0 2 * * *", "vms": ["*"]}
    assert api_client.post("/api/v1/policies", json=policy).status_code == 201
    assert sorted(bob.get("/api/v1/policies/nightly/preview").json()["vms"]) == ["b1"]
