"""Typed errors of the QEMU driver. Every error raised on purpose by vmm is a VMError."""

from __future__ import annotations

from typing import Any


class VMError(Exception):
    """Base class of all vmm errors."""


class VMSpecError(VMError, ValueError):
    """A VMSpec/DiskSpec (or a VM name) is invalid."""


class DomainXMLError(VMSpecError):
    """A libvirt domain definition lacks an element or attribute libvirt always writes."""


class AccelError(VMError):
    """CAIRN_ACCEL names an accelerator vmm does not know."""


class VMStateError(VMError):
    """The VM is not in a state that allows the operation."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class VMAlreadyRunningError(VMStateError):
    def __init__(self, name: str, pid: int | None):
        super().__init__(name, f"VM {name!r} is already running (pid {pid})")
        self.pid = pid


class VMNotRunningError(VMStateError):
    def __init__(self, name: str, state: str):
        super().__init__(name, f"VM {name!r} is not running (state: {state})")
        self.state = state


class VMBusyError(VMError):
    """Another start/stop of the same VM holds its lock (possibly in another process)."""

    def __init__(self, name: str):
        super().__init__(f"VM {name!r} is busy: another start/stop of it is in progress")
        self.name = name


class VMStartError(VMError):
    """QEMU could not be started; log_tail holds the end of its stderr log, if any."""

    def __init__(self, name: str, message: str, log_tail: str = ""):
        text = f"cannot start VM {name!r}: {message}"
        if log_tail:
            text += f"\n--- qemu.log (tail) ---\n{log_tail}"
        super().__init__(text)
        self.name = name
        self.log_tail = log_tail


class DiskNotFoundError(VMStartError):
    def __init__(self, name: str, disk: str, path: str):
        super().__init__(name, f"disk {disk!r}: image file {path} does not exist")
        self.disk = disk
        self.path = path


class VMStopError(VMError):
    """The QEMU process survived SIGKILL (e.g. stuck in uninterruptible I/O)."""

    def __init__(self, name: str, pid: int):
        super().__init__(f"VM {name!r}: QEMU pid {pid} did not exit even after SIGKILL")
        self.name = name
        self.pid = pid


class QMPError(VMError):
    """Base class of QMP session errors."""


class QMPConnectError(QMPError):
    def __init__(self, socket_path: str, reason: str):
        super().__init__(f"cannot connect to QMP at {socket_path}: {reason}")
        self.socket_path = socket_path
        self.reason = reason


class QMPDisconnectedError(QMPError):
    """The connection broke while a command was in flight (QEMU exited or crashed)."""

    def __init__(self, cmd: str, reason: str):
        super().__init__(f"QMP connection lost during {cmd!r}: {reason}")
        self.cmd = cmd


class QMPTimeoutError(QMPError, TimeoutError):
    pass


class QMPCommandError(QMPError):
    """QEMU answered a command with an error (wraps qemu.qmp.ExecuteError)."""

    def __init__(self, cmd: str, desc: str, cls: str):
        super().__init__(f"{cmd}: {desc} ({cls})")
        self.cmd = cmd
        self.desc = desc
        self.cls = cls


class QemuIOError(QMPError):
    """HMP qemu-io printed an error (it returns text instead of failing the command)."""

    def __init__(self, node: str, command: str, output: str):
        super().__init__(f"qemu-io {node} {command!r}: {output.strip()}")
        self.node = node
        self.command = command
        self.output = output


class JobFailedError(QMPError):
    def __init__(self, job_id: str, error: str, job: dict[str, Any] | None = None):
        super().__init__(f"job {job_id!r} failed: {error}")
        self.job_id = job_id
        self.error = error
        self.job = job


class ImageError(VMError):
    """qemu-img failed, or a disk image request was invalid."""

    def __init__(self, message: str, cmd: list[str] | None = None, stderr: str = ""):
        super().__init__(f"{message}: {stderr.strip()}" if stderr.strip() else message)
        self.cmd = cmd
        self.stderr = stderr
