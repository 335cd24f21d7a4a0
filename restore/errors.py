"""Errors raised by restore. Store-level failures (unknown backup, corrupt
index) propagate as the dedup errors that name them."""


class RestoreError(Exception):
    """Base class of every error raised by restore."""


class TargetExistsError(RestoreError):
    """The target path exists and force was not given, or it is not a regular file."""


class TargetDirectoryError(RestoreError):
    """The directory that should hold the target does not exist."""


class DiskSelectionError(RestoreError):
    """No disk name was given and the backup does not have exactly one disk."""


class CorruptBackupError(RestoreError):
    """A block of the backup is missing or does not match its id; offset is the first disk byte it holds."""

    def __init__(self, message: str, *, backup_id: str, disk: str, offset: int, chunk_id: str) -> None:
        super().__init__(message)
        self.backup_id = backup_id
        self.disk = disk
        self.offset = offset
        self.chunk_id = chunk_id


class TargetWriteError(RestoreError):
    """Creating or writing the target image failed (qemu-img, qemu-nbd, NBD)."""


class TargetSizeError(RestoreError):
    """An existing target (block device, NBD export) is smaller than the disk."""


class VerifyError(RestoreError):
    """Reading the restored target back did not give the backup's bytes."""
