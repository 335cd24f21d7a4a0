"""vmm: drive QEMU (start, watch and stop VMs; QMP sessions; qemu-img).

It imports no other Cairn package."""

from .accel import Accel, detect_accel
from .errors import (
                     AccelError,
                     DiskNotFoundError,
                     ImageError,
                     JobFailedError,
                     QemuIOError,
                     QMPCommandError,
                     QMPConnectError,
                     QMPDisconnectedError,
                     QMPError,
                     QMPTimeoutError,
                     VMAlreadyRunningError,
                     VMBusyError,
                     VMError,
                     VMNotRunningError,
                     VMSpecError,
                     VMStartError,
                     VMStateError,
                     VMStopError,
)
from .images import create_disk, image_info
from .qemu import QemuDriver, StopMethod, VMRunState, VMStatus
from .qmp import QMPSession
from .rundir import RunDir
from .spec import DiskSpec, VMSpec, validate_vm_name

__all__ = [
    "Accel", "detect_accel",
    "AccelError", "DiskNotFoundError", "ImageError", "JobFailedError", "QemuIOError",
    "QMPCommandError", "QMPConnectError", "QMPDisconnectedError", "QMPError", "QMPTimeoutError",
    "VMAlreadyRunningError", "VMBusyError", "VMError", "VMNotRunningError", "VMSpecError",
    "VMStartError", "VMStateError", "VMStopError",
    "create_disk", "image_info",
    "QemuDriver", "StopMethod", "VMRunState", "VMStatus",
    "QMPSession",
    "RunDir",
    "DiskSpec", "VMSpec", "validate_vm_name",
]
