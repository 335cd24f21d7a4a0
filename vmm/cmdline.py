"""Turn a VMSpec into a QEMU command line."""

from __future__ import annotations

import json

from .accel import Accel
from .rundir import RunDir
from .spec import VMSpec

QMP_CHARDEV = "qmp"
SERIAL_CHARDEV = "serial0"


def qemu_opt(value: str) -> str:
    """Escape a value for QEMU's key=value,... option syntax, where ',,' is a literal comma."""
    return value.replace(",", ",,")


def build_command(binary: str, spec: VMSpec, accel: Accel, rundir: RunDir) -> list[str]:
    cmd = [
        binary,
        "-name", f"guest={spec.name}",
        "-machine", spec.machine,
        *accel.qemu_args(),
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-chardev", f"file,id={SERIAL_CHARDEV},path={qemu_opt(str(rundir.serial_log))}",
        "-serial", f"chardev:{SERIAL_CHARDEV}",
        "-chardev", f"socket,id={QMP_CHARDEV},path={qemu_opt(str(rundir.qmp_socket))},"
                    "server=on,wait=off",
        "-mon", f"chardev={QMP_CHARDEV},mode=control",
        "-daemonize",
        "-pidfile", str(rundir.pidfile),
        # Once up, a daemonized QEMU points stderr at /dev/null, or at the -D log file if
        # there is one. Naming our stderr file here (QEMU truncates it when it opens it, early
        # in startup) keeps later messages too, e.g. "terminating on signal 15 from pid N".
        "-D", str(rundir.qemu_log),
    ]
    if spec.kernel is not None:
        cmd += ["-kernel", spec.kernel]
    if spec.initrd is not None:
        cmd += ["-initrd", spec.initrd]
    if spec.append is not None:
        cmd += ["-append", spec.append]
    for disk in spec.disks:
        # JSON syntax: no escaping issues whatever the image path contains.
        cmd += ["-blockdev", json.dumps({
            "driver": "file", "filename": disk.path, "node-name": disk.protocol_node(),
            "cache": {"direct": False}})]
        cmd += ["-blockdev", json.dumps({
            "driver": disk.format, "file": disk.protocol_node(), "node-name": disk.format_node()})]
        # share-rw=on lets other users of the node (HMP qemu-io, block jobs' writers) write
        # while the guest device is attached.
        cmd += ["-device", f"virtio-blk-pci,drive={disk.format_node()},id={disk.device_id()},"
                           "share-rw=on"]
    return cmd
