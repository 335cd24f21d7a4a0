"""No request lets a non-admin name a file of the appliance's host (appliance/host_paths.py), and an
admin's paths are confined: resolved through symlinks, outside the data dir, of the expected kind.

Operators work with what the appliance holds: an image uploaded to the library can be a VM's kernel."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.context import Appliance

KERNEL_BYTES = b"not really a kernel, but raw bytes like one\n" * 1000


def upload(client: TestClient, name: str, data: bytes) -> dict:
    r = client.put(f"/api/v1/images/{name}", content=data, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


def refused(answer, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]["message"], answer.text


def test_an_operator_names_no_host_file(appliance: Appliance, operator_client: TestClient):
    secret_key = str(appliance.settings.secret_key_file)
    for path in ("/etc/shadow", secret_key):
        refused(operator_client.post("/api/v1/images/stolen/import", json={"path": path}), 403, "admin")
    for field in ("kernel", "initrd"):
        body = {"name": "peek", "disks": ["8M"], "kernel": "/etc/shadow", field: "/etc/shadow"}
        refused(operator_client.post("/api/v1/vms", json=body), 403, "admin")
    assert operator_client.get("/api/v1/images").json() == []
    assert operator_client.get("/api/v1/vms").json() == []


def test_an_operator_boots_a_kernel_from_the_library(appliance: Appliance, operator_client: TestClient):
    kernel = upload(operator_client, "kernel", KERNEL_BYTES)
    upload(operator_client, "initrd", KERNEL_BYTES[::-1])
    assert kernel["format"] == "raw"
    r = operator_client.post("/api/v1/vms", json={"name": "direct", "disks": ["8M"], "kernel": "kernel",
                                                  "initrd": "initrd", "append": "console=ttyS0"})
    assert r.status_code == 201, r.text
    spec = appliance.vms.spec("direct")
    assert spec.kernel == str(appliance.vms.images.path("kernel"))
    assert spec.initrd == str(appliance.vms.images.path("initrd"))
    refused(operator_client.post("/api/v1/vms", json={"name": "nokernel", "disks": ["8M"], "kernel": "missing"}),
            400, "no image named 'missing'")


def test_an_admins_host_paths_are_confined(appliance: Appliance, api_client: TestClient, tmp_path: Path):
    data_dir = appliance.settings.data_dir
    link = tmp_path / "innocent.img"
    link.symlink_to(appliance.settings.secret_key_file)
    (tmp_path / "folder").mkdir()
    good = tmp_path / "good.img"
    good.write_bytes(KERNEL_BYTES)
    for path, words in ((str(appliance.settings.secret_key_file), "inside the appliance's data dir"),
                        (str(data_dir / "catalog.db"), "inside the appliance's data dir"),
                        (str(link), "inside the appliance's data dir"),
                        (str(data_dir / ".." / data_dir.name / "secret.key"), "inside the appliance's data dir"),
                        ("/dev/zero", "not a regular file"),
                        (str(tmp_path / "folder"), "not a regular file"),
                        ("relative/k.img", "must be an absolute path")):
        refused(api_client.post("/api/v1/images/x/import", json={"path": path}), 400, words)
        refused(api_client.post("/api/v1/vms", json={"name": "x", "disks": ["8M"], "kernel": path}), 400, words)
    assert api_client.get("/api/v1/images").json() == [] and api_client.get("/api/v1/vms").json() == []
    assert api_client.post("/api/v1/images/good/import", json={"path": str(good)}).status_code == 201
    r = api_client.post("/api/v1/vms", json={"name": "direct", "disks": ["8M"], "kernel": str(good)})
    assert r.status_code == 201, r.text
    assert appliance.vms.spec("direct").kernel == str(good)


def test_a_restore_target_is_confined_too(appliance: Appliance, api_client: TestClient, tmp_path: Path,
                                         catalog_backend: str | None):
    # What a restore over would hurt most: the key that seals secrets, and the catalog where it is the data dir's file.
    precious = [appliance.settings.secret_key_file] + ([appliance.settings.data_dir / "catalog.db"]
                                                       if catalog_backend is None else [])
    before = {path: path.read_bytes() for path in precious}
    link = tmp_path / "disk.img"
    link.symlink_to(tmp_path / "elsewhere.img")
    for target, words in ([(str(path), "inside the appliance's data dir") for path in precious] +
                          [(str(appliance.settings.images_dir / "new.img"), "inside the appliance's data dir"),
                           (str(link), "is a symlink"),
                           (str(tmp_path / "no" / "folder.img"), "does not exist"),
                           (str(tmp_path), "neither a regular file nor a block device")]):
        r = api_client.post("/api/v1/backups/anything/disks/vda/restore", json={"target": target, "force": True})
        refused(r, 400, words)
    assert {path: path.read_bytes() for path in precious} == before and not (tmp_path / "elsewhere.img").exists()


def test_storage_pools_and_host_keys_are_checked(appliance: Appliance, api_client: TestClient,
                                                 operator_client: TestClient, tmp_path: Path):
    inside = appliance.settings.data_dir / "pool"
    inside.mkdir()
    r = api_client.post("/api/v1/pools", json={"kind": "storage", "name": "p", "path": str(inside)})
    refused(r, 400, "inside the appliance's data dir")
    r = operator_client.post("/api/v1/pools", json={"kind": "storage", "name": "p", "path": str(tmp_path)})
    assert r.status_code == 403
    r = api_client.post("/api/v1/hosts", json={"name": "h", "kind": "ssh", "uri": "ssh://root@192.0.2.1",
                                               "key_file": "/dev/null"})
    refused(r, 400, "not a regular file")
    r = api_client.post("/api/v1/hosts", json={"name": "h", "kind": "ssh", "uri": "ssh://root@192.0.2.1",
                                               "key_file": str(appliance.settings.secret_key_file)})
    refused(r, 400, "inside the appliance's data dir")


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_a_viewer_cannot_either(appliance: Appliance, viewer_client: TestClient, field: str):
    r = viewer_client.post("/api/v1/vms", json={"name": "v", "disks": ["8M"], "kernel": "/etc/passwd",
                                                field: os.devnull})
    assert r.status_code == 403
