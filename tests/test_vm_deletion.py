"""VMs under deletion protection: a dry run says what goes and changes nothing; a delayed delete
moves the VM to the recycle bin (its name free), from where it comes back whole and boots; purge
removes its files; a running VM, the rule "never" and a taken name are refused.
Real files, real QEMU (the test guest)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_helpers import MiB, boot_guest_vm, run, wait_serial
from fastapi.testclient import TestClient
from guest.harness import read_image
from network_helpers import netns  # noqa: F401  (fixture)
from sqlalchemy import select

from appliance.context import Appliance
from appliance.snapshots.records import SnapshotIntentRecord, SnapshotTreeRecord
from appliance.vms.records import VMOptionsRecord, VMRecord, VMTagRecord

CAIRN = str(Path(sys.executable).with_name("cairn"))
MARK = 120 * MiB   # past the guest's boot pattern (0 and 100 MiB): the guest leaves it alone


def allocated(folder: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())


def rows_of(appliance: Appliance, vm: str) -> dict[str, int]:
    with appliance.catalog() as s:
        return {r.__tablename__: len(s.scalars(select(r).where((r.name if r is VMRecord else r.vm_name) == vm)).all())
                for r in (VMRecord, SnapshotTreeRecord, VMOptionsRecord, VMTagRecord)}


def recycled_folders(appliance: Appliance) -> list[Path]:
    root = appliance.settings.data_dir / "recycle" / "vms"
    return sorted(root.glob("*/*")) if root.exists() else []


def test_a_deleted_vm_waits_in_the_bin_comes_back_whole_and_boots(api_client: TestClient, appliance: Appliance,
                                                                     guest_kernel):
    boot_guest_vm(appliance, guest_kernel, "web", [128 * MiB])
    # Running: refused, also as a dry run; nothing changes.
    for params in ({}, {"dry_run": True}):
        r = api_client.delete("/api/v1/vms/web", params=params)
        assert r.status_code == 409 and "stop it first" in r.json()["error"]["message"]
    snap = run(appliance.snapshots.create("web", "s1", memory=True))
    assert snap.memory and Path(snap.memory).is_file()
    assert api_client.post("/api/v1/vms/web/stop", json={"timeout": 30}).json()["state"] == "stopped"
    assert api_client.put("/api/v1/vms/web/ha", json={"enabled": True}).status_code == 200
    assert api_client.put("/api/v1/vms/web/tags", json=["prod"]).status_code == 200
    vda = appliance.vms.spec("web").disks[0].path          # the active layer, over s1's
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x6b {MARK} 1M", vda], check=True, capture_output=True)
    folder = appliance.settings.images_dir / "web"
    files = sorted(folder.iterdir())
    rows = rows_of(appliance, "web")
    assert rows == {"vms": 1, "snapshot_trees": 1, "vm_options": 1, "vm_tags": 1}

    preview = api_client.delete("/api/v1/vms/web", params={"dry_run": True})
    assert preview.status_code == 200, preview.text
    impact = preview.json()
    assert impact["mode"] == "delayed" and not impact["deleted"] and impact["purge_at"]
    takes = "\n".join(impact["takes"])
    assert "disk vda (" in takes and "allocated in 2 file(s)" in takes
    assert "snapshot tree: 1 snapshot(s): s1" in takes and "memory state of snapshot s1" in takes
    assert "HA protection" in takes and "tags: prod" in takes and "backups" in takes
    assert impact["frees_bytes"] == allocated(folder) > 0
    assert sorted(folder.iterdir()) == files and rows_of(appliance, "web") == rows, "a dry run changes nothing"
    assert api_client.get("/api/v1/vms/web").status_code == 200 and recycled_folders(appliance) == []

    gone = api_client.delete("/api/v1/vms/web")
    assert gone.status_code == 200 and gone.json()["deleted"] and gone.json()["recycle_id"]
    assert api_client.get("/api/v1/vms/web").status_code == 404
    assert "web" not in [v["name"] for v in api_client.get("/api/v1/vms").json()]
    assert not folder.exists() and rows_of(appliance, "web") == dict.fromkeys(rows, 0)
    (entry,) = api_client.get("/api/v1/recycle-bin").json()
    assert (entry["kind"], entry["name"], entry["id"]) == ("vm", "web", gone.json()["recycle_id"])
    (recycled,) = recycled_folders(appliance)
    assert sorted(p.name for p in recycled.iterdir()) == [p.name for p in files]

    back = api_client.post(f"/api/v1/recycle-bin/{entry['id']}/restore")
    assert back.status_code == 200, back.text
    assert api_client.get("/api/v1/recycle-bin").json() == [] and recycled_folders(appliance) == []
    assert sorted(folder.iterdir()) == files and rows_of(appliance, "web") == rows
    view = appliance.vms.show("web")
    assert view.ha and view.spec.disks[0].path == vda
    assert api_client.get("/api/v1/vms/web/tags").json() == ["prod"]
    assert [s["name"] for s in api_client.get("/api/v1/vms/web/snapshots").json()["snapshots"]] == ["s1"]
    assert read_image(vda, MARK, MiB) == b"\x6b" * MiB
    assert api_client.post("/api/v1/vms/web/start").json()["state"] == "running"
    wait_serial(appliance, "web", "CAIRN: READY")
    assert api_client.post("/api/v1/vms/web/stop", json={"timeout": 30}).json()["state"] == "stopped"
    assert read_image(vda, MARK, MiB) == b"\x6b" * MiB

    # Purged from the bin: the files go for good; the name stays free.
    again = api_client.delete("/api/v1/vms/web").json()
    (recycled,) = recycled_folders(appliance)
    purged = api_client.delete(f"/api/v1/recycle-bin/{again['recycle_id']}")
    assert purged.status_code == 200 and purged.json()["name"] == "web"
    assert not recycled.exists() and not folder.exists() and not Path(snap.memory).exists()
    assert api_client.get("/api/v1/recycle-bin").json() == []
    assert api_client.post(f"/api/v1/recycle-bin/{again['recycle_id']}/restore").status_code == 404


def test_put_back_is_refused_while_the_name_is_taken(api_client: TestClient, appliance: Appliance):
    assert api_client.post("/api/v1/vms", json={"name": "db", "disks": ["16M"]}).status_code == 201
    old_disk = appliance.vms.spec("db").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", old_disk], check=True, capture_output=True)
    recycle_id = api_client.delete("/api/v1/vms/db").json()["recycle_id"]
    # The name is free: a new VM takes it.
    assert api_client.post("/api/v1/vms", json={"name": "db", "disks": ["32M"]}).status_code == 201
    r = api_client.post(f"/api/v1/recycle-bin/{recycle_id}/restore")
    assert r.status_code == 409 and "a VM of that name exists now" in r.json()["error"]["message"]
    assert [e["id"] for e in api_client.get("/api/v1/recycle-bin").json()] == [recycle_id], "still in the bin"
    assert read_image(old_disk, 0, MiB) == b"\0" * MiB, "the newcomer's disk, untouched"
    assert len(recycled_folders(appliance)) == 1

    # Once the newcomer is gone (deleted at once), the old one comes back with its data.
    api_client.put("/api/v1/deletion-rules/vm", json={"mode": "immediate"})
    gone = api_client.delete("/api/v1/vms/db").json()
    assert gone["deleted"] and gone["recycle_id"] is None and gone["mode"] == "immediate"
    assert not Path(old_disk).parent.exists() and len(recycled_folders(appliance)) == 1
    assert api_client.post(f"/api/v1/recycle-bin/{recycle_id}/restore").status_code == 200
    assert read_image(old_disk, 0, MiB) == b"\x11" * MiB


def test_put_back_is_refused_while_its_mac_is_another_vms(api_client: TestClient):
    """Two NICs of one MAC on a network would take each other's traffic: a VM waiting in the bin
    does not hold its MACs, so the one that took a MAC meanwhile keeps it until it lets it go."""
    assert api_client.post("/api/v1/vms", json={"name": "db", "disks": ["16M"]}).status_code == 201
    assert api_client.post("/api/v1/vms/db/nics", json={"mac": "52:54:00:00:00:09"}).status_code == 201
    recycle_id = api_client.delete("/api/v1/vms/db").json()["recycle_id"]
    assert api_client.post("/api/v1/vms", json={"name": "app", "disks": ["16M"]}).status_code == 201
    assert api_client.post("/api/v1/vms/app/nics", json={"mac": "52:54:00:00:00:09"}).status_code == 201

    r = api_client.post(f"/api/v1/recycle-bin/{recycle_id}/restore")
    assert r.status_code == 409
    assert "its NIC net0's MAC 52:54:00:00:00:09 is VM app's now" in r.json()["error"]["message"]
    assert [e["id"] for e in api_client.get("/api/v1/recycle-bin").json()] == [recycle_id], "still in the bin"
    assert api_client.get("/api/v1/vms/db").status_code == 404

    assert api_client.delete("/api/v1/vms/app/nics/52:54:00:00:00:09").status_code == 200
    assert api_client.post(f"/api/v1/recycle-bin/{recycle_id}/restore").status_code == 200
    assert [n["mac"] for n in api_client.get("/api/v1/vms/db").json()["nics"]] == ["52:54:00:00:00:09"]


def test_rule_never_refuses_and_immediate_removes_everything(api_client: TestClient, appliance: Appliance):
    assert api_client.post("/api/v1/vms", json={"name": "keep", "disks": ["16M"]}).status_code == 201
    assert api_client.put("/api/v1/deletion-rules/vm", json={"mode": "never"}).status_code == 200
    r = api_client.delete("/api/v1/vms/keep")
    assert r.status_code == 409 and "never" in r.json()["error"]["message"]
    assert "switched off" in api_client.delete("/api/v1/vms/keep", params={"dry_run": True}).json()["takes"][0]
    assert api_client.get("/api/v1/vms/keep").status_code == 200
    assert (appliance.settings.images_dir / "keep" / "vda.qcow2").is_file()
    assert api_client.delete("/api/v1/vms/ghost", params={"dry_run": True}).status_code == 404

    api_client.put("/api/v1/deletion-rules/vm", json={"mode": "immediate"})
    with appliance.catalog.begin() as s:   # an operation's intent left behind goes with the VM
        s.add(SnapshotIntentRecord(vm_name="keep", intent={"op": "create"}))
    gone = api_client.delete("/api/v1/vms/keep").json()
    assert gone["deleted"] and gone["mode"] == "immediate" and gone["recycle_id"] is None
    assert not (appliance.settings.images_dir / "keep").exists() and recycled_folders(appliance) == []
    assert api_client.get("/api/v1/recycle-bin").json() == []
    with appliance.catalog() as s:
        assert s.get(SnapshotIntentRecord, "keep") is None


def test_vm_service_delete_removes_the_intent_too(appliance: Appliance):
    appliance.vms.create("plain", [8 * MiB])
    with appliance.catalog.begin() as s:
        s.add(SnapshotIntentRecord(vm_name="plain", intent={"op": "create"}))
        s.add(VMTagRecord(vm_name="plain", tag="t"))
    appliance.vms.delete("plain")
    assert rows_of(appliance, "plain") == {"vms": 0, "snapshot_trees": 0, "vm_options": 0, "vm_tags": 0}
    with appliance.catalog() as s:
        assert s.get(SnapshotIntentRecord, "plain") is None
    assert not (appliance.settings.images_dir / "plain").exists()


@pytest.fixture(params=["same-filesystem", "other-filesystem"])
def pool_dir(request, tmp_path: Path) -> Iterator[Path]:
    """A storage pool's folder on the data dir's filesystem, or on another one (tmpfs)."""
    if request.param == "same-filesystem":
        yield tmp_path / "pool"
        return
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no tmpfs apart from the data dir's filesystem")
    folder = Path(tempfile.mkdtemp(prefix="cairn-pool-", dir="/dev/shm"))
    try:
        yield folder / "pool"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_vm_in_a_storage_pool_on_a_network_gives_back_its_address_and_gets_one_again(
        api_client: TestClient, appliance: Appliance, pool_dir: Path, netns: str):  # noqa: F811
    pool_dir.mkdir()
    for body in ({"kind": "storage", "name": "disks", "type": "dir", "path": str(pool_dir)},
                 {"kind": "address", "name": "lan-pool", "subnet": "10.73.0.0/24"}):
        assert api_client.post("/api/v1/pools", json=body).status_code == 201
    assert api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "lan-pool",
                                                     "netns": netns}).status_code == 201
    assert api_client.post("/api/v1/vms", json={"name": "web", "disks": ["16M"],
                                                "storage_pool": "disks"}).status_code == 201
    first = api_client.post("/api/v1/networks/lan/attachments", json={"vm": "web"}).json()
    assert first["address"] == "10.73.0.2"
    folder = pool_dir / "web"
    elsewhere = os.stat(pool_dir).st_dev != os.stat(appliance.settings.data_dir).st_dev
    aside = pool_dir / ".cairn-recycle"   # a pool on another filesystem keeps the recycled folder (no copy)

    takes = api_client.delete("/api/v1/vms/web", params={"dry_run": True}).json()["takes"]
    assert any("address 10.73.0.2 on network lan" in line for line in takes)
    recycle_id = api_client.delete("/api/v1/vms/web").json()["recycle_id"]
    assert not folder.exists()
    assert len(recycled_folders(appliance)) == (0 if elsewhere else 1)
    assert len(list(aside.glob("*/web"))) == (1 if elsewhere else 0)
    assert api_client.get("/api/v1/pools/address/lan-pool/leases").json() == [], "released"
    # Someone else gets its address meanwhile: it comes back with the next free one.
    assert api_client.post("/api/v1/vms", json={"name": "db", "disks": ["16M"]}).status_code == 201
    assert api_client.post("/api/v1/networks/lan/attachments", json={"vm": "db"}).json()["address"] == "10.73.0.2"

    assert api_client.post(f"/api/v1/recycle-bin/{recycle_id}/restore").status_code == 200
    assert (folder / "vda.qcow2").is_file() and recycled_folders(appliance) == []
    assert list(aside.glob("*/*")) == []
    (mine,) = [a for a in api_client.get("/api/v1/networks/lan/attachments").json() if a["vm"] == "web"]
    assert (mine["address"], mine["mac"], mine["nic"]) == ("10.73.0.3", first["mac"], first["nic"])
    error = api_client.delete("/api/v1/pools/storage/disks")
    assert error.status_code == 409 and "holds disks of VMs web" in error.json()["error"]["message"]


def test_cli_vm_delete_dry_run_and_delete(appliance: Appliance):
    appliance.vms.create("cli", [8 * MiB])
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance.settings.data_dir)}

    def cairn(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, "vm", "delete", *args], env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return proc

    dry = cairn("cli", "--dry-run").stdout
    assert "would delete VM cli (delayed" in dry and "disk vda (" in dry
    assert appliance.vms.spec("cli")
    done = cairn("cli", "--yes").stdout
    assert "deleted VM cli (delayed" in done and "in the recycle bin as" in done
    assert [v.spec.name for v in appliance.vms.list()] == []
