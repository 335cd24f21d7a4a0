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
from .qemu import (
    QemuDriver,
    StopMethod,
    VMRunState,
    VMStatus,
    disk_root_node,
    qdev_is_device,
)
from .qmp import QMPSession
from .rundir import RunDir
from .spec import DiskSpec, NicSpec, VMSpec, disk_of_qdev, validate_vm_name

__all__ = [
    "Accel",
    "AccelError",
    "DiskNotFoundError",
    "DiskSpec",
    "ImageError",
    "JobFailedError",
    "NicSpec",
    "QMPCommandError",
    "QMPConnectError",
    "QMPDisconnectedError",
    "QMPError",
    "QMPSession",
    "QMPTimeoutError",
    "QemuDriver",
    "QemuIOError",
    "RunDir",
    "StopMethod",
    "VMAlreadyRunningError",
    "VMBusyError",
    "VMError",
    "VMNotRunningError",
    "VMRunState",
    "VMSpec",
    "VMSpecError",
    "VMStartError",
    "VMStateError",
    "VMStatus",
    "VMStopError",
    "create_disk",
    "detect_accel",
    "disk_of_qdev",
    "disk_root_node",
    "image_info",
    "qdev_is_device",
    "validate_vm_name",
]
