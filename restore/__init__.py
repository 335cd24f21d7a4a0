"""Restore a backup point from the store into a file, a block device, an NBD export
or a file on another host.

Works from the store alone; imports nothing from Cairn but dedup.
"""

from .destinations import (
    FILE_FORMATS,
    BlockDeviceDestination,
    Destination,
    FileDestination,
    NbdDestination,
    parse_destination,
)
from .errors import (
    CorruptBackupError,
    DiskSelectionError,
    RestoreError,
    TargetDirectoryError,
    TargetExistsError,
    TargetSizeError,
    TargetWriteError,
    VerifyError,
)
from .nbd_target import NbdTarget, QemuNbdServer
from .restorer import RestoreResult, restore_disk, select_disk
from .targets import RawFileTarget, RestoreTarget

__all__ = [
    "FILE_FORMATS",
    "BlockDeviceDestination",
    "CorruptBackupError",
    "Destination",
    "DiskSelectionError",
    "FileDestination",
    "NbdDestination",
    "NbdTarget",
    "QemuNbdServer",
    "RawFileTarget",
    "RestoreError",
    "RestoreResult",
    "RestoreTarget",
    "TargetDirectoryError",
    "TargetExistsError",
    "TargetSizeError",
    "TargetWriteError",
    "VerifyError",
    "parse_destination",
    "restore_disk",
    "select_disk",
]
