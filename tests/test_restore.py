import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from store_helpers import BLOCK, CHUNK, MiB, backup_image, block_ids, block_pack, disk_image, flip_byte, new_store

from dedup import BackupNotFoundError, DiskNotFoundError
from restore import (
    CorruptBackupError,
    DiskSelectionError,
    TargetDirectoryError,
    TargetExistsError,
    restore_disk,
)

GiB = 1 << 30


def allocated(path):
    return os.stat(path).st_blocks * 512


def qemu_img(*args):
    return subprocess.run(["qemu-img", *args], check=False, capture_output=True, text=True)


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path / "store")


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_raw_restore_is_byte_exact(store, out):
    data = disk_image("rzstr", tail=4321, seed=11)
    manifest = backup_image(store, "web1", {"vda": data})
    calls = []
    result = restore_disk(store, manifest.backup_id, None, out / "vda.raw", progress=lambda *a: calls.append(a))
    assert (out / "vda.raw").read_bytes() == data
    assert result.blocks == len(block_ids(store, manifest, "vda")) and result.hole_bytes >= CHUNK
    assert 3 * CHUNK + 4321 < result.bytes_written < len(data) - CHUNK
    assert calls[-1] == (len(data), len(data))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert os.listdir(out) == ["vda.raw"]


def test_qcow2_restore_is_byte_exact(store, out, tmp_path, private_tmp):
    data = disk_image("rsztr", tail=65536 + 3 * 512, seed=12)  # qcow2 sizes are whole sectors
    manifest = backup_image(store, "web1", {"vda": disk_image("r"), "vdb": data})
    source = tmp_path / "source.raw"
    source.write_bytes(data)
    target = out / "vdb.qcow2"
    restore_disk(store, manifest.backup_id, "vdb", target, fmt="qcow2")
    assert list(private_tmp.iterdir()) == []  # qemu-nbd gone, its socket dir removed
    info = json.loads(qemu_img("info", "--output=json", str(target)).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", len(data))
    compare = qemu_img("compare", "-f", "raw", str(source), "-F", "qcow2", str(target))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert os.listdir(out) == ["vdb.qcow2"]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_qcow2_restore_to_tmpfs(store, tmp_path, private_tmp):
    """qemu-nbd writes with O_DIRECT where the file system has it (tmpfs only since Linux 6.6),
    with the page cache elsewhere: either way the image is byte-exact."""
    data = disk_image("rtzr", seed=13)
    manifest = backup_image(store, "web1", {"vda": data})
    source = tmp_path / "source.raw"
    source.write_bytes(data)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        target = Path(shm) / "vda.qcow2"
        restore_disk(store, manifest.backup_id, "vda", target, fmt="qcow2")
        compare = qemu_img("compare", "-f", "raw", str(source), "-F", "qcow2", str(target))
        assert compare.returncode == 0, compare.stdout + compare.stderr
        assert os.listdir(shm) == ["vda.qcow2"]
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_zero_disk_restores_thin(store, out, fmt):
    with store.begin_backup("web1") as session:
        session.disk("vda", GiB).zero(0, GiB)
        manifest = session.commit()
    assert manifest.disk("vda").layout.root is None
    target = out / f"vda.{fmt}"
    result = restore_disk(store, manifest.backup_id, "vda", target, fmt=fmt)
    assert (result.bytes_written, result.blocks, result.hole_bytes) == (0, 0, GiB)
    assert allocated(target) <= 4 * MiB
    info = json.loads(qemu_img("info", "--output=json", "-f", fmt, str(target)).stdout)
    assert info["virtual-size"] == GiB


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_zero_runs_inside_blocks_stay_holes(tmp_path, out, fmt):
    store = new_store(tmp_path / "store", block_size=MiB)
    data = disk_image("ssssssss", seed=13)  # 8 MiB, three 4 KiB blocks of data per MiB
    manifest = backup_image(store, "web1", {"vda": data})
    target = out / f"vda.{fmt}"
    result = restore_disk(store, manifest.backup_id, "vda", target, fmt=fmt)
    assert result.bytes_written <= 8 * 3 * 64 * 1024
    assert allocated(target) <= 2 * MiB


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_corrupt_block_fails_and_leaves_nothing(store, out, fmt, private_tmp):
    data = disk_image("rrr", seed=14)
    manifest = backup_image(store, "web1", {"vda": data})
    bad = block_ids(store, manifest, "vda")[20]
    _, record = store.blocks.locate(bad)
    flip_byte(block_pack(store, bad), offset=record.offset + BLOCK // 3)
    with pytest.raises(CorruptBackupError) as failure:
        restore_disk(store, manifest.backup_id, "vda", out / "vda.img", fmt=fmt)
    assert list(private_tmp.iterdir()) == []
    message = str(failure.value)
    assert bad.hex() in message and manifest.backup_id in message and "disk vda" in message
    assert (failure.value.offset, failure.value.chunk_id) == (20 * BLOCK, bad.hex())
    assert os.listdir(out) == []


def test_missing_block_fails_and_leaves_nothing(store, out):
    manifest = backup_image(store, "web1", {"vda": disk_image("rr", seed=15)})
    pack = block_pack(store, block_ids(store, manifest, "vda")[0])
    lost = {r.block_id.hex() for r in store.blocks.index.packs[pack.name].records}
    pack.unlink()
    with pytest.raises(CorruptBackupError, match=f"{manifest.backup_id} disk vda .* is in no pack") as failure:
        restore_disk(store, manifest.backup_id, "vda", out / "vda.raw")
    assert failure.value.chunk_id in lost
    assert os.listdir(out) == []


def test_existing_target_is_refused_unless_forced(store, out):
    data = disk_image("rt", seed=16)
    manifest = backup_image(store, "web1", {"vda": data})
    target = out / "vda.raw"
    target.write_bytes(b"precious")
    before = os.stat(target)
    with pytest.raises(TargetExistsError, match="force"):
        restore_disk(store, manifest.backup_id, "vda", target)
    assert target.read_bytes() == b"precious"
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns
    restore_disk(store, manifest.backup_id, "vda", target, force=True)
    assert target.read_bytes() == data
    assert os.listdir(out) == ["vda.raw"]


def test_bad_requests_are_refused_clearly(store, out):
    two_disks = backup_image(store, "web1", {"vda": disk_image("r"), "vdb": disk_image("r")})
    with pytest.raises(TargetDirectoryError, match="does not exist"):
        restore_disk(store, two_disks.backup_id, "vda", out / "missing" / "vda.raw")
    with pytest.raises(DiskSelectionError, match="vda, vdb"):
        restore_disk(store, two_disks.backup_id, None, out / "x.raw")
    with pytest.raises(DiskNotFoundError, match="vdz"):
        restore_disk(store, two_disks.backup_id, "vdz", out / "x.raw")
    with pytest.raises(BackupNotFoundError):
        restore_disk(store, "19700101T000000Z-0000", "vda", out / "x.raw")
    with pytest.raises(TargetExistsError, match="not a regular file"):
        restore_disk(store, two_disks.backup_id, "vda", out, force=True)
    with pytest.raises(TargetExistsError, match="not a regular file"):
        restore_disk(store, two_disks.backup_id, "vda", "/dev/null", force=True)
    assert os.listdir(out) == []
