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
    GcUnsafeError,
    IndexCorruptError,
    InvalidNameError,
    ManifestCorruptError,
    NotAStoreError,
    RetentionRuleError,
    StoreBusyError,
    StoreConfigError,
    StoreError,
    StoreExistsError,
    StoreNotEmptyError,
)
from .gc import DEFAULT_GRACE, GcReport, collect_garbage
from .index import FixedIndex
from .manifest import BackupManifest, DiskEntry, DiskStats
from .names import new_backup_id
from .prune import PruneDecision, PruneReport, RetentionPolicy, is_protected, protect, prune, unprotect
from .stats import BackupUsage, StoreStats, store_stats
from .store import DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, Store
from .verify import BadChunk, ChunkUse, VerifyReport, verify_store
from .writer import BackupSession, DiskWriter

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_GRACE",
    "DEFAULT_ZSTD_LEVEL",
    "ZERO_DIGEST",
    "BackupExistsError",
    "BackupIncompleteError",
    "BackupManifest",
    "BackupNotFoundError",
    "BackupSession",
    "BackupUsage",
    "BackupWriteError",
    "BadChunk",
    "ChunkCorruptError",
    "ChunkMissingError",
    "ChunkUse",
    "ChunkWriteError",
    "DiskEntry",
    "DiskNotFoundError",
    "DiskStats",
    "DiskWriter",
    "FixedIndex",
    "GcReport",
    "GcUnsafeError",
    "IndexCorruptError",
    "InvalidNameError",
    "ManifestCorruptError",
    "NotAStoreError",
    "PruneDecision",
    "PruneReport",
    "RetentionPolicy",
    "RetentionRuleError",
    "Store",
    "StoreBusyError",
    "StoreConfigError",
    "StoreError",
    "StoreExistsError",
    "StoreNotEmptyError",
    "StoreStats",
    "VerifyReport",
    "collect_garbage",
    "is_protected",
    "new_backup_id",
    "protect",
    "prune",
    "store_stats",
    "unprotect",
    "verify_store",
]
