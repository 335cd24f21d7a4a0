"""File-level restore: list and extract files of a backed-up ext4 and xfs filesystem,
without booting anything and leaving no mount, loop device or server behind."""
from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from restore_helpers import backup_file
from store_helpers import new_store
from test_helper_processes import mounted_under

from dedup import Store
from restore import RestoreError
from restore.files import BackupFilesystem, FileRestoreError

MiB = 1 << 20


def sh(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path / "store")


@pytest.fixture
def content(tmp_path) -> Path:
    tree = tmp_path / "content"
    (tree / "etc").mkdir(parents=True)
    (tree / "data" / "deep").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("web1\n")
    (tree / "data" / "blob.bin").write_bytes(random.Random(5).randbytes(3 * MiB + 123))
    (tree / "data" / "deep" / "note.txt").write_text("kept\n")
    os.symlink("/etc/passwd", tree / "etc" / "escape")
    os.symlink("hostname", tree / "etc" / "name")
    return tree


@pytest.fixture
def browsing_dir(monkeypatch) -> Iterator[Path]:
    """The temporary directory this test's file browsers make theirs in: the suite's other tests
    browse backups at the same time, in /tmp. Short, as the export's socket goes inside it."""
    directory = Path(tempfile.mkdtemp(prefix="cf-"))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def left_behind(directory: Path) -> tuple[list[str], list[Path]]:
    """What file browsers left in `directory`: mounts inside it, and their own directories."""
    return mounted_under(str(directory)), list(directory.glob("cairn-files-*"))


def check_browsing(fs: BackupFilesystem, content: Path, tmp_path: Path) -> None:
    assert {e.name for e in fs.list("/")} >= {"etc", "data"}
    etc = {e.name: e for e in fs.list("/etc")}
    assert (etc["hostname"].kind, etc["hostname"].size) == ("file", 5)
    assert (etc["name"].kind, etc["name"].target) == ("symlink", "hostname")
    blob = fs.extract("/data/blob.bin", tmp_path / "blob.bin")
    assert blob.read_bytes() == (content / "data" / "blob.bin").read_bytes()
    tree = fs.extract("data", tmp_path / "data-copy")
    assert (tree / "deep" / "note.txt").read_text() == "kept\n"
    with fs.open("/etc/name") as f:
        assert f.read() == b"web1\n"
    with pytest.raises(FileRestoreError, match="leads out"):
        fs.open("/etc/escape")
    with pytest.raises(FileRestoreError, match="does not exist"):
        fs.list("/nope")
    with pytest.raises(FileRestoreError, match="not allowed"):
        fs.list("/etc/../..")
    with pytest.raises(FileRestoreError, match="already exists"):
        fs.extract("/etc/hostname", blob)


def test_files_from_ext4_disk(store, content, tmp_path, browsing_dir):
    image = tmp_path / "disk.raw"
    sh("mkfs.ext4", "-q", "-F", "-d", str(content), str(image), "64M")
    backup_id = backup_file(store, "web1", "vda", image)
    image.unlink()  # the backup alone is read
    with BackupFilesystem(store, backup_id, "vda") as fs:
        check_browsing(fs, content, tmp_path)
    assert left_behind(browsing_dir) == ([], [])


def write_mbr(image: Path, start_sector: int, sectors: int) -> None:
    """One Linux partition in an MBR partition table."""
    entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", start_sector, sectors)
    with open(image, "r+b") as f:
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")


def test_files_from_xfs_partition(store, content, tmp_path, browsing_dir):
    image = tmp_path / "disk.raw"
    size = 400 * MiB
    image.write_bytes(b"")
    os.truncate(image, size)
    write_mbr(image, 2048, size // 512 - 2048)
    loop = sh("losetup", "--find", "--show", f"--offset={MiB}", str(image)).strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        sh("mkfs.xfs", "-q", loop)
        sh("mount", loop, str(mnt))
        try:
            sh("cp", "-a", f"{content}/.", str(mnt))
        finally:
            sh("umount", str(mnt))
    finally:
        sh("losetup", "--detach", loop)
    backup_id = backup_file(store, "db1", "vdb", image)
    with pytest.raises(FileRestoreError, match="no filesystem"), BackupFilesystem(store, backup_id, "vdb"):
        pass
    with BackupFilesystem(store, backup_id, "vdb", partition=1) as fs:
        check_browsing(fs, content, tmp_path)
    assert left_behind(browsing_dir) == ([], [])


def test_files_from_an_encrypted_store(tmp_path, content, monkeypatch):
    """nbdkit unlocks the store as the CLI does, from $CAIRN_STORE_PASSPHRASE (never its command line)."""
    passphrase = "restore files from an encrypted store"
    store = Store.init(tmp_path / "store", passphrase=passphrase)
    image = tmp_path / "disk.raw"
    sh("mkfs.ext4", "-q", "-F", "-d", str(content), str(image), "32M")
    backup_id = backup_file(store, "web1", "vda", image)
    monkeypatch.setenv("CAIRN_STORE_PASSPHRASE", passphrase)
    with BackupFilesystem(store, backup_id, "vda") as fs:
        assert fs.extract("/etc/hostname", tmp_path / "hostname").read_text() == "web1\n"
    monkeypatch.delenv("CAIRN_STORE_PASSPHRASE")
    with pytest.raises(RestoreError, match="nbdkit could not serve"), BackupFilesystem(store, backup_id, "vda"):
        pass
