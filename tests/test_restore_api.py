"""The restore endpoints: a disk into a file, a VM as a new VM or over itself; refusals change nothing."""
from __future__ import annotations

import subprocess

from backup_helpers import CHUNK, MiB, run
from job_helpers import job_result
from restore_helpers import backup_file, same_image


def backed_up_vm(appliance, name: str = "web1") -> tuple[str, str]:
    spec = appliance.vms.create(name, [2 * CHUNK])
    disk = spec.disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {MiB} {3 * MiB}", disk], check=True,
                   capture_output=True)
    return run(appliance.backups.create(spec)).manifest.backup_id, disk


def test_restore_disk_into_a_file(api_client, appliance, tmp_path):
    backup_id, disk = backed_up_vm(appliance)
    target = tmp_path / "vda.qcow2"
    reply = job_result(api_client, api_client.post(f"/api/v1/backups/{backup_id}/disks/vda/restore",
                                                   json={"target": str(target), "format": "qcow2", "verify": True}))
    assert reply["verified"] and same_image(disk, target)
    before = target.stat().st_mtime_ns
    again = api_client.post(f"/api/v1/backups/{backup_id}/disks/vda/restore", json={"target": str(target)})
    assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
    assert target.stat().st_mtime_ns == before
    bad = api_client.post(f"/api/v1/backups/{backup_id}/disks/vda/restore",
                          json={"target": str(tmp_path / "x"), "format": "vmdk"})
    assert bad.status_code == 422 and not (tmp_path / "x").exists()
    # A disk the backup does not have is the caller's mistake: 404, and no file made.
    missing = api_client.post(f"/api/v1/backups/{backup_id}/disks/vdz/restore", json={"target": str(tmp_path / "y")})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "DiskNotFoundError", missing.text
    assert "vdz" in missing.json()["error"]["message"] and not list(tmp_path.glob("*y*"))
    # A target whose directory is a file: refused as the request comes (the host-path check), no job, nothing made.
    (tmp_path / "file").write_text("not a directory")
    jobs = len(api_client.get("/api/v1/jobs").json())
    refused = api_client.post(f"/api/v1/backups/{backup_id}/disks/vda/restore",
                              json={"target": str(tmp_path / "file" / "vda.raw")})
    assert refused.status_code == 400 and "does not exist" in refused.json()["error"]["message"], refused.text
    assert len(api_client.get("/api/v1/jobs").json()) == jobs and (tmp_path / "file").read_text() == "not a directory"


def test_restore_vm_as_new_and_over(api_client, appliance):
    backup_id, disk = backed_up_vm(appliance)
    reply = job_result(api_client, api_client.post(f"/api/v1/backups/{backup_id}/restore",
                                                   json={"mode": "new", "name": "web2"}))
    assert same_image(disk, reply["disks"]["vda"])
    assert api_client.get("/api/v1/vms/web2").status_code == 200
    nameless = api_client.post(f"/api/v1/backups/{backup_id}/restore", json={"mode": "new"})
    assert nameless.status_code == 422 and ["body", "new", "name"] in [d["loc"] for d in nameless.json()["error"]["details"]]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 1M", disk], check=True, capture_output=True)
    over = job_result(api_client, api_client.post(f"/api/v1/backups/{backup_id}/restore", json={"mode": "over"}))
    restored = over["disks"]["vda"]
    assert restored != disk and same_image(restored, reply["disks"]["vda"])


def test_list_and_download_files(api_client, appliance, tmp_path):
    tree = tmp_path / "content"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_bytes(b"hello from the backup\n" * 1000)
    image = tmp_path / "disk.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "32M"], check=True)
    backup_id = backup_file(appliance.store, "files1", "vda", image)
    listed = api_client.get(f"/api/v1/backups/{backup_id}/disks/vda/files", params={"path": "/etc"})
    assert listed.status_code == 200, listed.text
    assert [(e["name"], e["kind"], e["size"]) for e in listed.json()] == [("motd", "file", 22000)]
    got = api_client.get(f"/api/v1/backups/{backup_id}/disks/vda/files/content", params={"path": "/etc/motd"})
    assert got.status_code == 200 and got.content == (tree / "etc" / "motd").read_bytes()
    missing = api_client.get(f"/api/v1/backups/{backup_id}/disks/vda/files/content", params={"path": "/etc/nope"})
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]["message"]


def test_instant_and_boot_test_endpoints_refuse_clearly(api_client, appliance):
    backup_id, _ = backed_up_vm(appliance)
    unknown = api_client.get("/api/v1/instant-restores/nosuchvm")
    assert unknown.status_code == 404 and "no instant restore" in unknown.json()["error"]["message"]
    taken = api_client.post(f"/api/v1/backups/{backup_id}/instant-restore", json={"name": "web1"})
    assert taken.status_code == 409 and "already exists" in taken.json()["error"]["message"]
    assert not (appliance.settings.data_dir / "instant" / "web1").exists()
    bad = api_client.post(f"/api/v1/backups/{backup_id}/boot-test", json={"timeout": -1})
    assert bad.status_code == 422
    assert api_client.get(f"/api/v1/backups/{backup_id}/boot-tests").json() == []
