"""Restores into RBD images on the test cluster (ceph_cluster.py): a disk and a whole VM, thin,
verified, and compared with the source by `qemu-img compare` through QEMU's rbd driver."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import ingest_images

from dedup import Store
from restore import RbdImage, RestoreError, TargetExistsError, TargetWriteError, parse_destination, restore_disk
from restore.whole_vm import restore_vm_to_rbd

CAIRN = str(Path(sys.executable).with_name("cairn"))
MiB = 1 << 20


def sparse_image(path: Path, size: int, regions: dict[int, int]) -> Path:
    """A raw image of `size` bytes holding random data at each offset -> length, holes elsewhere."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in regions.items():
            f.seek(offset)
            f.write(os.urandom(length))
    return path


def compare(source: Path, image: RbdImage) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), image.qemu_filename],
                          capture_output=True, text=True, check=False)


def used_bytes(cluster, image: RbdImage) -> int:
    (usage,) = json.loads(cluster.cli("rbd", "du", "--format", "json", f"{image.pool}/{image.image}"))["images"]
    return usage["used_size"]


@pytest.fixture
def backed_up(tmp_path):
    """A store holding a backup of two sparse disks: 64 MiB with 6 MiB of data, 16 MiB with 1 MiB."""
    images = {"vda": sparse_image(tmp_path / "vda.raw", 64 * MiB, {0: 2 * MiB, 20 * MiB: 3 * MiB, 60 * MiB: MiB}),
              "vdb": sparse_image(tmp_path / "vdb.raw", 16 * MiB, {8 * MiB: MiB})}
    store = Store.init(tmp_path / "store")
    manifest = ingest_images(store, "web1", images)
    yield store, manifest, images
    store.close()


def test_a_disk_restores_into_a_thin_rbd_image_identical_to_the_source(ceph_cluster, backed_up):
    store, manifest, images = backed_up
    name = ceph_cluster.unique("vda")
    spec = f"rbd:{ceph_cluster.rbd_pool}/{name}?conf={ceph_cluster.conf}&id=admin"
    result = restore_disk(store, manifest.backup_id, "vda", parse_destination(spec), verify=True)
    image = RbdImage.parse(spec)
    assert result.verified and compare(images["vda"], image).returncode == 0
    # Thin: RBD allocates whole 4 MiB objects, and only the three the data falls into, of sixteen.
    assert used_bytes(ceph_cluster, image) == 3 * 4 * MiB
    images_now = ceph_cluster.cli("rbd", "ls", ceph_cluster.rbd_pool).split()
    assert name in images_now and not [i for i in images_now if i.endswith(".cairn-partial")]

    with pytest.raises(TargetExistsError, match="already exists; restore with force"):
        restore_disk(store, manifest.backup_id, "vda", parse_destination(spec))
    restore_disk(store, manifest.backup_id, "vdb", parse_destination(spec, force=True))
    assert compare(images["vdb"], image).returncode == 0, "replaced by the other disk"


def test_a_whole_vm_restores_into_rbd_images_and_its_definition_points_at_them(ceph_cluster, backed_up, tmp_path):
    store, manifest, images = backed_up
    prefix = ceph_cluster.unique("web1")
    env = {**os.environ, "CAIRN_DATA_DIR": str(tmp_path / "data"), "CAIRN_STORE": str(tmp_path / "store")}
    done = subprocess.run([CAIRN, "restore", "vm", manifest.backup_id, "--to-rbd",
                           f"rbd:{ceph_cluster.rbd_pool}?conf={ceph_cluster.conf}", "--verify", "--json"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["disks"] == {d: f"rbd:{ceph_cluster.rbd_pool}/web1-{d}" for d in images}
    result = restore_vm_to_rbd(store, manifest.backup_id, f"rbd:{ceph_cluster.rbd_pool}?conf={ceph_cluster.conf}",
                               prefix=prefix)
    for disk, source in images.items():
        assert compare(source, RbdImage.parse(f"{result.disks[disk]}?conf={ceph_cluster.conf}")).returncode == 0


def test_rbd_targets_that_cannot_work_say_why(ceph_cluster, backed_up, tmp_path):
    store, manifest, _ = backed_up
    for bad in ["rbd:pool", "rbd:pool/", "rbd:a/b/c/d", "rbd:pool/img?user=x"]:
        with pytest.raises(RestoreError):
            parse_destination(bad)
    with pytest.raises(RestoreError, match="receives the disk's raw bytes"):
        parse_destination(f"rbd:{ceph_cluster.rbd_pool}/x?conf={ceph_cluster.conf}", fmt="qcow2")
    with pytest.raises(TargetWriteError, match="error opening pool nopool"):
        restore_disk(store, manifest.backup_id, "vda", parse_destination(f"rbd:nopool/x?conf={ceph_cluster.conf}"))
    # A failed disk of a whole VM takes back the disks restored before it: all or nothing.
    prefix = ceph_cluster.unique("half")
    blocker = RbdImage.parse(f"rbd:{ceph_cluster.rbd_pool}/{prefix}-vdb?conf={ceph_cluster.conf}")
    ceph_cluster.cli("rbd", "create", "--size", "1M", f"{blocker.pool}/{blocker.image}")
    with pytest.raises(TargetExistsError):
        restore_vm_to_rbd(store, manifest.backup_id, f"rbd:{ceph_cluster.rbd_pool}?conf={ceph_cluster.conf}",
                          prefix=prefix)
    left = ceph_cluster.cli("rbd", "ls", ceph_cluster.rbd_pool).split()
    assert f"{prefix}-vda" not in left and f"{prefix}-vdb" in left
