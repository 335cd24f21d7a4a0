"""The per-VM run directory: its file layout, the persisted state and the QEMU liveness check.

Everything a later process (another CLI call, the server) needs to find and judge a VM that an
earlier process started lives here, because QEMU outlives the process that launched it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import VMBusyError

Intended = Literal["running", "stopped"]
# run_root/.live/<name>: the VMs started and not stopped since (VM names start with a letter).
LIVE_DIR = ".live"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def qmp_socket(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.path / "qemu.pid"

    @property
    def serial_log(self) -> Path:
        return self.path / "serial.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's stderr (startup errors, and later messages such as who sent a signal)."""
        return self.path / "qemu.log"

    @property
    def guest_agent_socket(self) -> Path:
        """The host end of the virtio-serial channel a QEMU guest agent in the VM answers on."""
        return self.path / "qga.sock"

    @property
    def vnc_socket(self) -> Path:
        return self.path / "vnc.sock"

    @property
    def vnc_password_file(self) -> Path:
        """The VM's VNC password, set through QMP at each start (readable by root only)."""
        return self.path / "vnc.password"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.path / "lock"

    @property
    def stopping_file(self) -> Path:
        """There while a graceful stop waits for the guest (holding the lock): a forced stop
        does not wait behind it, it ends QEMU itself."""
        return self.path / "stopping"

    @property
    def live_marker(self) -> Path:
        """Present from a start until the stop that follows: the index of the VMs that may be
        running (QemuDriver.active), beside the run directories, in run_root/.live/."""
        return self.path.parent / LIVE_DIR / self.path.name


@dataclass
class VMState:
    """What the driver meant the VM to be, so a vanished QEMU can be told apart from a stop."""

    intended: Intended
    paused: bool
    accel: str | None
    spec: dict[str, Any]
    command: list[str]


def read_state(rundir: RunDir) -> VMState | None:
    try:
        data = json.loads(rundir.state_file.read_text())
        return VMState(intended=data["intended"], paused=bool(data["paused"]),
                       accel=data["accel"], spec=data["spec"], command=data["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_state(rundir: RunDir, state: VMState) -> None:
    # Write-and-rename, so a reader in another process never sees half a file.
    tmp = rundir.state_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, rundir.state_file)


def read_pid(rundir: RunDir) -> int | None:
    try:
        return int(rundir.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def is_our_qemu(pid: int, rundir: RunDir) -> bool:
    """True if `pid` is a live QEMU started for this run directory.

    The pid alone could have been reused by an unrelated process after QEMU died, so the
    process must carry our exact `-pidfile` argument. A zombie has an empty cmdline and so
    counts as dead (a daemonized QEMU's parent is init, which may reap it late).
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(rundir.pidfile) in argv


@contextmanager
def exclusive(rundir: RunDir, name: str) -> Iterator[None]:
    """Hold the VM's lock for a start/stop, across processes; VMBusyError if it is taken."""
    with open(rundir.lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VMBusyError(name) from None
        yield
