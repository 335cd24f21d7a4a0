"""A VM's disks and NICs added and removed through the API, against real QEMU (TCG) and the
suite's guest: the guest sees what a stopped VM was given, a backup after it holds the new disks
and restores them byte for byte, and bad input changes nothing."""
from __future__ import annotations

from pathlib import Path

from backup_helpers import MiB, paused_backup_with_reference, run, same_content, wait_serial, write_pattern
from fastapi.testclient import TestClient
from network_helpers import netns  # noqa: F401  (fixture)

from appliance.context import Appliance
from appliance.vms.records import VMRecord
from restore import restore_disk
from vmm import DiskSpec, VMSpec, create_disk

GUEST_APPEND = "console=ttyS0 quiet cairn.mode=idle"


def create_guest(client: TestClient, guest_kernel, name: str, disks: list[str]) -> dict:
    r = client.post("/api/v1/vms", json={"name": name, "disks": disks, "kernel": str(guest_kernel.kernel),
                                         "initrd": str(guest_kernel.initrd), "append": GUEST_APPEND,
                                         "console": False})
    assert r.status_code == 201, r.text
    return r.json()


def start_and_wait(client: TestClient, appliance: Appliance, name: str, disks: int) -> None:
    serial = appliance.settings.run_dir / name / "serial.log"
    serial.unlink(missing_ok=True)
    r = client.post(f"/api/v1/vms/{name}/start")
    assert r.status_code == 200, r.text
    wait_serial(appliance, name, f"CAIRN: DISKS n={disks}")
    wait_serial(appliance, name, "CAIRN: READY")


def stop(client: TestClient, name: str) -> None:
    r = client.post(f"/api/v1/vms/{name}/stop", json={"force": True})
    assert r.status_code == 200 and r.json()["state"] == "stopped", r.text


def library_image(client: TestClient, tmp_path: Path, name: str, size: int, fill: int) -> bytes:
    """A raw disk image of `size` bytes of `fill` uploaded into the library; returns its bytes."""
    data = bytes([fill]) * size
    r = client.put(f"/api/v1/images/{name}", params={"kind": "disk"}, content=data,
                   headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return data


def pci_ids(appliance: Appliance, name: str) -> set[str]:
    async def ask() -> set[str]:
        async with appliance.driver.session(name) as qmp:
            buses = await qmp.execute("query-pci")
        return {d.get("qdev_id", "") for bus in buses for d in bus["devices"]}
    return run(ask())


def test_disks_and_a_nic_added_to_a_stopped_vm_reach_the_guest_and_its_backups(
        api_client: TestClient, appliance: Appliance, guest_kernel, tmp_path: Path):
    create_guest(api_client, guest_kernel, "hw", ["128M"])
    start_and_wait(api_client, appliance, "hw", 1)
    refdir = tmp_path / "before"
    refdir.mkdir()
    first = run(paused_backup_with_reference(appliance, "hw", ["vda"], refdir, full=True))
    assert [d.name for d in first.disks] == ["vda"]

    # A running VM is refused, and keeps what it had.
    r = api_client.post("/api/v1/vms/hw/disks", json={"size": "64M"})
    assert r.status_code == 409 and "hot-plug" in r.json()["error"]["message"]
    assert [d["name"] for d in api_client.get("/api/v1/vms/hw").json()["disks"]] == ["vda"]
    stop(api_client, "hw")

    r = api_client.post("/api/v1/vms/hw/disks", json={"size": "64M"})
    assert r.status_code == 201, r.text
    vdb = r.json()["disks"][1]
    assert vdb["name"] == "vdb" and vdb["format"] == "qcow2"
    assert Path(vdb["path"]).parent == appliance.settings.images_dir / "hw"
    seeded = library_image(api_client, tmp_path, "seed", 4 * MiB, 0x3c)
    r = api_client.post("/api/v1/vms/hw/disks", json={"image": "seed"})
    assert r.status_code == 201, r.text
    vdc = r.json()["disks"][2]
    assert vdc["name"] == "vdc"
    r = api_client.post("/api/v1/vms/hw/nics", json={"model": "e1000", "mac": "52:54:00:AA:BB:01"})
    assert r.status_code == 201, r.text
    assert r.json()["nics"] == [{"name": "net0", "mode": "user", "mac": "52:54:00:aa:bb:01", "tap": None,
                                 "bridge": None, "model": "e1000"}]
    r = api_client.post("/api/v1/vms/hw/nics", json={})
    assert r.status_code == 201 and [n["name"] for n in r.json()["nics"]] == ["net0", "net1"]
    second_mac = r.json()["nics"][1]["mac"]

    # The guest sees three virtio disks; QEMU has both cards.
    start_and_wait(api_client, appliance, "hw", 3)
    assert {"net0", "net1", "vdb-dev", "vdc-dev"} <= pci_ids(appliance, "hw")
    run(write_pattern(appliance, "hw", "vdb", 0x5a, 3 * MiB, MiB))

    # The next backup holds the new disks (read in full: new since the last) and restores them exactly.
    refdir = tmp_path / "after"
    refdir.mkdir()
    second = run(paused_backup_with_reference(appliance, "hw", ["vda", "vdb", "vdc"], refdir))
    assert second.parent == first.backup_id
    assert [d.name for d in second.disks] == ["vda", "vdb", "vdc"]
    assert any(n.startswith("vdb: new disk since backup") for n in second.notes), second.notes
    for disk in ("vda", "vdb", "vdc"):
        restored = refdir / f"{disk}-restored.raw"
        restore_disk(appliance.store, second.backup_id, disk, restored)
        assert same_content(refdir / f"{disk}.raw", restored), disk
    assert (refdir / "vdc.raw").read_bytes()[:len(seeded)] == seeded
    stop(api_client, "hw")

    # Removing: the boot disk never; a NIC by its MAC; a disk with its file deleted on request.
    r = api_client.delete("/api/v1/vms/hw/disks/vda")
    assert r.status_code == 409 and "boot disk" in r.json()["error"]["message"]
    r = api_client.delete(f"/api/v1/vms/hw/nics/{second_mac}")
    assert r.status_code == 200 and [n["name"] for n in r.json()["nics"]] == ["net0"]
    r = api_client.delete("/api/v1/vms/hw/disks/vdc", params={"delete_file": True})
    assert r.status_code == 200 and [d["name"] for d in r.json()["disks"]] == ["vda", "vdb"]
    assert not Path(vdc["path"]).exists()
    r = api_client.delete("/api/v1/vms/hw/disks/vdb")
    assert r.status_code == 200 and Path(vdb["path"]).exists()   # kept: no delete_file
    # A disk added now does not take the kept file's name.
    r = api_client.post("/api/v1/vms/hw/disks", json={"size": "8M", "format": "raw"})
    assert r.status_code == 201 and r.json()["disks"][1]["name"] == "vdc"
    assert r.json()["disks"][1]["path"].endswith("/hw/vdc.raw")
    start_and_wait(api_client, appliance, "hw", 2)
    stop(api_client, "hw")


def test_snapshots_know_an_added_disk_and_keep_theirs(api_client: TestClient, appliance: Appliance):
    """A snapshot taken after a disk was added covers it; a disk a snapshot holds is not removed."""
    appliance.vms.create("snappy", [16 * MiB])
    job = appliance.jobs.wait(appliance.jobs.submit("snapshot.create", {"vm": "snappy", "name": "one"}).id, 120)
    assert job.state == "succeeded", job.error
    r = api_client.post("/api/v1/vms/snappy/disks", json={"size": "8M"})
    assert r.status_code == 201, r.text
    tree = api_client.get("/api/v1/vms/snappy/snapshots").json()
    assert sorted(tree["current"]["disks"]) == ["vda", "vdb"]
    job = appliance.jobs.wait(appliance.jobs.submit("snapshot.create", {"vm": "snappy", "name": "two"}).id, 120)
    assert job.state == "succeeded", job.error
    snapshots = {s["name"]: s for s in api_client.get("/api/v1/vms/snappy/snapshots").json()["snapshots"]}
    assert sorted(snapshots["two"]["disks"]) == ["vda", "vdb"] and sorted(snapshots["one"]["disks"]) == ["vda"]
    vdb = appliance.vms.spec("snappy").disks[1].path
    r = api_client.delete("/api/v1/vms/snappy/disks/vdb", params={"delete_file": True})
    assert r.status_code == 409 and "two" in r.json()["error"]["message"]
    assert [d.name for d in appliance.vms.spec("snappy").disks] == ["vda", "vdb"]
    assert Path(vdb).exists()


def test_bad_input_gets_a_clear_error_and_changes_nothing(api_client: TestClient, operator_client: TestClient,
                                                         appliance: Appliance, tmp_path: Path):
    assert api_client.post("/api/v1/vms", json={"name": "plain", "disks": ["16M"]}).status_code == 201
    appliance.vms.create("other", [8 * MiB])
    assert api_client.post("/api/v1/vms/other/nics", json={"mac": "52:54:00:00:00:07"}).status_code == 201
    outside = tmp_path / "outside.qcow2"
    create_disk(outside, MiB)
    before = api_client.get("/api/v1/vms/plain").json()
    folder = sorted(p.name for p in (appliance.settings.images_dir / "plain").iterdir())

    def refused(method: str, path: str, status: int, words: str, **kwargs) -> None:
        r = api_client.request(method, path, **kwargs)
        assert r.status_code == status, (path, kwargs, r.text)
        assert words in r.text, (words, r.text)

    refused("POST", "/api/v1/vms/plain/disks", 422, "size must be positive", json={"size": 0})
    refused("POST", "/api/v1/vms/plain/disks", 422, "size", json={"size": "lots"})
    refused("POST", "/api/v1/vms/plain/disks", 422, "a size, or a library image", json={})
    refused("POST", "/api/v1/vms/plain/disks", 422, "format", json={"size": "8M", "format": "vmdk"})
    refused("POST", "/api/v1/vms/plain/disks", 422, "Extra inputs", json={"size": "8M", "path": "/etc/passwd"})
    refused("POST", "/api/v1/vms/plain/disks", 400, "no image named", json={"image": "ghost"})
    refused("POST", "/api/v1/vms/plain/disks", 400, "invalid image name", json={"image": "../../etc/passwd"})
    refused("POST", "/api/v1/vms/plain/disks", 404, "nowhere", json={"size": "8M", "storage_pool": "nowhere"})
    refused("POST", "/api/v1/vms/plain/nics", 404, "no network named nonet", json={"network": "nonet"})
    refused("POST", "/api/v1/vms/plain/nics", 409, "already VM other's", json={"mac": "52:54:00:00:00:07"})
    refused("POST", "/api/v1/vms/plain/nics", 422, "locally administered", json={"mac": "01:00:5e:00:00:01"})
    refused("POST", "/api/v1/vms/plain/nics", 422, "rtl8139", json={"model": "ne2k_pci"})
    refused("POST", "/api/v1/vms/plain/nics", 422, "tap", json={"mode": "tap", "tap": "x; rm -rf /"})
    refused("DELETE", "/api/v1/vms/plain/disks/vda", 409, "boot disk")
    refused("DELETE", "/api/v1/vms/plain/disks/vda%3Breboot", 404, "has no disk")
    refused("DELETE", "/api/v1/vms/plain/disks/..%2F..%2Fetc", 404, "Not Found")
    refused("DELETE", "/api/v1/vms/plain/nics/52:54:00:00:00:07", 404, "no NIC with MAC")
    refused("POST", "/api/v1/vms/ghost/disks", 404, "ghost", json={"size": "8M"})
    refused("POST", "/api/v1/vms/Bad%20Name/nics", 404, "Bad Name", json={})
    assert api_client.get("/api/v1/vms/plain").json() == before
    assert sorted(p.name for p in (appliance.settings.images_dir / "plain").iterdir()) == folder

    # A disk whose file Cairn did not make is removed, never deleted.
    with appliance.catalog.begin() as s:
        rec = s.get_one(VMRecord, "plain")
        spec = VMSpec.from_dict(rec.spec)
        spec.disks.append(DiskSpec("vdb", str(outside)))
        rec.spec = spec.to_dict()
    refused("DELETE", "/api/v1/vms/plain/disks/vdb", 409, "outside the VM's folders", params={"delete_file": True})
    assert api_client.delete("/api/v1/vms/plain/disks/vdb").status_code == 200 and outside.exists()

    # Another operator's VM is not found, and stays as it was.
    for method, path, body in (("POST", "/api/v1/vms/plain/disks", {"size": "8M"}),
                               ("POST", "/api/v1/vms/plain/nics", {}),
                               ("DELETE", "/api/v1/vms/plain/nics/52:54:00:00:00:07", None),
                               ("DELETE", "/api/v1/vms/plain/disks/vda", None)):
        r = operator_client.request(method, path, json=body)
        assert r.status_code == 404, (path, r.text)
    assert api_client.get("/api/v1/vms/plain").json() == before


def test_a_nic_on_a_network_gets_an_address_for_its_mac_and_gives_it_back(
        api_client: TestClient, operator_client: TestClient, appliance: Appliance, netns: str):  # noqa: F811
    assert api_client.post("/api/v1/pools", json={"kind": "address", "name": "lan-pool",
                                                  "subnet": "10.71.0.0/28"}).status_code == 201
    assert api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "lan-pool",
                                                     "netns": netns}).status_code == 201
    appliance.vms.create("onlan", [8 * MiB])
    r = api_client.post("/api/v1/vms/onlan/nics", json={"mode": "bridge", "bridge": "br0", "network": "lan"})
    assert r.status_code == 409 and "give it no mode" in r.json()["error"]["message"]
    r = api_client.post("/api/v1/vms/onlan/nics", json={"network": "lan", "mac": "52:54:00:0a:00:02",
                                                        "model": "virtio-net-pci"})
    assert r.status_code == 201, r.text
    nic = r.json()["nics"][0]
    assert (nic["mode"], nic["mac"], nic["model"]) == ("tap", "52:54:00:0a:00:02", "virtio-net-pci")
    attached = api_client.get("/api/v1/networks/lan/attachments").json()
    assert [(a["vm"], a["nic"], a["mac"], a["address"]) for a in attached] == [
        ("onlan", "net0", "52:54:00:0a:00:02", "10.71.0.2")]
    r = api_client.delete("/api/v1/vms/onlan/nics/52:54:00:0A:00:02")
    assert r.status_code == 200 and r.json()["nics"] == []
    assert api_client.get("/api/v1/networks/lan/attachments").json() == []
    assert api_client.get("/api/v1/pools/address/lan-pool").json()["leases"] == []

    # An operator puts their own VM on the network (defining networks stays the admin's).
    assert operator_client.post("/api/v1/vms", json={"name": "mine", "disks": ["8M"]}).status_code == 201
    assert operator_client.post("/api/v1/networks/lan/attachments", json={"vm": "mine"}).status_code == 403
    r = operator_client.post("/api/v1/vms/mine/nics", json={"network": "lan"})
    assert r.status_code == 201 and r.json()["nics"][0]["mode"] == "tap", r.text
    assert [a["vm"] for a in api_client.get("/api/v1/networks/lan/attachments").json()] == ["mine"]
