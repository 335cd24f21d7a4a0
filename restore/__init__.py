"""Restore a backup point from the store into a file, a block device, an NBD export,
a file on another host or an RBD image.

Works from the store alone; imports nothing from Cairn but dedup.
"""

from .destinations import (
    FILE_FORMATS,
    BlockDeviceDestination,
    Destination,
    FileDestination,
    NbdDestination,
    RbdDestination,
    RbdImage,
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
from .whole_vm import restore_vm_to_rbd

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
    "RbdDestination",
    "RbdImage",
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
    "restore_vm_to_rbd",
    "select_disk",
]
