"""The few file operations a store needs, whatever holds its files.

A store is a tree of small and large files named by relative POSIX paths
("packs/ab/<name>", "backups/web1/<id>/manifest.json"). Everything above
this interface (packs, the block index, manifests, leases, GC, verify) is
written against it, so a backend only has to provide:

- atomic whole-file writes: a reader sees the old file, the new one or
  none, never a part (temporary sibling `.<name>.<hex>.tmp`, then rename);
  a pack is one such file, streamed in 8 MiB pieces;
- ranged reads: a restore reads the blocks it needs out of 64 MiB packs;
- mtimes from one clock, and touch (set the mtime to that clock's now):
  GC's safety rests on comparing them (see gc.py);
- rename, which GC uses to move a victim aside before deleting it;
- listing a directory with sizes and mtimes in one call;
- locks that die with their holder: flock on a local file system, a lease
  file kept fresh by a heartbeat on a remote one.

An object store fits the same shape: keys for names, PUT for atomic writes
(a pack is one object), GET with a Range header for ranged reads,
copy+delete for rename, and a lease object with a heartbeat for locks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Entry:
    """One directory entry: name (not path), size in bytes, mtime in ns on the store's clock."""

    name: str
    size: int
    mtime_ns: int
    is_dir: bool


class NewFile(Protocol):
    """What an atomic writer hands out: bytes are appended, nothing is read back or sought."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append data; returns its length."""


class Lock(Protocol):
    def release(self, unlink: bool = False) -> None:
        """Drop the lock; with unlink, remove its file first, while still holding it."""


class Backend(Protocol):
    location: str  # the path or URL the store was opened with, for messages and records
    clock_error_ns: int  # how far a touch's time may fall behind the store clock's now

    def create_root(self) -> None:
        """Create the store's own directory, and its missing parents."""

    def read(self, name: str) -> bytes:
        """The whole file; FileNotFoundError if it does not exist."""

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """length bytes from offset (fewer only at the end of the file); FileNotFoundError if it does not exist."""

    def atomic_writer(self, name: str) -> AbstractContextManager[NewFile]:
        """A file that replaces `name` (durably where the backend can) only if the block succeeds."""

    def make_dir(self, name: str) -> None:
        """Create a directory whose parent exists; an existing one is fine."""

    def stat(self, name: str) -> Entry | None:
        """The entry, or None if there is no such file or directory."""

    def list(self, name: str) -> list[Entry]:
        """The entries of a directory, unsorted; [] if the directory does not exist."""

    def touch(self, name: str) -> bool:
        """Set the file's mtime to now; False, creating nothing, if it does not exist."""

    def rename(self, source: str, target: str) -> None:
        """Rename, replacing target; FileNotFoundError if source is gone."""

    def remove(self, name: str) -> None:
        """Remove a file; a missing one is fine."""

    def remove_tree(self, name: str) -> None:
        """Remove a directory and everything in it; a missing one is fine."""

    def try_lock(self, name: str, create: bool = True) -> Lock | None:
        """The lock on `name`, or None when it is held (or, with create=False, does not exist)."""

    def create_lock(self, name: str, content: bytes) -> Lock:
        """Create `name` holding content and lock it; FileExistsError if it exists."""

    def close(self) -> None:
        """Release connections; the backend is not used afterwards."""


def join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def write_file(backend: Backend, name: str, data: bytes) -> int:
    with backend.atomic_writer(name) as f:
        f.write(data)
    return len(data)
