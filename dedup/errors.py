"""Errors raised by the store.

Every error subclasses StoreError so callers can catch store failures as one
family; the few that are caller mistakes also subclass ValueError or
LookupError so generic handlers treat them the usual way. "Chunk" in a name
means a block of a format-2 store as well as a chunk of format 1: the unit a
map or index names by its id.
"""

from datetime import datetime


class StoreError(Exception):
    """Base class of every error raised by dedup."""


class NotAStoreError(StoreError):
    """The path holds no valid Cairn store configuration."""


class StoreExistsError(StoreError):
    """Store.init was pointed at a directory that already is a store."""


class StoreNotEmptyError(StoreError):
    """Store.init was pointed at a non-empty directory that is not a store."""


class StoreConfigError(StoreError, ValueError):
    """A store setting (chunk size, compression level) is out of range."""


class InvalidNameError(StoreError, ValueError):
    """A VM name, disk name or backup id is unsafe to use as a path element."""


class BackupNotFoundError(StoreError, LookupError):
    """No committed backup has the requested id."""


class BackupExistsError(StoreError):
    """A backup with the requested id already exists or is being written."""


class DiskNotFoundError(StoreError, LookupError):
    """The backup has no disk of the requested name."""


class ManifestCorruptError(StoreError):
    """A manifest.json cannot be parsed or has an unsupported format."""


class IndexCorruptError(StoreError):
    """A backup's map of a disk cannot be read: a format-1 index file is missing, does not
    match its digest or is malformed, or a format-2 map page is."""


class MapCorruptError(IndexCorruptError):
    """A page of a format-2 disk map is missing, damaged, or not where the tree says it is."""


class ChunkMissingError(StoreError):
    """A block (chunk) a backup references is in no pack (no chunk file) of the store."""

    def __init__(self, message: str, chunk_id: str) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id


class ChunkCorruptError(StoreError):
    """A stored block (chunk) does not decrypt or decompress, or its content does not match its id."""

    def __init__(self, message: str, chunk_id: str) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id


class BackupWriteError(StoreError):
    """A backup session was used incorrectly (bad chunk number, length, state)."""


class BackupIncompleteError(BackupWriteError):
    """commit() found disk bytes that were never put or zeroed (nor inherited from a parent)."""


class ChunkWriteError(StoreError):
    """A worker failed to hash, compress or write a block; __cause__ has why."""


class StoreBusyError(StoreError):
    """Another process holds a lock this operation needs (e.g. a GC is already running)."""


class GcUnsafeError(StoreError):
    """GC cannot know every block in use (a manifest or map is unreadable), so it removes nothing."""


class StoreFormatError(StoreError):
    """The operation needs a format-2 store (or one whose upgrade has finished)."""


class RetentionRuleError(StoreError, ValueError):
    """A prune was asked with no keep rule or a negative count."""


class StoreLocationError(StoreError, ValueError):
    """A store location is neither a path nor a valid sftp://user@host[:port]/path URL."""


class StoreUnreachableError(StoreError):
    """A remote store's server cannot be reached or refused us."""


class KeyFileError(StoreError):
    """An encrypted store's key file is missing or malformed."""


class WrongPassphraseError(KeyFileError):
    """The passphrase does not open the key file."""


class WrongKeyError(KeyFileError):
    """The key opened but belongs to another store: its fingerprint differs from the store's config."""


class PassphraseRequiredError(KeyFileError):
    """The store is encrypted and no passphrase was given."""


class StoreFullError(StoreError):
    """The store's space ran out (a pool quota, a full cluster or bucket): nothing was lost, the
    write that needed space failed."""


class StoreMismatchError(StoreError):
    """A sync's target cannot take the source's blocks as they are: another block size or key."""


class LockDateError(StoreError, ValueError):
    """A retention lock's date is not one a lock takes: without a time zone, or not in the future."""


class BackupLockedError(StoreError):
    """The backup is under a retention lock: it cannot be deleted, nor the lock shortened, before `until`."""

    def __init__(self, message: str, backup_id: str, until: datetime) -> None:
        super().__init__(message)
        self.backup_id = backup_id
        self.until = until
