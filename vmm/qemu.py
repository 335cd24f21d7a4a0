"""QemuDriver: start, watch and stop daemonized QEMU processes, one run directory per VM.

QEMU runs with -daemonize and a pidfile, so it outlives the process that started it (a CLI
call); any later process finds it again through run_root/<name>/. The driver never holds the
QMP socket: each operation opens a short session (see qmp.py).

Which VMs are not stopped is asked often (every listing) and by VMs that mostly are: a start
leaves a marker in run_root/.live/ that its stop removes, so the answer (active()) costs a look
at the few marked VMs, not at every run directory and process.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import tempfile
import weakref
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .accel import detect_accel
from .cmdline import build_command
from .console import arm_vnc
from .errors import (
    DiskNotFoundError,
    ImageError,
    QMPDisconnectedError,
    QMPError,
    VMAlreadyRunningError,
    VMBusyError,
    VMNotRunningError,
    VMSpecError,
    VMStartError,
    VMStateError,
    VMStopError,
)
from .network_disks import is_network, probe
from .qmp import QMPSession
from .rundir import (
    LIVE_DIR,
    RunDir,
    VMState,
    exclusive,
    is_our_qemu,
    read_pid,
    read_state,
    write_state,
)
from .spec import VMSpec, validate_vm_name

# "unknown": the VM's host does not answer (a QemuDriver, which is on the host, never says it).
VMRunState = Literal["running", "paused", "stopped", "crashed", "unknown"]
StopMethod = Literal["already-stopped", "powerdown", "quit", "kill"]

STREAM_JOB_PREFIX = "stream-"

# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
LOG_TAIL_LINES = 20
# QEMUs setting up at once, per CPU (a setup is mostly CPU: devices, firmware, the monitor).
LAUNCHES_PER_CPU = 2


@dataclass(frozen=True)
class VMStatus:
    name: str
    state: VMRunState
    pid: int | None
    accel: str | None


class QemuDriver:
    def __init__(self, run_root: Path, *, qemu_binary: str = "qemu-system-x86_64",
                 launch_timeout: float = 30.0, qmp_timeout: float = 10.0):
        self.run_root = Path(run_root)
        self.qemu_binary = qemu_binary
        self.launch_timeout = launch_timeout
        self.qmp_timeout = qmp_timeout
        self._launch_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()

    def paths(self, name: str) -> RunDir:
        return RunDir(self.run_root / validate_vm_name(name))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, spec: VMSpec, incoming: str | None = None, paused: bool = False) -> VMStatus:
        """`incoming`: a migration URI (e.g. "exec:cat <file>") the guest's state is loaded
        from instead of booting; the guest then runs on from where that state was saved.
        `paused`: QEMU sets the machine up but runs no guest code (-S) until resume()."""
        spec.validate()
        rundir = self.paths(spec.name)
        await asyncio.to_thread(self._check_files, spec, rundir)   # network disks are probed
        accel = detect_accel()
        rundir.path.mkdir(parents=True, exist_ok=True)
        with exclusive(rundir, spec.name):
            current = self.status(spec.name)
            if current.state in ("running", "paused"):
                raise VMAlreadyRunningError(spec.name, current.pid)
            # Nothing of ours runs here, so these are leftovers of a crash or a failed start.
            self._remove_leftovers(rundir)
            cmd = build_command(self.qemu_binary, spec, accel, rundir, incoming) + (["-S"] if paused else [])
            self._mark_live(rundir)
            try:
                async with self._launch_slot():
                    await self._launch(spec.name, cmd, rundir)
                    if spec.vnc:
                        await self._arm_vnc(spec.name, rundir)
            except VMStartError:
                # A failed start leaves nothing running, so it must not read as a crash.
                self._remove_leftovers(rundir)
                self._record_stopped(rundir)
                raise
            write_state(rundir, VMState(intended="running", paused=paused, accel=accel.name,
                                        spec=spec.to_dict(), command=cmd))
        return self.status(spec.name)

    async def stop(self, name: str, timeout: float = 30.0, force: bool = False) -> StopMethod:
        """Stop the VM and return how: ACPI powerdown (waiting up to `timeout` for the guest),
        then QMP `quit` (SIGTERM if the monitor cannot be reached: QEMU handles both as a
        clean exit), then SIGKILL. `force` skips the powerdown. A paused guest cannot react
        to the power button, so it goes straight to `quit`. Stopping a stopped VM does
        nothing; stopping a crashed one clears the crash. A forced stop does not queue behind
        a graceful one waiting for its guest: it ends QEMU itself (_interrupt_stop)."""
        rundir = self.paths(name)
        if not rundir.path.is_dir():
            return "already-stopped"
        if force and rundir.stopping_file.exists():
            return await self._interrupt_stop(name, rundir)
        with exclusive(rundir, name):
            pid = read_pid(rundir)
            if pid is not None and is_our_qemu(pid, rundir):
                if not force:
                    rundir.stopping_file.write_text(f"{os.getpid()}\n")
                try:
                    method = await self._shut_down(name, rundir, pid, timeout, force)
                finally:
                    rundir.stopping_file.unlink(missing_ok=True)
            else:
                method = "already-stopped"
            self._remove_leftovers(rundir)
            self._record_stopped(rundir)
        return method

    async def _interrupt_stop(self, name: str, rundir: RunDir) -> StopMethod:
        """A forced stop while a graceful one waits (holding the lock): end QEMU without the
        lock; the waiting stop sees it gone and records the stop, which is awaited here. A
        marker whose stop died with its process is cleared here, under the lock."""
        pid = read_pid(rundir)
        method: StopMethod = "already-stopped"
        if pid is not None and is_our_qemu(pid, rundir):
            method = await self._shut_down(name, rundir, pid, 0.0, force=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.qmp_timeout
        while True:
            try:
                with exclusive(rundir, name):
                    if rundir.stopping_file.exists():
                        rundir.stopping_file.unlink()
                        self._remove_leftovers(rundir)
                        self._record_stopped(rundir)
                return method
            except VMBusyError:
                if loop.time() >= deadline:
                    return method   # QEMU is gone; the waiting stop records it when it wakes
                await asyncio.sleep(0.05)

    def forget(self, name: str) -> None:
        """Delete the VM's run directory (state, logs); its disks are not touched."""
        rundir = self.paths(name)
        if not rundir.path.is_dir():
            return
        with exclusive(rundir, name):
            current = self.status(name)
            if current.state in ("running", "paused"):
                raise VMStateError(name, f"VM {name!r} is {current.state}; stop it before "
                                         "forgetting it")
            shutil.rmtree(rundir.path)
            rundir.live_marker.unlink(missing_ok=True)

    async def pause(self, name: str) -> None:
        async with self.session(name) as qmp:
            await qmp.execute("stop")
        self._record_paused(name, True)

    async def resume(self, name: str) -> None:
        async with self.session(name) as qmp:
            await qmp.execute("cont")
        self._record_paused(name, False)

    async def reboot(self, name: str) -> None:
        """Hard reset (the reset button): the guest restarts at once, without shutting down."""
        async with self.session(name) as qmp:
            await qmp.execute("system_reset")
            if self.status(name).state == "paused":
                await qmp.execute("cont")
        self._record_paused(name, False)

    async def grow_disk(self, name: str, disk: str, size_bytes: int) -> None:
        """Grow a disk of a running VM to size_bytes (block_resize on its current root node,
        which snapshots may have moved away from the node named after the disk)."""
        async with self.session(name) as qmp:
            node = await disk_root_node(qmp, name, disk)
            await qmp.execute("block_resize", {"node-name": node, "size": size_bytes})

    async def stream_disks(self, name: str, layers: dict[str, str]) -> None:
        """Start copying the backing data of each disk's layer `layers[disk]` (a file of its
        chain, the active one or one under it) into that layer (block-stream). QEMU finishes
        each job alone and then drops that layer's backing files; the layers above it stay as
        they are. If QEMU stops first, the layer keeps its backing file and the stream can be
        started again."""
        async with self.session(name) as qmp:
            running = {job["id"] for job in await qmp.execute("query-jobs")}
            nodes = {n["file"]: n["node-name"] for n in await qmp.execute("query-named-block-nodes", {"flat": True})
                     if n["drv"] in ("qcow2", "raw")}
            for disk, layer in layers.items():
                if layer not in nodes:
                    raise VMStateError(name, f"VM {name} has no layer {layer} open for disk {disk}")
                if stream_job_id(disk) not in running:
                    await qmp.execute("block-stream", {"job-id": stream_job_id(disk), "device": nodes[layer]})

    async def streaming_disks(self, name: str) -> dict[str, float]:
        """Disks with a stream in progress and how far each is (0..1)."""
        async with self.session(name) as qmp:
            jobs = await qmp.execute("query-jobs")
        return {job["id"].removeprefix(STREAM_JOB_PREFIX):
                job["current-progress"] / max(job["total-progress"], 1)
                for job in jobs if job["id"].startswith(STREAM_JOB_PREFIX)}

    # -- observation ---------------------------------------------------------------------------

    def status(self, name: str) -> VMStatus:
        """Cheap and synchronous (no QMP): reads the run directory and /proc.

        "paused" reflects pause()/resume() through this driver; run_state() asks QEMU.
        A QEMU that exited cleanly (guest poweroff, quit, SIGTERM) removes its pidfile and
        counts as "stopped"; one that vanished while meant to run and left its pidfile behind
        (SIGKILL, segfault, host reboot) is "crashed".
        """
        rundir = self.paths(name)
        state = read_state(rundir)
        accel = state.accel if state else None
        pid = read_pid(rundir)
        if pid is not None and is_our_qemu(pid, rundir):
            return VMStatus(name, "paused" if state and state.paused else "running", pid, accel)
        if pid is not None and state is not None and state.intended == "running":
            return VMStatus(name, "crashed", None, accel)
        return VMStatus(name, "stopped", None, accel)

    def active(self) -> dict[str, VMStatus]:
        """The VMs that are running, paused or crashed, by name; any other is stopped.

        Looks only at the VMs marked live (started, not stopped since). A marker that outlived
        its QEMU (it exited on its own: the guest powered off) reads as stopped and is dropped
        here, unless the VM's lock is taken: a start holds it from before its marker is made."""
        found = {}
        for name in self.marked_live():
            status = self.status(name)
            if status.state != "stopped":
                found[name] = status
                continue
            rundir = self.paths(name)
            if not rundir.path.is_dir():
                rundir.live_marker.unlink(missing_ok=True)
                continue
            with suppress(VMBusyError), exclusive(rundir, name):
                if self.status(name).state == "stopped":
                    rundir.live_marker.unlink(missing_ok=True)
        return found

    def marked_live(self) -> set[str]:
        """The VMs marked live: any VM not among them is stopped (one directory listing)."""
        live = self._live_dir()
        return set(os.listdir(live)) if live is not None else set()

    def _live_dir(self) -> Path | None:
        """run_root/.live/, made on first use from the run directories that hold a pidfile
        (VMs a driver without the index started); None while there is no run_root yet."""
        live = self.run_root / LIVE_DIR
        if live.is_dir():
            return live
        if not self.run_root.is_dir():
            return None
        with open(self.run_root / f"{LIVE_DIR}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not live.is_dir():
                building = Path(tempfile.mkdtemp(prefix=f"{LIVE_DIR}-", dir=self.run_root))
                for entry in os.scandir(self.run_root):
                    if entry.is_dir() and os.path.exists(RunDir(Path(entry.path)).pidfile):
                        (building / entry.name).touch()
                building.rename(live)
        return live

    def _mark_live(self, rundir: RunDir) -> None:
        self._live_dir()
        rundir.live_marker.touch()

    def list_vms(self) -> list[VMStatus]:
        """Every VM this driver ever started under run_root, by name."""
        if not self.run_root.is_dir():
            return []
        return [self.status(entry.name) for entry in sorted(self.run_root.iterdir())
                if RunDir(entry).state_file.is_file()]

    async def run_state(self, name: str) -> str:
        """QEMU's own run state from query-status: "running", "paused", "shutdown", ..."""
        async with self.session(name) as qmp:
            result = await qmp.execute("query-status")
        return str(result["status"])

    def session(self, name: str, connect_timeout: float | None = None) -> QMPSession:
        """A QMP session to a running VM: `async with driver.session(name) as qmp: ...`.

        Keep it short: the monitor serves one client at a time."""
        current = self.status(name)
        if current.state not in ("running", "paused"):
            raise VMNotRunningError(name, current.state)
        return QMPSession(self.paths(name).qmp_socket,
                          connect_timeout=self.qmp_timeout if connect_timeout is None
                          else connect_timeout)

    # -- internals -----------------------------------------------------------------------------

    def _launch_slot(self) -> asyncio.Semaphore:
        """One of LAUNCHES_PER_CPU slots per CPU for a QEMU setting up (this event loop's). More
        launches at once only share the CPUs, each slower, until the last ones miss their
        monitor's timeout; queued, each sets up at full speed and the batch ends no later."""
        loop = asyncio.get_running_loop()
        if (slots := self._launch_slots.get(loop)) is None:
            slots = self._launch_slots[loop] = asyncio.Semaphore(LAUNCHES_PER_CPU * (os.cpu_count() or 1))
        return slots

    async def _arm_vnc(self, name: str, rundir: RunDir) -> None:
        try:
            async with QMPSession(rundir.qmp_socket, connect_timeout=self.qmp_timeout) as qmp:
                await arm_vnc(qmp, rundir)
        except QMPError as err:
            self._signal_if_ours(rundir, signal.SIGKILL)
            raise VMStartError(name, f"cannot set the VNC password: {err}") from err

    def check_startable(self, spec: VMSpec) -> None:
        """What start() checks on this host before QEMU runs: the VM's files and network
        interfaces exist here (a VMStartError, or a VMSpecError, says which does not)."""
        self._check_files(spec, self.paths(spec.name))

    def _check_files(self, spec: VMSpec, rundir: RunDir) -> None:
        for disk in spec.disks:
            if is_network(disk.path):
                try:
                    probe(disk.path)   # an unreachable cluster would hold QEMU's start for minutes
                except ImageError as err:
                    raise VMStartError(spec.name, f"disk {disk.name}: {err}") from None
            elif not os.path.exists(disk.path):
                raise DiskNotFoundError(spec.name, disk.name, disk.path)
        for what, path in (("kernel", spec.kernel), ("initrd", spec.initrd),
                           ("cdrom image", spec.cdrom)):
            if path is not None and not os.path.isfile(path):
                raise VMStartError(spec.name, f"{what} file {path} does not exist")
        for nic in spec.nics:
            if nic.mode == "tap" and not os.path.exists(f"/sys/class/net/{nic.tap}"):
                raise VMStartError(spec.name, f"NIC {nic.name}: tap interface {nic.tap} "
                                              "does not exist")
            if nic.mode == "bridge" and not os.path.isdir(f"/sys/class/net/{nic.bridge}/bridge"):
                raise VMStartError(spec.name, f"NIC {nic.name}: {nic.bridge} is not a Linux "
                                              "bridge on this host")
        if len(os.fsencode(rundir.qmp_socket)) > MAX_SOCKET_PATH:
            raise VMSpecError(f"VM {spec.name!r}: QMP socket path {rundir.qmp_socket} is longer "
                              f"than {MAX_SOCKET_PATH} bytes; use a shorter run_root")

    async def _launch(self, name: str, cmd: list[str], rundir: RunDir) -> None:
        rundir.qemu_log.unlink(missing_ok=True)
        with rundir.qemu_log.open("a") as log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
            except OSError as err:
                raise VMStartError(name, f"cannot run {cmd[0]}: {err}") from err
            # With -daemonize the launched process exits once the machine is set up (devices
            # and the QMP socket exist), with status 0 on success.
            try:
                returncode = await asyncio.wait_for(proc.wait(), self.launch_timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                self._signal_if_ours(rundir, signal.SIGKILL)
                raise VMStartError(name, f"QEMU did not finish starting within "
                                         f"{self.launch_timeout:g}s",
                                   self._log_tail(rundir)) from None
        if returncode != 0:
            raise VMStartError(name, f"QEMU exited with status {returncode}",
                               self._log_tail(rundir))
        pid = read_pid(rundir)
        if pid is None or not is_our_qemu(pid, rundir):
            raise VMStartError(name, "QEMU exited right after starting", self._log_tail(rundir))
        try:
            async with QMPSession(rundir.qmp_socket, connect_timeout=self.qmp_timeout) as qmp:
                await qmp.execute("query-status")
        except QMPError as err:
            self._signal_if_ours(rundir, signal.SIGKILL)
            raise VMStartError(name, f"QMP does not answer: {err}", self._log_tail(rundir)) from err

    async def _shut_down(self, name: str, rundir: RunDir, pid: int, timeout: float,
                         force: bool) -> StopMethod:
        if not force:
            try:
                async with QMPSession(rundir.qmp_socket,
                                      connect_timeout=min(self.qmp_timeout, timeout)) as qmp:
                    running = (await qmp.execute("query-status"))["running"]
                    if running:
                        await qmp.execute("system_powerdown")
            except QMPError:
                running = False
            if running and await self._wait_exit(rundir, pid, timeout):
                return "powerdown"
        try:
            async with QMPSession(rundir.qmp_socket, connect_timeout=self.qmp_timeout) as qmp:
                await qmp.execute("quit")
        except QMPDisconnectedError:
            pass  # QEMU hung up while handling quit: it is exiting
        except QMPError:
            # The monitor is busy (another client holds it) or QEMU is wedged.
            self._signal_if_ours(rundir, signal.SIGTERM)
        if await self._wait_exit(rundir, pid, self.qmp_timeout):
            return "quit"
        self._signal_if_ours(rundir, signal.SIGKILL)
        if await self._wait_exit(rundir, pid, self.qmp_timeout):
            return "kill"
        raise VMStopError(name, pid)

    @staticmethod
    async def _wait_exit(rundir: RunDir, pid: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while is_our_qemu(pid, rundir):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    @staticmethod
    def _signal_if_ours(rundir: RunDir, signum: signal.Signals) -> None:
        pid = read_pid(rundir)
        if pid is not None and is_our_qemu(pid, rundir):
            with suppress(ProcessLookupError):  # it may exit between the check and the kill
                os.kill(pid, signum)

    @staticmethod
    def _remove_leftovers(rundir: RunDir) -> None:
        """Files a QEMU that is no longer running may have left: a SIGKILLed QEMU leaves its
        pidfile (which status() would read as a crash) and a failed start its socket."""
        for leftover in (rundir.qmp_socket, rundir.pidfile, rundir.vnc_socket,
                         rundir.vnc_password_file):
            leftover.unlink(missing_ok=True)

    @staticmethod
    def _record_stopped(rundir: RunDir) -> None:
        state = read_state(rundir)
        if state is not None:
            state.intended, state.paused = "stopped", False
            write_state(rundir, state)
        rundir.live_marker.unlink(missing_ok=True)

    def _record_paused(self, name: str, paused: bool) -> None:
        rundir = self.paths(name)
        state = read_state(rundir)
        if state is not None:
            state.paused = paused
            write_state(rundir, state)

    @staticmethod
    def _log_tail(rundir: RunDir) -> str:
        try:
            lines = rundir.qemu_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])


def stream_job_id(disk: str) -> str:
    return f"{STREAM_JOB_PREFIX}{disk}"


async def disk_root_node(qmp: QMPSession, name: str, disk: str) -> str:
    """The node at the top of a disk's graph now (snapshots move it off the disk's own node)."""
    for entry in await qmp.execute("query-block"):
        if qdev_is_device(str(entry.get("qdev", "")), f"{disk}-dev") and "inserted" in entry:
            return str(entry["inserted"]["node-name"])
    raise VMStateError(name, f"VM {name!r} has no disk {disk!r}")


def qdev_is_device(qdev: str, device_id: str) -> bool:
    """Whether a query-block "qdev" names this device: QEMU gives the device's id for devices
    that hold the drive themselves (ide-hd, ide-cd) and the QOM path of the backend below it for
    virtio (/machine/peripheral/<id>/virtio-backend)."""
    return qdev == device_id or qdev.startswith(f"/machine/peripheral/{device_id}/")
