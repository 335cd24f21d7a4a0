"""Cairn VMs with their disks on RBD (a storage pool of kind rbd) on the test's own one-node Ceph
(ceph_cluster.py): created thin, written by the guest, backed up full and then incrementally while
the VM runs (its QEMU keeps the dirty bitmap in memory: a raw RBD image stores none), read in full
with the reason after a restart and while stopped, restored into a file and into a new RBD image
and compared byte for byte with `qemu-img compare` against copies taken while paused. Bad input
(an unreachable cluster, a pool that does not exist) is refused, saying so, with nothing lost."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from backup_helpers import reference_copy, run, same_content, wait_serial
from guest.harness import MiB

from appliance.backups.service import BackupResult
from appliance.context import Appliance
from appliance.errors import ConflictError
from appliance.pools.service import PoolError
from appliance.vms.records import VMRecord
from appliance.vms.service import VMOptions
from restore import parse_destination, restore_disk
from restore.whole_vm import restore_vm_to_rbd
from vmm import network_disks
from vmm.errors import VMSpecError, VMStartError
from vmm.network_disks import network_disk

VM = "onrbd"
WRITER = "console=ttyS0 quiet cairn.mode=writer cairn.writes=1000 cairn.interval=1 cairn.writedisks=vda,vdb"


def rbd_pool(appliance: Appliance, ceph_cluster, name: str = "ceph") -> str:
    appliance.vms.pools.create_storage(name, "rbd", f"rbd:{ceph_cluster.rbd_pool}:conf={ceph_cluster.conf}")
    return name


def writes(appliance: Appliance) -> int:
    return (appliance.settings.run_dir / VM / "serial.log").read_text(errors="replace").count("CAIRN: WRITE n=")


def start(appliance: Appliance) -> None:
    (appliance.settings.run_dir / VM / "serial.log").unlink(missing_ok=True)
    run(appliance.vms.start(VM))
    wait_serial(appliance, VM, "CAIRN: WRITE n=1", timeout=180)


def paused_backup(appliance: Appliance, refdir: Path, full: bool = False) -> BackupResult:
    """A backup of the running VM, its disks copied through QEMU while paused (what the backup must hold)."""
    wait_serial(appliance, VM, f"CAIRN: WRITE n={writes(appliance) + 1}")   # new writes to find

    async def body() -> BackupResult:
        async with appliance.driver.session(VM) as s:
            await s.execute("stop")
            for d in ("vda", "vdb"):
                await reference_copy(s, d, refdir / f"{d}.raw", refdir / "ref.sock")
        try:
            return await appliance.backups.create(appliance.vms.spec(VM), full=full)
        finally:
            async with appliance.driver.session(VM) as s:
                await s.execute("cont")

    return run(body())


def compare(reference: Path, image: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(reference), image],
                          capture_output=True, text=True, check=False)


def assert_restores(appliance: Appliance, ceph_cluster, result: BackupResult, refdir: Path) -> None:
    """Each disk restored into a file and into a new RBD image equals its copy taken while paused."""
    for d in ("vda", "vdb"):
        out = refdir / f"{d}-restored.raw"
        restore_disk(appliance.store, result.manifest.backup_id, d, out, fmt="raw")
        assert same_content(refdir / f"{d}.raw", out), f"{result.manifest.backup_id}: {d} differs (file)"
        out.unlink()
        target = f"rbd:{ceph_cluster.rbd_pool}/{ceph_cluster.unique(d)}?conf={ceph_cluster.conf}"
        restore_disk(appliance.store, result.manifest.backup_id, d, parse_destination(target), verify=True)
        image = target.partition("?")[0] + f":conf={ceph_cluster.conf}"
        done = compare(refdir / f"{d}.raw", image)
        assert done.returncode == 0, f"{result.manifest.backup_id}: {d} differs (RBD): {done.stdout}{done.stderr}"


def used_bytes(ceph_cluster, path: str) -> int:
    disk = network_disk(path)
    (usage,) = json.loads(ceph_cluster.cli("rbd", "du", "--format", "json", f"{disk.pool}/{disk.image}"))["images"]
    return usage["used_size"]


@pytest.mark.slow
def test_a_vm_on_rbd_is_backed_up_full_then_incrementally_while_it_runs_and_restores_byte_exact(
        appliance, ceph_cluster, guest_kernel, tmp_path):
    pool = rbd_pool(appliance, ceph_cluster)
    spec = appliance.vms.create(VM, [64 * MiB, 32 * MiB], kernel=str(guest_kernel.kernel),
                                initrd=str(guest_kernel.initrd), append=WRITER,
                                options=VMOptions(storage_pool=pool))
    assert [(d.name, d.format) for d in spec.disks] == [("vda", "raw"), ("vdb", "raw")]
    assert all(d.path.startswith(f"rbd:{ceph_cluster.rbd_pool}/{VM}-") for d in spec.disks), spec.disks
    assert all(used_bytes(ceph_cluster, d.path) == 0 for d in spec.disks), "thin: nothing allocated yet"
    assert appliance.vms.pools.storage_users(appliance.vms.pools.storage_pool(pool)) == [VM]
    start(appliance)

    full = paused_backup(appliance, tmp_path)
    assert full.manifest.kind == "full" and full.notes == [], full.notes
    assert_restores(appliance, ceph_cluster, full, tmp_path)

    # The running QEMU keeps a bitmap of each RBD disk in memory: the next backup reads what changed.
    inc = paused_backup(appliance, tmp_path)
    assert inc.manifest.kind == "incremental" and inc.notes == [], inc.notes
    assert all(p.since for p in inc.points), inc.points
    read = {d.name: d.stats.bytes_read for d in inc.manifest.disks}
    assert all(n <= 8 * MiB for n in read.values()), read
    assert_restores(appliance, ceph_cluster, inc, tmp_path)

    # A restart loses those bitmaps: a full read of each disk, with the reason.
    run(appliance.vms.stop(VM, force=True))
    start(appliance)
    after = paused_backup(appliance, tmp_path)
    assert not any(p.since for p in after.points), after.points
    for d in ("vda", "vdb"):
        assert any(n.startswith(f"{d}: raw image: its checkpoint bitmap {inc.manifest.checkpoint} lived only in "
                                "the QEMU that ran the VM then") for n in after.notes), after.notes
    assert_restores(appliance, ceph_cluster, after, tmp_path)

    # Stopped: qemu-nbd reads the images through the rbd driver, in full, and the backup says why.
    run(appliance.vms.stop(VM, force=True))
    for disk in appliance.vms.spec(VM).disks:
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", disk.path, str(tmp_path / f"{disk.name}.raw")],
                       check=True)
    stopped = run(appliance.backups.create(appliance.vms.spec(VM)))
    assert "vda is raw: no dirty bitmap is stored in it (only a running VM's QEMU keeps one), full read" \
        in stopped.notes, stopped.notes
    assert_restores(appliance, ceph_cluster, stopped, tmp_path)

    # The whole VM restores into new RBD images, which its definition names.
    whole = restore_vm_to_rbd(appliance.store, stopped.manifest.backup_id,
                              f"rbd:{ceph_cluster.rbd_pool}?conf={ceph_cluster.conf}",
                              prefix=ceph_cluster.unique("copy"), verify=True)
    for disk in whole.definition["disks"]:
        assert compare(tmp_path / f"{disk['name']}.raw", disk["path"]).returncode == 0, disk

    # ... and as a new Cairn VM in the rbd pool, which starts; restoring over a VM on RBD is refused, saying why.
    copy = appliance.restores.as_new_vm(stopped.manifest.backup_id, "rbdcopy", storage_pool=pool)
    for name, path in copy.disks.items():
        assert path == f"rbd:{ceph_cluster.rbd_pool}/rbdcopy-{name}:conf={ceph_cluster.conf}"
        assert compare(tmp_path / f"{name}.raw", path).returncode == 0, name
    with pytest.raises(ConflictError, match=f"VM {VM} has network disks \\(vda, vdb\\): restore the backup as a new VM"):
        run(appliance.restores.over_vm(stopped.manifest.backup_id, VM))
    run(appliance.vms.start("rbdcopy"))
    wait_serial(appliance, "rbdcopy", "CAIRN: WRITE n=1", timeout=180)
    run(appliance.vms.stop("rbdcopy", force=True))
    appliance.vms.delete("rbdcopy")

    # Deleting the VM removes its images from the pool; the pool is free again.
    appliance.vms.delete(VM)
    images = ceph_cluster.cli("rbd", "ls", ceph_cluster.rbd_pool).split()
    assert not [i for i in images if i.startswith(f"{VM}-")], images
    appliance.vms.pools.delete_storage(pool)


def test_an_unreachable_cluster_or_a_wrong_pool_is_refused_and_loses_nothing(appliance, ceph_cluster, tmp_path,
                                                                            monkeypatch):
    # The dead cluster is waited for twice: 3 s each says the same as the product's 20 s (room for
    # a real cluster's slow monitors) and spares the suite 34 s.
    monkeypatch.setattr(network_disks, "PROBE_TIMEOUT", 3.0)
    dead = tmp_path / "dead.conf"
    dead.write_text("[global]\nmon host = v2:127.0.0.1:9\nauth cluster required = none\n")
    with pytest.raises(PoolError, match=r"storage pool gone: cannot use Ceph pool rbd .*dead.conf"):
        appliance.vms.pools.create_storage("gone", "rbd", f"rbd:rbd:conf={dead}")
    with pytest.raises(PoolError, match="storage pool wrong: cannot use Ceph pool no-such-pool"):
        appliance.vms.pools.create_storage("wrong", "rbd", f"rbd:no-such-pool:conf={ceph_cluster.conf}")
    with pytest.raises(PoolError, match="keyring"):
        appliance.vms.pools.create_storage("keyed", "rbd", f"rbd:rbd:conf={ceph_cluster.conf}:keyring=/k")
    assert appliance.vms.pools.storage_pools() == []

    pool = rbd_pool(appliance, ceph_cluster)
    vm = ceph_cluster.unique("bad")   # the cluster is the session's: its own image names
    appliance.vms.create(vm, [16 * MiB], options=VMOptions(storage_pool=pool))
    with pytest.raises(ConflictError, match=f"VM {vm} already exists"):
        appliance.vms.create(vm, [16 * MiB], options=VMOptions(storage_pool=pool))
    with pytest.raises(ConflictError, match=f"holds disks of VMs {vm}"):
        appliance.vms.pools.delete_storage(pool)

    # A VM whose disk names a pool that does not exist, or a cluster that does not answer, does not
    # start: the error says which disk and why, quickly, and the VM and its image are still there.
    spec = appliance.vms.spec(vm)
    image = spec.disks[0].path
    for broken, why in ((image.replace(f"rbd:{ceph_cluster.rbd_pool}/", "rbd:no-such-pool/"), "error opening pool"),
                        (image.replace(str(ceph_cluster.conf), str(dead)), "")):
        spec.disks[0].path = broken
        with appliance.catalog.begin() as s:
            s.get_one(VMRecord, vm).spec = spec.to_dict()
        with pytest.raises(VMStartError, match=f"disk vda: cannot open RBD image .*{why}"):
            run(appliance.vms.start(vm))
        assert appliance.driver.status(vm).state == "stopped"
    assert subprocess.run(["rbd", "-c", str(ceph_cluster.conf), "info", f"{ceph_cluster.rbd_pool}/{vm}-vda"],
                          capture_output=True, check=False).returncode == 0, "the image is untouched"
    spec.disks[0].path = image
    with appliance.catalog.begin() as s:
        s.get_one(VMRecord, vm).spec = spec.to_dict()
    appliance.vms.delete(vm)
    assert f"{vm}-vda" not in rbd_images(ceph_cluster)

    with pytest.raises(VMSpecError, match="is not rbd:POOL"):
        network_disk("rbd:just-a-pool")


def rbd_images(ceph_cluster) -> list[str]:
    return ceph_cluster.cli("rbd", "ls", ceph_cluster.rbd_pool).split()


def test_a_vm_on_rbd_refuses_snapshots_and_goes_to_the_recycle_bin_with_its_images(api_client, appliance,
                                                                                   ceph_cluster):
    location = f"rbd:{ceph_cluster.rbd_pool}:conf={ceph_cluster.conf}"
    made = api_client.post("/api/v1/pools", json={"kind": "storage", "name": "ceph", "type": "rbd", "path": location})
    assert made.status_code == 201, made.text
    assert made.json() == {"kind": "storage", "name": "ceph", "type": "rbd", "path": location}
    vm = ceph_cluster.unique("bin")
    created = api_client.post("/api/v1/vms", json={"name": vm, "disks": ["16M"], "storage_pool": "ceph",
                                                   "console": False})
    assert created.status_code == 201, created.text
    vda = appliance.vms.spec(vm).disks[0].path
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 1M", vda], check=True, capture_output=True)

    with pytest.raises(ConflictError, match=rf"cannot have snapshots: vda \(RBD image {ceph_cluster.rbd_pool}/{vm}-vda .*rbd snap create"):
        appliance.snapshots.check_create(vm, "s1")
    with pytest.raises(ConflictError, match="cannot have snapshots"):
        run(appliance.snapshots.create(vm, "s1"))

    preview = api_client.delete(f"/api/v1/vms/{vm}", params={"dry_run": True}).json()
    assert f"disk vda (RBD image {ceph_cluster.rbd_pool}/{vm}-vda (conf {ceph_cluster.conf}))" in preview["takes"]
    deleted = api_client.delete(f"/api/v1/vms/{vm}").json()
    assert deleted["recycle_id"], deleted
    assert f"{vm}-vda" not in rbd_images(ceph_cluster)
    assert [i for i in rbd_images(ceph_cluster) if i.startswith(".cairn-recycle-") and i.endswith(f"-{vm}-vda")]

    assert api_client.post(f"/api/v1/recycle-bin/{deleted['recycle_id']}/restore").status_code == 200
    assert appliance.vms.spec(vm).disks[0].path == vda
    done = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 1M", vda], capture_output=True, text=True,
                          check=True)
    assert "Pattern verification failed" not in done.stdout, "the data came back with the VM"

    again = api_client.delete(f"/api/v1/vms/{vm}").json()
    assert api_client.delete(f"/api/v1/recycle-bin/{again['recycle_id']}").status_code == 200
    assert not [i for i in rbd_images(ceph_cluster) if i.endswith(f"{vm}-vda")], rbd_images(ceph_cluster)
    assert api_client.delete("/api/v1/pools/storage/ceph").status_code == 204
