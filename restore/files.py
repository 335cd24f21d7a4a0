"""File-level restore: browse and copy files out of a backup point without booting the VM.

The disk (or one partition of it) is served read-only from the store (nbdkit,
export.py), shown to the kernel as a file by nbdfuse, attached to a read-only
loop device and mounted read-only without log replay (ext4 noload, xfs
norecovery): nothing on the way can write, neither to the store nor to the VM's
disks, which are never opened. Any filesystem the kernel can mount works;
ext4 and xfs are tested.

nbdkit and nbdfuse are helpers (procs) that die with the browsing process; the
loop device and the mounts they leave are recorded, and released by the next
start's sweep.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Self

from dedup import Store
from procs import Holding

from .errors import RestoreError
from .export import BackupExport
from .restorer import select_disk

# Mount options that keep the kernel from writing to the device (journal replay).
READ_ONLY_OPTIONS = {"ext4": "ro,noload", "ext3": "ro,noload", "xfs": "ro,norecovery,nouuid"}


class FileRestoreError(RestoreError):
    """The filesystem cannot be opened, or the path cannot be used."""


class FileNotInBackupError(FileRestoreError):
    """The path does not exist in the backed-up filesystem."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    kind: str  # file, dir, symlink, other
    size: int
    mtime: float
    target: str | None = None  # where a symlink points


class BackupFilesystem:
    """`with BackupFilesystem(store, backup_id, "vda", partition=1) as fs: fs.list("/etc")`.

    partition None means the filesystem fills the whole disk."""

    def __init__(self, store: Store, backup_id: str, disk: str | None, partition: int | None = None) -> None:
        self.disk = select_disk(store.get_backup(backup_id), disk).name
        self._store, self._backup_id, self._partition = store, backup_id, partition
        self._dir: Path | None = None
        self._holding: Holding | None = None
        self._export: BackupExport | None = None
        self._fuse: subprocess.Popen[bytes] | None = None
        self._loop: str | None = None
        self._mounted = False

    @property
    def root(self) -> Path:
        """Where the filesystem is mounted (read-only), while it is."""
        if self._dir is None:
            raise FileRestoreError("the backup's filesystem is not mounted")
        return self._dir / "mnt"

    def __enter__(self) -> Self:
        return self.mount()

    def mount(self) -> Self:
        """Serve, attach and mount the filesystem; close() undoes it."""
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def list(self, path: str = "/") -> list[FileEntry]:
        where = self._resolve(path, follow=True)
        if not where.is_dir():
            raise FileRestoreError(f"{path} is not a directory in backup {self._backup_id} disk {self.disk}")
        return sorted((_entry(e) for e in os.scandir(where)), key=lambda e: e.name)

    def extract(self, path: str, destination: Path) -> Path:
        """Copy a file or a directory tree (symlinks as symlinks) to destination, which must not exist."""
        source = self._resolve(path, follow=False)
        if destination.exists() or destination.is_symlink():
            raise FileRestoreError(f"{destination} already exists")
        if not destination.parent.is_dir():
            raise FileRestoreError(f"directory {destination.parent} does not exist")
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, destination, symlinks=True)
        else:
            shutil.copy2(source, destination, follow_symlinks=False)
        return destination

    def open(self, path: str) -> BinaryIO:
        source = self._resolve(path, follow=True)
        if not source.is_file():
            raise FileRestoreError(f"{path} is not a regular file in backup {self._backup_id} disk {self.disk}")
        return open(source, "rb")

    def close(self) -> None:
        """Undo every step of _open that happened, in reverse."""
        if self._mounted:
            _run(["umount", str(self.root)])
            self._mounted = False
        if self._loop is not None:
            _run(["losetup", "--detach", self._loop])
            self._loop = None
        if self._fuse is not None:
            _run(["fusermount3", "-u", str(self.root.with_name("fuse"))], check=False)
            try:
                self._fuse.wait(10)
            except subprocess.TimeoutExpired:
                self._fuse.kill()
                self._fuse.wait()
            self._fuse = None
        if self._export is not None:
            self._export.stop()
            self._export = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._holding is not None:
            self._holding.close()
            self._holding = None

    def _open(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="cairn-files-"))
        self._holding = held = Holding(f"files of backup {self._backup_id} disk {self.disk} in {self._dir}")
        held.remove(self._dir)
        self._export = BackupExport.start(self._store.location, self._backup_id, self.disk, self._dir / "nbd.sock",
                                          self._partition)
        (self._dir / "fuse").mkdir()
        image = self._dir / "fuse" / "disk"
        self._fuse = held.spawn(["nbdfuse", "--readonly", str(image), self._export.uri],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        held.unmount(image.parent)
        _wait_for(image, self._fuse)
        self._loop = device = _run(["losetup", "--find", "--show", "--read-only", str(image)]).strip()
        held.detach_loop(device, image)
        fstype = _run(["blkid", "--probe", "--output", "value", "--match-tag", "TYPE", device], check=False).strip()
        if not fstype:
            raise FileRestoreError(f"no filesystem found on backup {self._backup_id} disk {self.disk}"
                                   + (f" partition {self._partition}" if self._partition else ""))
        self.root.mkdir()
        options = READ_ONLY_OPTIONS.get(fstype, "ro")
        held.unmount(self.root)
        _run(["mount", "-t", fstype, "-o", options, device, str(self.root)])
        self._mounted = True

    def _resolve(self, path: str, follow: bool) -> Path:
        """The path inside the mounted filesystem. Symlinks on the way (and at the end, with
        follow) are resolved, and may not lead out of it: an absolute link in the guest
        would otherwise name a file of this host."""
        relative = PurePosixPath("/", path).relative_to("/")
        if ".." in relative.parts:
            raise FileRestoreError(f"{path}: '..' is not allowed")
        where = self.root / relative
        real = Path(os.path.realpath(where)) if follow else Path(os.path.realpath(where.parent)) / where.name
        if real != self.root and self.root not in real.parents:
            raise FileRestoreError(f"{path} leads out of the backed-up filesystem")
        if not (where.exists() or where.is_symlink()):
            raise FileNotInBackupError(f"{path} does not exist in backup {self._backup_id} disk {self.disk}")
        return where


def _entry(entry: os.DirEntry[str]) -> FileEntry:
    info = entry.stat(follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        return FileEntry(entry.name, "symlink", info.st_size, info.st_mtime, os.readlink(entry.path))
    kind = "dir" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
    return FileEntry(entry.name, kind, info.st_size, info.st_mtime)


def _run(command: list[str], check: bool = True) -> str:
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise FileRestoreError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            _, errors = process.communicate()
            raise FileRestoreError(f"nbdfuse exited: {errors.decode(errors='replace').strip()}")
        if time.monotonic() > deadline:
            raise FileRestoreError(f"{path} did not appear within {timeout:.0f}s")
        time.sleep(0.05)
