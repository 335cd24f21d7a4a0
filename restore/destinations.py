"""What a restore writes to, as the user names it: a file, a block device, an NBD export,
a file on a remote host.

A Destination checks the request before anything is read from the store,
opens a RestoreTarget for the disk, and afterwards commits or discards the
result. New files are built under a hidden partial name and renamed when
complete, so their name never holds a half-restored disk; a partial file whose
restoring process was killed is removed by the next start's sweep (procs).
Block devices and NBD exports are written in place: they are overwritten only
with force.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Protocol

from dedup.fsutil import fsync_dir
from procs import Holding

from .errors import (
    RestoreError,
    TargetDirectoryError,
    TargetExistsError,
    TargetSizeError,
)
from .nbd_target import NbdTarget
from .targets import QemuNbdTarget, RawFileTarget, RestoreTarget, create_qcow2

FILE_FORMATS = ("raw", "qcow2")
NBD_SCHEMES = ("nbd://", "nbds://", "nbd+unix://", "nbds+unix://")
SSH_SCHEMES = ("ssh://", "sftp://")


class Destination(Protocol):
    description: str

    def open(self, size: int) -> RestoreTarget:
        """Check the destination can take a disk of `size` bytes and open it for writing."""

    def commit(self) -> None:
        """After the target finished: the restored disk appears under its name."""

    def discard(self) -> None:
        """After a failure: remove whatever a partial restore created."""


def partial_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.cairn-partial")


class FileDestination:
    """A new raw (sparse) or qcow2 image file."""

    def __init__(self, path: Path, fmt: str, force: bool) -> None:
        if fmt not in FILE_FORMATS:
            raise RestoreError(f"unsupported target format {fmt!r} (supported: {', '.join(FILE_FORMATS)})")
        if path.name in ("", ".", ".."):
            raise TargetDirectoryError(f"cannot restore to {str(path)!r}: name an image file, not a directory")
        self.path = path
        self.fmt = fmt
        self.force = force
        self.description = f"{path} ({fmt})"
        self._partial = partial_name(path)
        self._holding: Holding | None = None

    def open(self, size: int) -> RestoreTarget:
        self._check()
        # A leftover of an interrupted restore to the same target.
        self._partial.unlink(missing_ok=True)
        self._holding = Holding(f"restore to {self.path.absolute()}")
        try:
            if self.fmt == "raw":
                target = RawFileTarget(self._partial, size)
                self._holding.remove(self._partial.absolute())
                return target
            create_qcow2(self._partial.absolute(), size)
            self._holding.remove(self._partial.absolute())
            return QemuNbdTarget(self._partial, "qcow2", fresh=True)
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        os.replace(self._partial, self.path)
        fsync_dir(self.path.parent)
        self._release()

    def discard(self) -> None:
        self._partial.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        if self._holding is not None:
            self._holding.close()
            self._holding = None

    def _check(self) -> None:
        target = self.path
        if not target.parent.is_dir():
            raise TargetDirectoryError(f"cannot restore to {target}: directory {target.parent} does not exist")
        # Replacing a directory or a device node with an image file is never
        # what was meant, force or not.
        if target.exists() and not target.is_file():
            raise TargetExistsError(f"cannot restore to {target}: it exists and is not a regular file")
        if (target.exists() or target.is_symlink()) and not self.force:
            raise TargetExistsError(f"{target} already exists; restore with --force (the API's force) to replace it")


class BlockDeviceDestination:
    """A block device (a disk, a partition, a loop device, an LVM volume), written in place
    through qemu-nbd so zero ranges become BLKZEROOUT/discard."""

    def __init__(self, path: Path, force: bool) -> None:
        self.path = path
        self.force = force
        self.description = f"block device {path}"

    def open(self, size: int) -> RestoreTarget:
        if not self.force:
            raise TargetExistsError(f"{self.path} is a block device and its data would be overwritten; "
                                    "restore with --force (the API's force) to do so")
        device_size = _device_size(self.path)
        if device_size < size:
            raise TargetSizeError(f"block device {self.path} has {device_size} bytes, the disk needs {size}")
        return QemuNbdTarget(self.path, "raw", fresh=False)

    def commit(self) -> None:
        """Written in place: nothing to rename."""

    def discard(self) -> None:
        """A device cannot be un-written; the error that ended the restore says so."""


class NbdDestination:
    """An export of any NBD server, written in place."""

    def __init__(self, uri: str, force: bool) -> None:
        self.uri = uri
        self.force = force
        self.description = f"NBD export {uri}"

    def open(self, size: int) -> RestoreTarget:
        if not self.force:
            raise TargetExistsError(f"the data of NBD export {self.uri} would be overwritten; "
                                    "restore with --force (the API's force) to do so")
        target = NbdTarget.connect_uri(self.uri)
        try:
            if target.read_only():
                raise TargetExistsError(f"NBD export {self.uri} is read-only")
            if target.size() < size:
                raise TargetSizeError(f"NBD export {self.uri} has {target.size()} bytes, the disk needs {size}")
        except BaseException:
            target.abort()
            raise
        return target

    def commit(self) -> None:
        """Written in place: nothing to rename."""

    def discard(self) -> None:
        """An export cannot be un-written; the error that ended the restore says so."""


def parse_destination(spec: str | os.PathLike[str], fmt: str = "raw", force: bool = False,
                      ssh_key: Path | None = None, known_hosts: Path | None = None) -> Destination:
    """The destination a user names: nbd://... or nbd+unix://..., ssh:// or sftp://user@host:port/path,
    a block device, or an image file path."""
    text = os.fspath(spec)
    if text.startswith(NBD_SCHEMES):
        _raw_only(fmt, "an NBD export")
        return NbdDestination(text, force)
    if text.startswith(SSH_SCHEMES):
        from .ssh_target import (
            SftpDestination,  # paramiko is loaded only for remote restores
        )

        _raw_only(fmt, "a remote file over SSH")
        return SftpDestination.from_url(text, force, key_file=ssh_key, known_hosts=known_hosts)
    path = Path(text)
    if path.exists() and stat.S_ISBLK(path.stat().st_mode):
        _raw_only(fmt, "a block device")
        return BlockDeviceDestination(path, force)
    return FileDestination(path, fmt, force)


def _raw_only(fmt: str, what: str) -> None:
    if fmt != "raw":
        raise RestoreError(f"{what} receives the disk's raw bytes; format {fmt!r} does not apply")


def _device_size(path: Path) -> int:
    # O_EXCL on a block device fails with EBUSY while the kernel uses it (mounted, in a VG, ...).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise TargetExistsError(f"block device {path} is in use (mounted or held by another device)") from e
        raise TargetExistsError(f"cannot open block device {path}: {e.strerror}") from e
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
