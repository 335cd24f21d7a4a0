"""Restore a backup point from the store into a raw or qcow2 image file.

Works from the store alone; imports nothing from Cairn but dedup.
"""

from .errors import (
    CorruptBackupError,
    DiskSelectionError,
    RestoreError,
    TargetDirectoryError,
    TargetExistsError,
    TargetWriteError,
)
from .nbd_target import NbdTarget, QemuNbdServer
from .restorer import RestoreResult, restore_disk
from .targets import TARGET_FORMATS, Qcow2FileTarget, RawFileTarget, RestoreTarget, create_target

__all__ = [
    "TARGET_FORMATS",
    "CorruptBackupError",
    "DiskSelectionError",
    "NbdTarget",
    "Qcow2FileTarget",
    "QemuNbdServer",
    "RawFileTarget",
    "RestoreError",
    "RestoreResult",
    "RestoreTarget",
    "TargetDirectoryError",
    "TargetExistsError",
    "TargetWriteError",
    "create_target",
    "restore_disk",
]
