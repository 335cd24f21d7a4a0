"""The local directory backend: a store on a file system this host mounts.

Writes are durable (fsync of the file, then of its directory after the
rename); mtimes come from the file system, so all writers on one NFS or
local mount share one clock; locks are flock(2) (locks.py).
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import AbstractContextManager
from pathlib import Path

from .backend import Backend, Entry
from .errors import StoreError
from .fsutil import AppendFile, atomic_file, fsync_dir, mkdir_durable
from .locks import FileLock, create_locked


class LocalBackend:
    clock_error_ns = 0  # one file system, one clock, nanosecond times

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, name: str) -> str:
        # Strings, not Path objects: GC and stats join a path per chunk file, and pathlib's
        # parsing was a quarter of a GC's time.
        return f"{self.location}/{name}" if name else self.location

    def create_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def read(self, name: str) -> bytes:
        with open(self._path(name), "rb") as f:
            return f.read()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        fd = os.open(self._path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def atomic_writer(self, name: str) -> AbstractContextManager[AppendFile]:
        return atomic_file(self.root / name)

    def make_dir(self, name: str) -> None:
        mkdir_durable(self.root / name, exist_ok=True)

    def stat(self, name: str) -> Entry | None:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            return None
        return Entry(name.rsplit("/", 1)[-1], st.st_size, st.st_mtime_ns, stat.S_ISDIR(st.st_mode))

    def list(self, name: str) -> list[Entry]:
        entries = []
        try:
            with os.scandir(self._path(name)) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # renamed or removed while we listed
                    entries.append(Entry(e.name, st.st_size, st.st_mtime_ns, e.is_dir(follow_symlinks=False)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return entries

    def touch(self, name: str) -> bool:
        try:
            os.utime(self._path(name))
        except FileNotFoundError:
            return False
        return True

    def rename(self, source: str, target: str) -> None:
        os.rename(self._path(source), self._path(target))

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def remove_tree(self, name: str) -> None:
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        # Durable: a pruned backup whose directory came back after a crash would want chunks GC freed.
        fsync_dir(path.parent)

    def try_lock(self, name: str, create: bool = True) -> FileLock | None:
        return FileLock.try_acquire(self.root / name, create=create)

    def create_lock(self, name: str, content: bytes) -> FileLock:
        return create_locked(self.root / name, content)

    def close(self) -> None:
        pass


def local_file(backend: Backend, name: str) -> Path:
    """The path of a store file, for tools and tests that work on files; local stores only."""
    if not isinstance(backend, LocalBackend):
        raise StoreError(f"store {backend.location} is not a local directory")
    return backend.root / name
