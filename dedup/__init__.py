"""Cairn's content-addressed chunk store.

Disk images are cut into fixed-size chunks named by their BLAKE3 digest and
stored once, zstd-compressed; a backup is a manifest plus one index (list of
chunk ids) per disk. Pure storage: imports nothing from the rest of Cairn.
"""

from .codec import ZERO_DIGEST
from .errors import (
    BackupExistsError,
    BackupIncompleteError,
    BackupNotFoundError,
    BackupWriteError,
    ChunkCorruptError,
    ChunkMissingError,
    ChunkWriteError,
    DiskNotFoundError,
    IndexCorruptError,
    InvalidNameError,
    ManifestCorruptError,
    NotAStoreError,
    StoreConfigError,
    StoreError,
    StoreExistsError,
    StoreNotEmptyError,
)
from .index import FixedIndex
from .manifest import BackupManifest, DiskEntry, DiskStats
from .names import new_backup_id
from .store import DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, Store
from .writer import BackupSession, DiskWriter

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_ZSTD_LEVEL",
    "ZERO_DIGEST",
    "BackupExistsError",
    "BackupIncompleteError",
    "BackupManifest",
    "BackupNotFoundError",
    "BackupSession",
    "BackupWriteError",
    "ChunkCorruptError",
    "ChunkMissingError",
    "ChunkWriteError",
    "DiskEntry",
    "DiskNotFoundError",
    "DiskStats",
    "DiskWriter",
    "FixedIndex",
    "IndexCorruptError",
    "InvalidNameError",
    "ManifestCorruptError",
    "NotAStoreError",
    "Store",
    "StoreConfigError",
    "StoreError",
    "StoreExistsError",
    "StoreNotEmptyError",
    "new_backup_id",
]
