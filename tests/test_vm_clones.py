"""Clones with real QEMU: full (a flat copy), instant (boots at once on the source's disk, a
background block-stream makes it independent), batch (one shared image cache)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from backup_helpers import wait_serial
from guest.harness import MiB, read_image
from job_helpers import job_done, job_result
from test_vm_lifecycle import assert_guest_pattern, guest_body, wait_for

from vmm.images import backing_chain

MARK = 60 * MiB   # the source's own data, written from the host before cloning


def stopped_source(api_client, appliance, guest_kernel) -> str:
    """A VM whose disk holds the guest's boot pattern and 1 MiB of 0x3c at MARK; stopped."""
    assert api_client.post("/api/v1/vms", json=guest_body(guest_kernel, "src", disks=["128M"])).status_code == 201
    api_client.post("/api/v1/vms/src/start")
    wait_serial(appliance, "src", "CAIRN: READY")
    assert api_client.post("/api/v1/vms/src/stop", json={"force": True}).status_code == 200
    vda = appliance.vms.spec("src").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x3c {MARK} 1M", vda], check=True,
                   capture_output=True)
    return vda


def same_guest_data(clone_disk: str, source_disk: str) -> None:
    assert read_image(clone_disk, MARK, MiB) == read_image(source_disk, MARK, MiB) == b"\x3c" * MiB
    assert_guest_pattern(clone_disk)


def clones_of_src(api_client, names: list[str], mode: str = "full") -> list[dict]:
    """Clones of VM src, made by a job: their definitions, as the job's result has them."""
    made = job_result(api_client, api_client.post("/api/v1/vms/src/clones", json={"names": names, "mode": mode}))
    assert made["vms"] == names
    return made["clones"]


def clone_of_src(api_client, name: str, mode: str) -> tuple[dict, str]:
    """One clone of VM src: its definition and the path of its disk."""
    (clone,) = clones_of_src(api_client, [name], mode)
    return clone, clone["disks"][0]["path"]


def test_full_clone_is_an_independent_copy(api_client, appliance, guest_kernel):
    src = stopped_source(api_client, appliance, guest_kernel)
    clone, disk = clone_of_src(api_client, "copy", "full")
    assert backing_chain(disk) == [disk]
    assert clone["nics"] == [] and clone["linked_to"] is None
    subprocess.run(["qemu-img", "compare", "-q", src, disk], check=True)
    # Independent: the source can go, the clone still boots.
    assert api_client.delete("/api/v1/vms/src").status_code == 200
    assert api_client.post("/api/v1/vms/copy/start").status_code == 200
    wait_serial(appliance, "copy", "CAIRN: READY")
    assert read_image(disk, MARK, MiB) == b"\x3c" * MiB


def test_instant_clone_boots_at_once_and_becomes_independent(api_client, appliance, guest_kernel):
    src = stopped_source(api_client, appliance, guest_kernel)
    clone, disk = clone_of_src(api_client, "fast", "instant")
    assert clone["linked_to"] == "src" and backing_chain(disk)[1] == src   # linked: nothing copied
    # While linked, the source must not change (its disk is the clone's backing file).
    r = api_client.post("/api/v1/vms/src/start")
    assert r.status_code == 409 and "instant clone fast still reads" in r.json()["error"]["message"]
    assert api_client.delete("/api/v1/vms/src").status_code == 409

    assert api_client.post("/api/v1/vms/fast/start").status_code == 200   # boots at once
    wait_serial(appliance, "fast", "CAIRN: READY")
    wait_for(lambda: api_client.get("/api/v1/vms/fast/streams").json() == {}, what="the stream")
    assert backing_chain(disk) == [disk]                     # no backing file any more
    assert api_client.get("/api/v1/vms/fast").json()["state"] == "running"
    api_client.post("/api/v1/vms/fast/stop", json={"force": True})
    same_guest_data(disk, src)
    assert appliance.vms.show("fast").linked_to is None
    # Free again: the source starts, and deleting it leaves the clone whole.
    assert api_client.post("/api/v1/vms/src/start").status_code == 200
    api_client.post("/api/v1/vms/src/stop", json={"force": True})
    assert api_client.delete("/api/v1/vms/src").status_code == 200
    same_guest_data(disk, disk)


def test_batch_clones_share_one_image_cache(api_client, appliance, guest_kernel):
    src = stopped_source(api_client, appliance, guest_kernel)
    disks = [c["disks"][0]["path"] for c in clones_of_src(api_client, ["b1", "b2", "b3"])]
    caches = {backing_chain(d)[1] for d in disks}
    assert len(caches) == 1                                   # stored once ...
    cache = Path(caches.pop())
    images = appliance.vms.images.list()
    assert [i.name for i in images] == [cache.stem] and images[0].source == "vm:src/vda"
    assert backing_chain(cache) == [str(cache)]                # ... standalone, not on the source
    assert all(Path(d).stat().st_size < 2 * MiB for d in disks)   # the clones are thin
    assert api_client.delete("/api/v1/vms/src").status_code == 200
    for d in disks:
        same_guest_data(d, d)
    assert src not in {f for d in disks for f in backing_chain(d)}
    assert api_client.post("/api/v1/vms/b2/start").status_code == 200
    wait_serial(appliance, "b2", "CAIRN: READY")
    r = api_client.delete(f"/api/v1/images/{cache.stem}")
    assert r.status_code == 409 and "b1, b2, b3" in r.json()["error"]["message"]


def test_clone_refusals_change_nothing(api_client, appliance, guest_kernel):
    assert api_client.post("/api/v1/vms", json=guest_body(guest_kernel, "s", disks=["16M"])).status_code == 201
    assert api_client.post("/api/v1/vms", json=guest_body(guest_kernel, "taken", disks=["16M"])).status_code == 201
    for body, status, message in [
        ({"names": ["taken"]}, 409, "must be new"),
        ({"names": ["a", "a"]}, 409, "must be new"),
        ({"names": []}, 422, "ValidationError"),
        ({"names": ["x"], "mode": "linked"}, 422, "ValidationError"),
        ({"names": ["Bad!"]}, 422, "invalid VM name"),
    ]:
        r = api_client.post("/api/v1/vms/s/clones", json=body)
        assert r.status_code == status and message in r.text, (body, r.text)
    assert api_client.post("/api/v1/vms/ghost/clones", json={"names": ["x"]}).status_code == 404
    # A refusal only the clone itself finds (the source runs): the job fails and makes nothing.
    assert api_client.post("/api/v1/vms/s/start").status_code == 200
    running = job_done(api_client, api_client.post("/api/v1/vms/s/clones", json={"names": ["x"]}))
    assert running["state"] == "failed" and "stop it to clone it" in running["error"]
    api_client.post("/api/v1/vms/s/stop", json={"force": True})
    assert sorted(v["name"] for v in api_client.get("/api/v1/vms").json()) == ["s", "taken"]
    assert sorted(p.name for p in appliance.settings.images_dir.iterdir()) == ["s", "taken"]
