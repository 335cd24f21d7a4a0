"""libvirt hosts through the web API and the CLI, against a real libvirtd: register, list,
start, back up, stop, forget; bad input answered with a clear error and nothing changed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from backup_helpers import same_content
from job_helpers import job_result
from libvirt_helpers import libvirt_guest, reference_copy
from libvirtd_server import libvirtd  # noqa: F401  (fixture)

from restore import restore_disk

CAIRN = str(Path(sys.executable).with_name("cairn"))


def cairn(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CAIRN, *args], check=False, env={**os.environ, "CAIRN_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, timeout=600)


def test_host_api_and_cli_drive_and_back_up_a_domain(api_client, appliance, libvirtd, guest_kernel,  # noqa: F811
                                                     tmp_path):
    answer = api_client.post("/api/v1/hosts", json={"name": "kvm1", "uri": libvirtd.uri,
                                                    "libvirt_dir": str(libvirtd.lib_dir)})
    assert answer.status_code == 201, answer.text
    assert api_client.get("/api/v1/hosts").json() == [{"name": "kvm1", "kind": "libvirt", "uri": libvirtd.uri,
                                                     "options": {"libvirt_dir": str(libvirtd.lib_dir)}}]

    with libvirt_guest(libvirtd, "apiguest", guest_kernel, start=False) as guest:
        domains = api_client.get("/api/v1/hosts/kvm1/vms").json()
        assert [(d["name"], d["state"], d["disks"][0]["target"]) for d in domains] == [("apiguest", "stopped", "vda")]
        assert api_client.post("/api/v1/hosts/kvm1/vms/apiguest/backups").status_code == 409

        answer = api_client.post("/api/v1/hosts/kvm1/vms/apiguest/start")
        assert answer.status_code == 200 and answer.json()["state"] == "running", answer.text
        assert api_client.post("/api/v1/hosts/kvm1/vms/apiguest/start").status_code == 409
        # Each start was a job on the domain's resource: the first succeeded, the second failed saying why.
        jobs = api_client.get("/api/v1/jobs", params={"sort": "-created_at",
                                                      "filter": "resource:eq:vm:apiguest@kvm1"}).json()
        assert [(j["kind"], j["state"]) for j in jobs] == [("host.vm.start", "failed"), ("host.vm.start", "succeeded")]
        assert jobs[1]["id"] == answer.json()["job_id"] and "already running" in jobs[0]["error"]
        guest.wait_serial("CAIRN: READY")

        # The idle guest writes nothing after boot: API and CLI backups see the same disk.
        guest.dom.suspend()
        reference_copy(guest, tmp_path / "ref.raw")
        guest.dom.resume()
        made = job_result(api_client, api_client.post("/api/v1/hosts/kvm1/vms/apiguest/backups", json={"full": False}))
        full = api_client.get(f"/api/v1/backups/{made['backup_id']}").json()
        assert (full["vm_name"], full["kind"], full["status"]) == ("apiguest@kvm1", "full", "ok")

        done = cairn(appliance.settings.data_dir, "host", "backup", "kvm1", "apiguest")
        assert done.returncode == 0, done.stderr
        assert "incremental" in done.stdout and "apiguest@kvm1" in done.stdout
        listed = cairn(appliance.settings.data_dir, "backup", "list", "--vm", "apiguest@kvm1", "--json")
        assert listed.returncode == 0, listed.stderr
        for backup_id in (full["id"], done.stdout.split()[1]):
            out = tmp_path / f"{backup_id}.raw"
            restore_disk(appliance.store, backup_id, "vda", out)
            assert same_content(tmp_path / "ref.raw", out)

        # A disk selection that leaves nothing is refused; a bad selector too.
        answer = api_client.post("/api/v1/hosts/kvm1/vms/apiguest/backups", json={"exclude": ["kind:qcow2"]})
        assert answer.status_code == 409 and "no disk to back up" in answer.json()["error"]["message"], answer.text
        answer = api_client.post("/api/v1/hosts/kvm1/vms/apiguest/backups", json={"include": ["kind:tape"]})
        assert answer.status_code == 422, answer.text
        refused = cairn(appliance.settings.data_dir, "host", "backup", "kvm1", "apiguest", "--include", "vdz")
        assert refused.returncode == 1 and "no disk to back up" in refused.stderr, refused.stderr

        # The CLI restores the backup as a new domain beside it.
        folder = libvirtd.folder("apicopy")
        restored = cairn(appliance.settings.data_dir, "host", "restore", "kvm1", full["id"], "--name", "apicopy",
                         "--dir", str(folder))
        assert restored.returncode == 0, restored.stderr
        assert f"vda: {folder}/apicopy-vda.qcow2" in restored.stdout
        assert same_content(tmp_path / "ref.raw", folder / "apicopy-vda.qcow2", "qcow2")
        assert "apicopy" in [d["name"] for d in api_client.get("/api/v1/hosts/kvm1/vms").json()]
        guest.dom.connect().lookupByName("apicopy").undefine()

        # The API restores it as well, as a job on the new domain (the admin's).
        folder = libvirtd.folder("apicopy2")
        answer = api_client.post("/api/v1/hosts/kvm1/restores",
                                 json={"backup_id": full["id"], "name": "apicopy2", "directory": str(folder)})
        assert answer.status_code == 202 and answer.json()["resource"] == "vm:apicopy2@kvm1", answer.text
        made = job_result(api_client, answer)
        assert made["disks"] == {"vda": f"{folder}/apicopy2-vda.qcow2"} and made["verified"]
        assert same_content(tmp_path / "ref.raw", folder / "apicopy2-vda.qcow2", "qcow2")
        guest.dom.connect().lookupByName("apicopy2").undefine()

        answer = api_client.post("/api/v1/hosts/kvm1/vms/apiguest/stop", json={"timeout": 120})
        assert answer.status_code == 200 and answer.json()["state"] == "stopped", answer.text
        said = {e["kind"]: e["message"] for e in api_client.get(
            "/api/v1/events", params={"filter": f"job_id:eq:{answer.json()['job_id']}"}).json()}
        assert said["vm.stopping"].startswith("asked the guest of VM apiguest on host kvm1 to shut down")
        assert said["vm.stopped"].startswith("VM apiguest on host kvm1 stopped after ")

    shown = cairn(appliance.settings.data_dir, "host", "list")
    assert shown.returncode == 0 and "kvm1" in shown.stdout
    assert api_client.delete("/api/v1/hosts/kvm1").status_code == 204
    assert api_client.get("/api/v1/hosts/kvm1").status_code == 404


def test_host_api_refuses_bad_input(api_client, appliance, libvirtd, tmp_path):  # noqa: F811
    cases = [
        ({"name": "Bad Name", "uri": libvirtd.uri}, 422, "invalid host name"),
        ({"name": "kvm1", "uri": libvirtd.uri, "kind": "vmware"}, 422, "not valid"),
        ({"name": "kvm1", "uri": libvirtd.uri, "key_file": "/k"}, 422, "do not apply to libvirt hosts"),
        ({"name": "kvm1", "uri": "ssh://root@127.0.0.1/some/path", "kind": "ssh"}, 422, "ssh://user@host"),
        ({"name": "kvm1", "uri": f"qemu:///system?socket={tmp_path}/none.sock"}, 502, "cannot connect"),
        ({"name": "kvm1"}, 422, "not valid"),
    ]
    for body, status, message in cases:
        answer = api_client.post("/api/v1/hosts", json=body)
        assert answer.status_code == status, answer.text
        assert message in answer.json()["error"]["message"]
    assert api_client.get("/api/v1/hosts").json() == []

    assert api_client.post("/api/v1/hosts", json={"name": "kvm1", "uri": libvirtd.uri}).status_code == 201
    assert api_client.post("/api/v1/hosts", json={"name": "kvm1", "uri": libvirtd.uri}).status_code == 409
    assert api_client.get("/api/v1/hosts/kvm1/vms/nope").status_code == 404
    assert api_client.post("/api/v1/hosts/kvm1/vms/nope/backups").status_code == 404
    assert api_client.post("/api/v1/hosts/other/vms/nope/start").status_code == 404
    assert api_client.post("/api/v1/hosts/kvm1/vms/nope/stop", json={"timeout": -1}).status_code == 422
    assert api_client.get("/api/v1/backups").json() == []
    restores = [({"backup_id": "b", "name": "x", "over": True}, 422, "name (a new domain) or over"),
                ({"backup_id": "b", "name": "x"}, 422, "a directory or a storage pool"),
                ({"backup_id": "b", "name": "x", "directory": "rel/dir"}, 422, "not an absolute path"),
                ({"backup_id": "nope", "over": True}, 404, "nope")]
    for body, status, message in restores:
        answer = api_client.post("/api/v1/hosts/kvm1/restores", json=body)
        assert answer.status_code == status and message in answer.text, answer.text
    answer = api_client.post("/api/v1/hosts/other/restores", json={"backup_id": "nope", "over": True})
    assert answer.status_code == 404, answer.text
    assert api_client.get("/api/v1/jobs").json() == []

    failed = cairn(appliance.settings.data_dir, "host", "add", "kvm2", f"qemu:///system?socket={tmp_path}/x.sock")
    assert failed.returncode == 1 and "cannot connect" in failed.stderr
    failed = cairn(appliance.settings.data_dir, "host", "remove", "kvm2")
    assert failed.returncode == 1 and "no host kvm2" in failed.stderr
