"""How much the backups represent and how much they cost.

- logical_bytes: the sum of the disk sizes of every backup (what a restore of each would
  write, zeros included).
- zero_bytes: the part of logical_bytes in holes (never stored).
- chunks, unique_bytes: the distinct blocks referenced (format 1: chunks) and their plaintext.
- stored_bytes: what those blocks take in the packs (record headers included; format 1: the
  chunk files).
- metadata_bytes: what the backups' map pages take in the packs.
- dedup_ratio = (logical_bytes - zero_bytes) / unique_bytes
- compression_ratio = unique_bytes / stored_bytes
- Per backup, unique_stored_bytes: stored bytes of the blocks only this backup references,
  i.e. what pruning it alone would make reclaimable (GC frees them once their packs are
  repacked or dead, gc.py).
- unreferenced_*: blocks in the packs that no backup references (and chunk files no format-1
  backup references).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from .errors import IndexCorruptError
from .legacy import chunk_digest
from .packs import RECORD_SIZE
from .references import each_disk
from .store import DiskMap, Store

# Owner value of a block referenced by more than one backup.
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
    metadata_bytes: int = 0
    packs: int = 0
    pack_bytes: int = 0


def store_stats(store: Store) -> StoreStats:
    started = time.monotonic()
    backups: list[tuple[str, str, datetime]] = []
    ordinal: dict[str, int] = {}
    logical: dict[str, int] = {}
    zero_bytes = 0
    owner: dict[bytes, int] = {}  # block id -> ordinal of the only backup using it, or _SHARED
    pages: set[bytes] = set()
    unreadable: set[str] = set()
    leaf_cache: dict[bytes, tuple[tuple[bytes, ...], int]] = {}  # leaf page -> (block ids, data bytes)
    chunk_plain: dict[bytes, int] = {}  # format-1 chunk -> its length
    for manifest, disk in each_disk(store, on_unreadable=lambda u: unreadable.add(u.backup_id)):
        if manifest.backup_id not in ordinal:
            ordinal[manifest.backup_id] = len(backups)
            backups.append((manifest.vm, manifest.backup_id, manifest.created))
        me = ordinal[manifest.backup_id]
        logical[manifest.backup_id] = logical.get(manifest.backup_id, 0) + disk.size
        try:
            ids, data_bytes = _disk_blocks(disk, pages, leaf_cache, chunk_plain)
        except IndexCorruptError:
            unreadable.add(manifest.backup_id)
            continue
        zero_bytes += disk.size - data_bytes
        for block_id in ids:
            if owner.setdefault(block_id, me) != me:
                owner[block_id] = _SHARED

    stored, plain, unreferenced = _stored_sizes(store, owner, pages)
    plain |= chunk_plain
    unique_stored = [0] * len(backups)
    unique_chunks = [0] * len(backups)
    for block_id, who in owner.items():
        if who != _SHARED and block_id in stored:
            unique_stored[who] += stored[block_id]
            unique_chunks[who] += 1
    logical_bytes = sum(logical.values())
    unique_bytes = sum(plain.get(b, 0) for b in owner)
    stored_bytes = sum(stored.get(b, 0) for b in owner)
    index = store.blocks.index
    return StoreStats(
        backups=len(backups),
        unreadable_backups=len(unreadable),
        logical_bytes=logical_bytes,
        zero_bytes=zero_bytes,
        chunks=len(owner),
        unique_bytes=unique_bytes,
        stored_bytes=stored_bytes,
        missing_chunks=sum(1 for b in owner if b not in stored),
        unreferenced_chunks=len(unreferenced),
        unreferenced_bytes=sum(unreferenced.values()),
        dedup_ratio=_ratio(logical_bytes - zero_bytes, unique_bytes),
        compression_ratio=_ratio(unique_bytes, stored_bytes),
        per_backup=tuple(
            BackupUsage(vm, backup_id, created, logical[backup_id], unique_chunks[n], unique_stored[n])
            for n, (vm, backup_id, created) in enumerate(backups)
        ),
        seconds=time.monotonic() - started,
        metadata_bytes=sum(stored.get(p, 0) for p in pages),
        packs=len(index.packs),
        pack_bytes=sum(p.size for p in index.packs.values()),
    )


def _disk_blocks(disk: DiskMap, pages: set[bytes], leaf_cache: dict[bytes, tuple[tuple[bytes, ...], int]],
                 chunk_plain: dict[bytes, int]) -> tuple[set[bytes], int]:
    """The blocks one disk references and its data bytes; the pages of its map go into pages,
    a format-1 disk's chunk lengths into chunk_plain."""
    tree = disk.tree
    if tree is None:
        entries = list(disk.entries())
        for e in entries:
            chunk_plain[e.block_id] = e.block_offset + e.length
        return {e.block_id for e in entries}, sum(e.length for e in entries)
    ids: set[bytes] = set()
    data_bytes = 0
    for page_id, level, start in tree.pages():
        pages.add(page_id)
        if level:
            continue
        if page_id not in leaf_cache:
            leaf = tree.leaf(start // tree.shape.leaf_span, page_id)
            leaf_cache[page_id] = (leaf.block_ids, sum(e.length for e in leaf.entries))
        block_ids, length = leaf_cache[page_id]
        ids.update(block_ids)
        data_bytes += length
    return ids, data_bytes


def _stored_sizes(store: Store, referenced: dict[bytes, int], pages: set[bytes]
                  ) -> tuple[dict[bytes, int], dict[bytes, int], dict[bytes, int]]:
    """Stored and plain size of every block and chunk in the store; the unreferenced ones' stored sizes."""
    stored: dict[bytes, int] = {}
    plain: dict[bytes, int] = {}
    if store.config.layout == 2:
        for info in store.blocks.ensure_loaded().packs.values():
            for r in info.records:
                stored.setdefault(r.block_id, RECORD_SIZE + r.stored_length)
                plain.setdefault(r.block_id, r.plain_length)
    for _, entry in store.chunks.files():
        digest = chunk_digest(entry.name)
        if digest is not None:
            stored[digest] = entry.size
    unreferenced = {b: size for b, size in stored.items() if b not in referenced and b not in pages}
    return stored, plain, unreferenced


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 1.0
