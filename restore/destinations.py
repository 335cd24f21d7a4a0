"""What a restore writes to, as the user names it: a file, a block device, an NBD export,
a file on a remote host, an RBD image in a Ceph pool.

A Destination checks the request before anything is read from the store,
opens a RestoreTarget for the disk, and afterwards commits or discards the
result. New files are built under a hidden partial name and renamed when
complete, so their name never holds a half-restored disk; a partial file whose
restoring process was killed is removed by the next start's sweep (procs).
Block devices and NBD exports are written in place: they are overwritten only
with force.

RBD images (rbd:POOL[/NAMESPACE]/IMAGE[?conf=PATH&id=USER&keyring=PATH]) are
built the same way: a new thin image `.IMAGE.cairn-partial` written through
QEMU's rbd driver (qemu-nbd), renamed with `rbd rename` when complete. Zeros
are never written, so the image allocates only the data. A partial image left
by a killed restore is removed by the next restore to the same name.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote

from dedup.fsutil import fsync_dir
from procs import Holding

from .errors import (
    RestoreError,
    TargetDirectoryError,
    TargetExistsError,
    TargetSizeError,
    TargetWriteError,
)
from .nbd_target import NbdTarget
from .targets import QemuNbdTarget, RawFileTarget, RestoreTarget, create_qcow2

FILE_FORMATS = ("raw", "qcow2")
NBD_SCHEMES = ("nbd://", "nbds://", "nbd+unix://", "nbds+unix://")
SSH_SCHEMES = ("ssh://", "sftp://")
RBD_SCHEME = "rbd:"


class Destination(Protocol):
    description: str

    def open(self, size: int) -> RestoreTarget:
        """Check the destination can take a disk of `size` bytes and open it for writing."""

    def commit(self) -> None:
        """After the target finished: the restored disk appears under its name."""

    def discard(self) -> None:
        """After a failure: remove whatever a partial restore created."""


class NewDiskDestination(Destination, Protocol):
    """A destination that creates the disk (a file, an RBD image), so a whole-VM restore can take it back."""

    def remove(self) -> None:
        """After commit: the restored disk goes again (a later disk of the same VM failed)."""


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

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

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


@dataclass(frozen=True)
class RbdImage:
    """An RBD image: pool, optional namespace, name, and how to reach the cluster (None: librados' defaults)."""

    pool: str
    namespace: str
    image: str
    conf: str | None = None
    user: str | None = None
    keyring: str | None = None

    @classmethod
    def parse(cls, spec: str) -> RbdImage:
        """rbd:POOL[/NAMESPACE]/IMAGE[?conf=PATH&id=USER&keyring=PATH]."""
        body, _, query = spec.removeprefix(RBD_SCHEME).partition("?")
        parts = [unquote(p) for p in body.split("/")]
        try:
            options = {k: v[0] for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
        except ValueError:
            options = {"?": query}
        if len(parts) not in (2, 3) or not all(parts) or set(options) - {"conf", "id", "keyring"}:
            raise RestoreError(f"{spec!r} is not rbd:POOL[/NAMESPACE]/IMAGE[?conf=PATH&id=USER&keyring=PATH]")
        return cls(parts[0], parts[1] if len(parts) == 3 else "", parts[-1], options.get("conf"),
                   options.get("id"), options.get("keyring"))

    def named(self, image: str) -> RbdImage:
        return replace(self, image=image)

    def __str__(self) -> str:
        return f"{RBD_SCHEME}{self.pool}/{self.namespace + '/' if self.namespace else ''}{self.image}"

    @property
    def qemu_filename(self) -> str:
        """QEMU's rbd: syntax (a `:` or `\\` in a value is escaped); keyring= reaches librados as is."""
        options = {"conf": self.conf, "id": self.user, "keyring": self.keyring}
        spec = f"{self.pool}/{self.namespace + '/' if self.namespace else ''}{self.image}"
        return RBD_SCHEME + _qemu_escape(spec) + "".join(f":{k}={_qemu_escape(v)}" for k, v in options.items() if v)

    def rbd(self, *args: str, missing_ok: bool = False) -> bool:
        """Run the rbd tool against this image's cluster; False if the image does not exist and missing_ok."""
        reach = [*(["-c", self.conf] if self.conf else []), *(["--id", self.user] if self.user else []),
                 *(["--keyring", self.keyring] if self.keyring else []),
                 *(["--namespace", self.namespace] if self.namespace else [])]
        try:
            done = subprocess.run(["rbd", *reach, *args], capture_output=True, text=True,
                                  timeout=600, check=False, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise RestoreError("restoring into RBD needs the rbd tool: apt-get install ceph-common") from None
        if done.returncode == 0:
            return True
        if missing_ok and "No such file or directory" in done.stderr:
            return False
        raise TargetWriteError(f"rbd {' '.join(args)}: {done.stderr.strip() or f'exit status {done.returncode}'}")


class RbdDestination:
    """A new thin RBD image, built under a partial name and renamed when complete."""

    def __init__(self, image: RbdImage, force: bool) -> None:
        self.image = image
        self.force = force
        self.description = f"RBD image {image}"
        self._partial = image.named(f".{image.image}.cairn-partial")
        self._replaces = False

    def open(self, size: int) -> RestoreTarget:
        self._replaces = self._exists(self.image)
        if self._replaces and not self.force:
            raise TargetExistsError(f"{self.image} already exists; restore with force to replace it")
        self._partial.rbd("rm", f"{self.image.pool}/{self._partial.image}", missing_ok=True)  # an interrupted restore's
        create = ["qemu-img", "create", "-q", "-f", "raw", self._partial.qemu_filename, str(size)]
        done = subprocess.run(create, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise TargetWriteError(f"qemu-img could not create {self._partial}: {done.stderr.strip()}")
        try:
            return QemuNbdTarget(self._partial.qemu_filename, "raw", fresh=True)
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        if self._replaces:
            self.image.rbd("rm", self._path(self.image), missing_ok=True)
        self.image.rbd("rename", self._path(self._partial), self._path(self.image))

    def discard(self) -> None:
        self._partial.rbd("rm", self._path(self._partial), missing_ok=True)

    def remove(self) -> None:
        self.image.rbd("rm", self._path(self.image), missing_ok=True)

    def _exists(self, image: RbdImage) -> bool:
        return image.rbd("info", self._path(image), missing_ok=True)

    @staticmethod
    def _path(image: RbdImage) -> str:
        return f"{image.pool}/{image.image}"


def _qemu_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def parse_destination(spec: str | os.PathLike[str], fmt: str = "raw", force: bool = False,
                      ssh_key: Path | None = None, known_hosts: Path | None = None) -> Destination:
    """The destination a user names: nbd://... or nbd+unix://..., ssh:// or sftp://user@host:port/path,
    rbd:POOL/IMAGE?conf=PATH, a block device, or an image file path."""
    text = os.fspath(spec)
    if text.startswith(RBD_SCHEME):
        _raw_only(fmt, "an RBD image")
        return RbdDestination(RbdImage.parse(text), force)
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
