"""Crash-safe file system primitives.

A file written through atomic_file is either absent or complete after a
crash: the data goes to a temporary sibling, is fsync'd, renamed over the
final name, and the directory is fsync'd so the rename itself is durable.

Large page-aligned writes at page-aligned offsets (a pack's 8 MiB segments,
packs.py) go around the page cache with O_DIRECT. A store's packs are
written once and read rarely: through the page cache they push out what the
host's VMs and restores use, and every byte costs a page-cache page first.
In a VM whose memory its host backs lazily or takes back once freed (this
project's test machines), that page was the largest cost of a full backup
after compression: in one process backing up fresh copies of the bench
disk, the third and fourth full backups spent 1.6-1.8 CPU s in the kernel
for 600 MiB of packs and took 3.1-3.4 s, against 0.4 and 2.3 s for the
first; with O_DIRECT every one spent 0.2-0.3 s and took 2.0-2.3 s
(bench/store.py, "repeated").
Where O_DIRECT is refused (a file system without it, memory the device
cannot take), the file is written as before.
"""

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# Direct I/O needs offsets, lengths and memory aligned to the device's block size; a page is a
# multiple of every block size Linux supports.
DIRECT_ALIGNMENT = 4096
# Smaller writes are left to the page cache: direct I/O pays off on large sequential writes.
DIRECT_MIN = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_sibling(path: Path) -> Path:
    """A hidden, unique name next to path; GC recognises the .tmp suffix."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


class AppendFile:
    """A new file written front to back: a large aligned piece at an aligned offset is written
    with O_DIRECT, everything else through the buffered file."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self._path = path
        self._f = f
        self._direct_fd: int | None = None
        self._direct = True   # until refused once

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        view = memoryview(data).cast("B")
        length = view.nbytes
        at = self._f.tell()
        whole = length - length % DIRECT_ALIGNMENT
        if self._direct and whole >= DIRECT_MIN and at % DIRECT_ALIGNMENT == 0:
            self._f.flush()
            written = self._write_direct(view[:whole], at)
            if written:
                self._f.seek(at + written)
                view = view[written:]
        if view:
            self._f.write(view)
        return length

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def _write_direct(self, view: memoryview, at: int) -> int:
        """Bytes written with O_DIRECT from the start of view; 0 (and no more tries) if refused."""
        written = 0
        try:
            if self._direct_fd is None:
                self._direct_fd = os.open(self._path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            while written < len(view):
                written += os.pwrite(self._direct_fd, view[written:], at + written)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct = False   # no O_DIRECT here, or misaligned memory: the rest goes buffered
        return written


@contextmanager
def atomic_file(path: Path) -> Iterator[AppendFile]:
    """Yield a file that replaces path, durably, only if the block succeeds."""
    tmp = _temp_sibling(path)
    try:
        with open(tmp, "xb") as f:
            appender = AppendFile(tmp, f)
            try:
                yield appender
                f.flush()
                os.fsync(f.fileno())
            finally:
                appender.close()
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def mkdir_durable(path: Path, exist_ok: bool = False) -> None:
    """mkdir, then fsync the parent so the new entry survives a crash."""
    try:
        path.mkdir()
    except FileExistsError:
        if not exist_ok:
            raise
        return
    fsync_dir(path.parent)
