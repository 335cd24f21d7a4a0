"""How much the backups represent and how much they cost.

- logical_bytes: the sum of the disk sizes of every backup (what a restore of
  each would write, zeros included).
- zero_bytes: the part of logical_bytes in all-zero chunks (never stored).
- unique_bytes: plaintext size of the distinct chunks referenced.
- stored_bytes: size on disk of those chunk files (compressed).
- dedup_ratio = (logical_bytes - zero_bytes) / unique_bytes
- compression_ratio = unique_bytes / stored_bytes
- Per backup, unique_stored_bytes: bytes of the chunk files that only this
  backup references, i.e. what pruning it alone would free at the next GC.
- unreferenced_*: chunk files no backup references (GC will remove them once
  they are past the grace period).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from .chunks import chunk_digest
from .references import UnreadableBackup, walk_indexes
from .store import Store

# Owner value of a chunk referenced by more than one backup.
_SHARED = -1


@dataclass(frozen=True)
class BackupUsage:
    vm: str
    backup_id: str
    created: datetime
    logical_bytes: int
    unique_chunks: int
    unique_stored_bytes: int


@dataclass(frozen=True)
class StoreStats:
    backups: int
    unreadable_backups: int
    logical_bytes: int
    zero_bytes: int
    chunks: int
    unique_bytes: int
    stored_bytes: int
    missing_chunks: int
    unreferenced_chunks: int
    unreferenced_bytes: int
    dedup_ratio: float
    compression_ratio: float
    per_backup: tuple[BackupUsage, ...]
    seconds: float


def store_stats(store: Store) -> StoreStats:
    started = time.monotonic()
    backups: list[tuple[str, str, datetime]] = []
    ordinal: dict[str, int] = {}
    logical: dict[str, int] = {}
    zero_bytes = 0
    owner: dict[bytes, int] = {}  # digest -> ordinal of the only backup using it, or _SHARED
    plain: dict[bytes, int] = {}  # digest -> plaintext length
    unreadable: set[str] = set()
    for item in walk_indexes(store):
        if isinstance(item, UnreadableBackup):
            unreadable.add(item.backup_id)
            continue
        m, index = item.manifest, item.index
        if m.backup_id not in ordinal:
            ordinal[m.backup_id] = len(backups)
            backups.append((m.vm, m.backup_id, m.created))
        me = ordinal[m.backup_id]
        logical[m.backup_id] = logical.get(m.backup_id, 0) + index.disk_size
        data_bytes = 0
        for chunk_no, digest in index.stored_chunks():
            length = index.chunk_length(chunk_no)
            data_bytes += length
            plain[digest] = length
            if owner.setdefault(digest, me) != me:
                owner[digest] = _SHARED
        zero_bytes += index.disk_size - data_bytes

    file_sizes = _chunk_file_sizes(store)
    unique_stored = [0] * len(backups)
    unique_chunks = [0] * len(backups)
    for digest, who in owner.items():
        if who != _SHARED:
            unique_stored[who] += file_sizes.get(digest, 0)
            unique_chunks[who] += 1
    referenced_sizes = [file_sizes[d] for d in plain if d in file_sizes]
    unreferenced = [size for d, size in file_sizes.items() if d not in plain]
    logical_bytes = sum(logical.values())
    unique_bytes = sum(plain.values())
    stored_bytes = sum(referenced_sizes)
    return StoreStats(
        backups=len(backups),
        unreadable_backups=len(unreadable),
        logical_bytes=logical_bytes,
        zero_bytes=zero_bytes,
        chunks=len(plain),
        unique_bytes=unique_bytes,
        stored_bytes=stored_bytes,
        missing_chunks=len(plain) - len(referenced_sizes),
        unreferenced_chunks=len(unreferenced),
        unreferenced_bytes=sum(unreferenced),
        dedup_ratio=_ratio(logical_bytes - zero_bytes, unique_bytes),
        compression_ratio=_ratio(unique_bytes, stored_bytes),
        per_backup=tuple(
            BackupUsage(vm, backup_id, created, logical[backup_id], unique_chunks[n], unique_stored[n])
            for n, (vm, backup_id, created) in enumerate(backups)
        ),
        seconds=time.monotonic() - started,
    )


def _chunk_file_sizes(store: Store) -> dict[bytes, int]:
    sizes: dict[bytes, int] = {}
    for prefix in store.chunks.prefix_dirs():
        for _, entry in store.chunks.entries(prefix):
            digest = chunk_digest(entry.name)
            if digest is not None:
                sizes[digest] = entry.size
    return sizes


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0
