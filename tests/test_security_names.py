"""Every name a user chooses is checked whole before anything uses it (appliance/names.py, and
vmm's rules for what QEMU sees): path climbing, commas (QEMU option injection), newlines, shell
syntax, very long and non-ASCII names are refused with a 4xx, and nothing is made, moved or
removed, inside the data dir or outside it."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from test_visibility import backed_up

from appliance.context import Appliance
from appliance.hosts.service import HostSpecError

HOSTILE = ["../x", "a,b", "x,file=/etc/shadow", "x\n", "admin\n", "$(id)", "`id`", "x" * 300,
           "ünïcode", "", " x", "a/b", "x\u0000y", "x y", "-x"]
MiB = 1 << 20


def refused(answer, what: str) -> None:
    assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text}"


def everything(appliance: Appliance, client: TestClient) -> dict:
    """What the API and the disk hold, to compare before and after."""
    data_dir = appliance.settings.data_dir
    return {path: sorted(str(p.relative_to(data_dir)) for p in (data_dir / path).rglob("*"))
            for path in ("vms", "images", "instant", "run")} | {
        "top": sorted(p.name for p in data_dir.iterdir()),
        **{route: client.get(f"/api/v1/{route}").json()
           for route in ("vms", "images", "users", "scheduling-groups", "policies", "pools", "networks", "hosts")}}


@pytest.fixture
def victim(appliance: Appliance):
    """A folder beside the data dir that looks like a finished instant restore's."""
    folder = Path(tempfile.mkdtemp(prefix="victim-", dir=appliance.settings.data_dir.parent))
    (folder / "state.json").write_text(json.dumps({"vm": "victim", "backup_id": "b", "store": "s", "disks": [],
                                                   "status": "done"}))
    yield folder
    (folder / "state.json").unlink(missing_ok=True)
    folder.rmdir()


def test_hostile_names_are_refused_everywhere_an_operator_names_something(
        appliance: Appliance, api_client: TestClient, operator_client: TestClient, victim: Path):
    assert operator_client.post("/api/v1/vms", json={"name": "src", "disks": ["8M"]}).status_code == 201
    _, backup = backed_up(operator_client, "src")
    before = everything(appliance, api_client)
    for name in [*HOSTILE, f"../../{victim.name}"]:
        for what, answer in (
                ("vm", operator_client.post("/api/v1/vms", json={"name": name, "disks": ["8M"]})),
                ("clone", operator_client.post("/api/v1/vms/src/clones", json={"names": [name]})),
                ("image upload", operator_client.put(f"/api/v1/images/{quote(name, safe='')}", content=b"\0" * 512)),
                ("image of a vm", operator_client.post("/api/v1/vms/src/image", json={"image": name})),
                ("snapshot", operator_client.post("/api/v1/vms/src/snapshots", json={"name": name})),
                ("scheduling group", operator_client.put(
                    f"/api/v1/scheduling-groups/{quote(name, safe='')}",
                    json={"policy": "vm-anti-affinity", "enforcement": "preferred", "vms": ["src"]})),
                ("tag", operator_client.put("/api/v1/vms/src/tags", json=[name])),
                ("snapshot job prefix", operator_client.post("/api/v1/jobs", json={
                    "kind": "snapshot", "params": {"vm": "src", "prefix": name}})),
                ("restore as a new vm", operator_client.post(f"/api/v1/backups/{backup}/restore",
                                                             json={"mode": "new", "name": name})),
                ("instant restore", operator_client.post(f"/api/v1/backups/{backup}/instant-restore",
                                                         json={"name": name})),
                ("tap", operator_client.post("/api/v1/vms", json={"name": "nic", "nics": [{"mode": "tap", "tap": name}]})),
                ("bridge", operator_client.post("/api/v1/vms", json={"name": "nic", "nics": [{"mode": "bridge",
                                                                                             "bridge": name}]}))):
            refused(answer, f"{what} {name!r}")
    for mac in ("52:54:00:12:34:56\n", "52:54:00:12:34:56,id=x"):
        refused(operator_client.post("/api/v1/vms", json={"name": "nic", "disks": ["8M"], "nics": [{"mac": mac}]}),
                f"mac {mac!r}")
    assert everything(appliance, api_client) == before
    assert (victim / "state.json").exists()
    assert appliance.snapshots.tree("src").snapshots == {}


def test_hostile_names_are_refused_where_an_admin_names_something(appliance: Appliance, api_client: TestClient):
    appliance.vms.create("src", [8 * MiB])
    before = everything(appliance, api_client)
    for name in HOSTILE:
        for what, answer in (
                ("user", api_client.post("/api/v1/users", json={"name": name, "password": "long enough password"})),
                ("user group", api_client.patch("/api/v1/users/test-admin", json={"groups": [name]})),
                ("vm group", api_client.put("/api/v1/vms/src/access", json={"group": name})),
                ("vm owner", api_client.put("/api/v1/vms/src/access", json={"owner": name})),
                ("policy", api_client.post("/api/v1/policies", json={"kind": "backup", "name": name,
                                                                     "schedule": "0 2 * * *", "vms": ["*"]})),
                ("address pool", api_client.post("/api/v1/pools", json={"kind": "address", "name": name,
                                                                        "subnet": "10.72.0.0/28"})),
                ("network", api_client.post("/api/v1/networks", json={"name": name, "address_pool": "none"})),
                ("bridge", api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "none",
                                                                     "bridge": name})),
                ("netns", api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "none",
                                                                    "netns": name})),
                ("host", api_client.post("/api/v1/hosts", json={"name": name, "uri": "qemu:///nowhere"}))):
            refused(answer, f"{what} {name!r}")
        with pytest.raises(HostSpecError):
            appliance.hosts.snapshot("nowhere", "vm", name)
    assert everything(appliance, api_client) == before
    assert appliance.vms.show("src") and api_client.get("/api/v1/vms/src/access").json()["group"] is None


def test_an_access_key_label_holds_no_control_character(api_client: TestClient):
    for label in ("cron\njob", "bell\a", "nul\u0000"):
        refused(api_client.post("/api/v1/tokens", json={"name": label}), f"token {label!r}")
    assert api_client.post("/api/v1/tokens", json={"name": "Sicherung für München, nightly"}).status_code == 201
