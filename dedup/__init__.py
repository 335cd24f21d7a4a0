"""Cairn's content-addressed chunk store.

Disk images are cut into fixed-size chunks named by their BLAKE3 digest and
stored once, zstd-compressed (and sealed, in an encrypted store); a backup is
a manifest plus one index (list of chunk ids) per disk. The store's files
live in a local directory or on an SFTP server (backend.py). Pure storage:
imports nothing from the rest of Cairn.
"""

from .backend import Backend, Entry, Lock
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
    KeyFileError,
    ManifestCorruptError,
    NotAStoreError,
    PassphraseRequiredError,
    RetentionRuleError,
    StoreBusyError,
    StoreConfigError,
    StoreError,
    StoreExistsError,
    StoreLocationError,
    StoreNotEmptyError,
    StoreUnreachableError,
    WrongKeyError,
    WrongPassphraseError,
)
from .gc import DEFAULT_GRACE, GcReport, collect_garbage
from .index import FixedIndex
from .local import LocalBackend
from .location import is_remote, open_backend
from .manifest import BackupManifest, DiskEntry, DiskStats
from .names import new_backup_id
from .prune import (
    PruneDecision,
    PruneReport,
    RetentionPolicy,
    is_protected,
    protect,
    prune,
    unprotect,
)
from .sftp import SftpBackend, SshOptions
from .stats import BackupUsage, StoreStats, store_stats
from .store import DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, KEY_FILE, BackupDir, Store
from .verify import BadChunk, ChunkUse, VerifyReport, verify_store
from .writer import BackupSession, DiskWriter

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_GRACE",
    "DEFAULT_ZSTD_LEVEL",
    "KEY_FILE",
    "ZERO_DIGEST",
    "Backend",
    "BackupDir",
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
    "Entry",
    "FixedIndex",
    "GcReport",
    "GcUnsafeError",
    "IndexCorruptError",
    "InvalidNameError",
    "KeyFileError",
    "LocalBackend",
    "Lock",
    "ManifestCorruptError",
    "NotAStoreError",
    "PassphraseRequiredError",
    "PruneDecision",
    "PruneReport",
    "RetentionPolicy",
    "RetentionRuleError",
    "SftpBackend",
    "SshOptions",
    "Store",
    "StoreBusyError",
    "StoreConfigError",
    "StoreError",
    "StoreExistsError",
    "StoreLocationError",
    "StoreNotEmptyError",
    "StoreStats",
    "StoreUnreachableError",
    "VerifyReport",
    "WrongKeyError",
    "WrongPassphraseError",
    "collect_garbage",
    "is_protected",
    "is_remote",
    "new_backup_id",
    "open_backend",
    "protect",
    "prune",
    "store_stats",
    "unprotect",
    "verify_store",
]
