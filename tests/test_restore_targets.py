"""Restore into every kind of destination runnable here, byte-exact and thin:
a block device (loop), an NBD server, a remote host over SSH; and --verify."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest
from store_helpers import CHUNK, backup_image, disk_image, new_store

from restore import (
    FileDestination,
    RestoreError,
    TargetExistsError,
    TargetSizeError,
    VerifyError,
    restore_disk,
)
from restore.ssh_target import SftpDestination

LAYOUT = "rzszr"  # data, a zero chunk, a sparse chunk, zeros, data


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path / "store")


def garbage_file(path: Path, size: int) -> bytes:
    """A fully allocated file of random bytes: what a reused device or export holds."""
    data = random.Random(7).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def loop_device(tmp_path):
    """A loop device over a file of garbage one chunk larger than the disks restored here."""
    backing = tmp_path / "loop.img"
    garbage = garbage_file(backing, len(LAYOUT) * CHUNK + CHUNK)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        yield Path(device), backing, garbage
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def test_block_device_restore_is_exact_and_leaves_the_rest(store, loop_device):
    device, backing, garbage = loop_device
    data = disk_image(LAYOUT, seed=21)
    manifest = backup_image(store, "web1", {"vda": data})
    with pytest.raises(TargetExistsError, match="force"):
        restore_disk(store, manifest.backup_id, "vda", device)
    assert backing.read_bytes() == garbage
    result = restore_disk(store, manifest.backup_id, "vda", device, force=True, verify=True)
    assert result.verified
    on_device = backing.read_bytes()
    assert on_device[: len(data)] == data  # zeros written where the backup has zeros
    assert on_device[len(data):] == garbage[len(data):]  # past the disk: untouched


def test_block_device_too_small_is_refused(store, loop_device):
    device, backing, garbage = loop_device
    manifest = backup_image(store, "web1", {"vda": disk_image(LAYOUT + "rr", seed=22)})
    with pytest.raises(TargetSizeError, match="needs"):
        restore_disk(store, manifest.backup_id, "vda", device, force=True)
    assert backing.read_bytes() == garbage
    with pytest.raises(RestoreError, match="format 'qcow2' does not apply"):
        restore_disk(store, manifest.backup_id, "vda", device, fmt="qcow2", force=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nbd_server(tmp_path):
    """qemu-nbd exporting a raw file of garbage over TCP, as a user would run it."""
    image = tmp_path / "export.img"
    garbage = garbage_file(image, len(LAYOUT) * CHUNK)
    port = _free_port()
    proc = subprocess.Popen(["qemu-nbd", "--format=raw", "--persistent", "--bind=127.0.0.1", f"--port={port}",
                             "--export-name=disk", "--discard=unmap", str(image)])
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None and time.monotonic() < deadline, "qemu-nbd did not listen"
        time.sleep(0.05)
    try:
        yield f"nbd://127.0.0.1:{port}/disk", image, garbage
    finally:
        proc.terminate()
        proc.wait(10)


def test_nbd_server_restore_is_exact_and_thin(store, nbd_server):
    uri, image, garbage = nbd_server
    data = disk_image(LAYOUT, seed=23)
    manifest = backup_image(store, "web1", {"vda": data})
    with pytest.raises(TargetExistsError, match="force"):
        restore_disk(store, manifest.backup_id, "vda", uri)
    assert image.read_bytes() == garbage
    allocated_before = image.stat().st_blocks * 512
    result = restore_disk(store, manifest.backup_id, "vda", uri, force=True, verify=True)
    assert result.verified
    assert image.read_bytes() == data
    # Zero chunks went out as write-zeroes, which qemu-nbd turned into holes.
    assert image.stat().st_blocks * 512 <= allocated_before - 2 * CHUNK


def test_nbd_export_too_small_or_unreachable_is_refused(store, nbd_server):
    uri, image, garbage = nbd_server
    manifest = backup_image(store, "web1", {"vda": disk_image(LAYOUT + "r", seed=24)})
    with pytest.raises(TargetSizeError, match="needs"):
        restore_disk(store, manifest.backup_id, "vda", uri, force=True)
    with pytest.raises(RestoreError, match="cannot connect"):
        restore_disk(store, manifest.backup_id, "vda", f"nbd://127.0.0.1:{_free_port()}/disk", force=True)
    assert image.read_bytes() == garbage


def test_remote_host_over_ssh_is_exact_and_sparse(store, sshd_server):
    data = disk_image(LAYOUT + "zzzz", seed=25)
    manifest = backup_image(store, "web1", {"vda": data})
    remote = sshd_server.workdir / "vda.raw"

    def destination(force: bool = False, url: str | None = None) -> SftpDestination:
        return SftpDestination.from_url(url or sshd_server.url(remote), force, key_file=sshd_server.key_file,
                                        known_hosts=sshd_server.known_hosts)

    result = restore_disk(store, manifest.backup_id, "vda", destination(), verify=True)
    assert result.verified
    assert remote.read_bytes() == data
    assert remote.stat().st_blocks * 512 <= len(data) - 5 * CHUNK
    assert os.listdir(sshd_server.workdir) == ["vda.raw"]
    with pytest.raises(TargetExistsError, match="force"):
        restore_disk(store, manifest.backup_id, "vda", destination())
    with pytest.raises(RestoreError, match="does not exist"):
        restore_disk(store, manifest.backup_id, "vda", destination(url=sshd_server.url(remote.parent / "no" / "x")))
    assert os.listdir(sshd_server.workdir) == ["vda.raw"]


def test_unknown_ssh_host_key_is_refused(store, sshd_server, tmp_path):
    manifest = backup_image(store, "web1", {"vda": disk_image("r", seed=26)})
    other_known_hosts = tmp_path / "known_hosts"
    other_known_hosts.write_text("")
    unknown = SftpDestination.from_url(sshd_server.url(sshd_server.workdir / "vda.raw"), False,
                                       key_file=sshd_server.key_file, known_hosts=other_known_hosts)
    with pytest.raises(RestoreError, match="cannot connect"):
        restore_disk(store, manifest.backup_id, "vda", unknown)
    assert os.listdir(sshd_server.workdir) == []


class LosesAWrite(FileDestination):
    """A raw file whose second data write never reaches the disk (a lying cache)."""

    def open(self, size: int):
        target = super().open(size)
        write, calls = target.write_at, []

        def lossy_write(offset, data):
            calls.append(offset)
            if len(calls) != 2:
                write(offset, data)
        target.write_at = lossy_write
        return target


def test_verify_catches_a_target_that_lost_a_write(store, tmp_path):
    manifest = backup_image(store, "web1", {"vda": disk_image("rrr", seed=27)})
    target = tmp_path / "vda.raw"
    with pytest.raises(VerifyError, match="differs from the backup in bytes"):
        restore_disk(store, manifest.backup_id, "vda", LosesAWrite(target, "raw", False), verify=True)
    assert not target.exists() and not list(tmp_path.glob(".vda.raw*"))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_verify_passes_for_files(store, tmp_path, fmt):
    data = disk_image(LAYOUT, tail=1536, seed=28)
    manifest = backup_image(store, "web1", {"vda": data})
    calls = []
    result = restore_disk(store, manifest.backup_id, "vda", tmp_path / f"vda.{fmt}", fmt=fmt, verify=True,
                          verify_progress=lambda *a: calls.append(a))
    assert result.verified and calls[-1] == (len(data), len(data))
