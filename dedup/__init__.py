"""Cairn's content-addressed block store (format 2; format 1 is read and upgraded).

A backup is a manifest naming, per disk, the root of an extent map (maps.py): a small tree
of pages that says which block holds each byte of the disk. Blocks, about a megabyte each
(block_size), are named by their BLAKE3 digest, stored once, zstd-compressed (and sealed, in
an encrypted store) in packs of about 64 MiB (packs.py) that are written once and never
changed; a block index (blockindex.py) says where each block is and can always be rebuilt
from the packs. A full backup stores each block-sized slot that holds data; an incremental
stores only the bytes that changed and splices them into its parent's map, so every backup
is a complete point that restores alone. The store's files live in a local directory, on an
SFTP server, in a Ceph pool (rados.py) or an S3 bucket (s3.py): backend.py is all they share,
and location.py names them. Pure storage: imports nothing from the rest of Cairn.

Who locks what (no lock blocks backups, restores or verify):

| operation           | takes                         | safe beside others because                      |
|---------------------|-------------------------------|-------------------------------------------------|
| backup (writer.py)  | writers/<id> lease            | packs are new files; it touches what it reuses  |
| restore, list, stats| nothing                       | packs never change; a moved pack is followed    |
| verify (verify.py)  | locks/gc only to rebuild index| reads only                                      |
| prune (prune.py)    | nothing                       | removing a manifest is one atomic step          |
| lock (immutability) | nothing                       | one record; prune, delete and GC read it        |
| GC (gc.py)          | locks/gc                      | packs newer than the cutoff are left alone      |
| repair (repair.py)  | locks/gc                      | the index is a cache of the packs               |
| upgrade (upgrade.py)| locks/gc                      | each backup switches with one manifest write    |

How each backend keeps those locks, and the clock GC's cutoff compares against:

| backend | a lock is                                    | dies with its holder         | clock          |
|---------|----------------------------------------------|------------------------------|----------------|
| local   | flock(2) on the file                         | at once (the kernel drops it)| the file system|
| SFTP    | the file's atime, refreshed every 30 s       | 120 s after the last beat    | server, ~2 s   |
| RADOS   | a RADOS object lock (cls_lock) on the entry's| 30 s after the last renewal, | Cairn hosts,   |
|         | directory object, renewed every 7.5 s        | expired by the OSD           | 2 s allowed    |
| S3      | a lease object rewritten by conditional PUT  | 60 s after the last beat,    | server (Date,  |
|         | (If-Match its ETag) every 15 s               | by the server's own clock    | LastModified)  |
"""

from .backend import Backend, Entry, Lock
from .codec import ZERO_DIGEST
from .config import StoreConfig
from .errors import (
    BackupExistsError,
    BackupIncompleteError,
    BackupLockedError,
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
    LockDateError,
    ManifestCorruptError,
    MapCorruptError,
    NotAStoreError,
    PassphraseRequiredError,
    RetentionRuleError,
    StoreBusyError,
    StoreConfigError,
    StoreError,
    StoreExistsError,
    StoreFormatError,
    StoreFullError,
    StoreLocationError,
    StoreMismatchError,
    StoreNotEmptyError,
    StoreUnreachableError,
    WrongKeyError,
    WrongPassphraseError,
)
from .gc import DEFAULT_GRACE, DEFAULT_REPACK_THRESHOLD, GcReport, collect_garbage
from .immutability import check_deletable, lock_backup, locked_until
from .legacy import FixedIndex
from .local import LocalBackend
from .location import is_remote, open_backend
from .manifest import BackupManifest, ChunkStats, DiskEntry, DiskStats, MapRoot
from .maps import MapEntry
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
from .rados import RadosBackend, RadosOptions
from .repair import RepairReport, rebuild_index
from .s3 import S3Backend, S3Options
from .sftp import SftpBackend, SshOptions
from .stats import BackupUsage, StoreStats, store_stats
from .store import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_PACK_SIZE,
    DEFAULT_ZSTD_LEVEL,
    KEY_FILE,
    BackupDir,
    BackupListing,
    DiskMap,
    Store,
    UnreadableBackup,
)
from .sync import Bandwidth, SyncProgress, SyncReport, open_replica, sync_store
from .upgrade import UpgradeReport, upgrade_store
from .verify import BadChunk, ChunkUse, VerifyReport, verify_store
from .writer import BackupSession, DiskWriter

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_GRACE",
    "DEFAULT_PACK_SIZE",
    "DEFAULT_REPACK_THRESHOLD",
    "DEFAULT_ZSTD_LEVEL",
    "KEY_FILE",
    "ZERO_DIGEST",
    "Backend",
    "BackupDir",
    "BackupExistsError",
    "BackupIncompleteError",
    "BackupListing",
    "BackupLockedError",
    "BackupManifest",
    "BackupNotFoundError",
    "BackupSession",
    "BackupUsage",
    "BackupWriteError",
    "BadChunk",
    "Bandwidth",
    "ChunkCorruptError",
    "ChunkMissingError",
    "ChunkStats",
    "ChunkUse",
    "ChunkWriteError",
    "DiskEntry",
    "DiskMap",
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
    "LockDateError",
    "ManifestCorruptError",
    "MapCorruptError",
    "MapEntry",
    "MapRoot",
    "NotAStoreError",
    "PassphraseRequiredError",
    "PruneDecision",
    "PruneReport",
    "RadosBackend",
    "RadosOptions",
    "RepairReport",
    "RetentionPolicy",
    "RetentionRuleError",
    "S3Backend",
    "S3Options",
    "SftpBackend",
    "SshOptions",
    "Store",
    "StoreBusyError",
    "StoreConfig",
    "StoreConfigError",
    "StoreError",
    "StoreExistsError",
    "StoreFormatError",
    "StoreFullError",
    "StoreLocationError",
    "StoreMismatchError",
    "StoreNotEmptyError",
    "StoreStats",
    "StoreUnreachableError",
    "SyncProgress",
    "SyncReport",
    "UnreadableBackup",
    "UpgradeReport",
    "VerifyReport",
    "WrongKeyError",
    "WrongPassphraseError",
    "check_deletable",
    "collect_garbage",
    "is_protected",
    "is_remote",
    "lock_backup",
    "locked_until",
    "new_backup_id",
    "open_backend",
    "open_replica",
    "protect",
    "prune",
    "rebuild_index",
    "store_stats",
    "sync_store",
    "unprotect",
    "upgrade_store",
    "verify_store",
]
