"""Instant restore: a VM runs from a backup within seconds while its disks are copied in.

Each disk of the backup is served read-only from the store by nbdkit
(restore.export); the new VM's disk is a qcow2 overlay whose backing file is
that export, so the VM boots at once and its writes land in the overlay. A
block-stream job per disk, run by QEMU itself, then copies everything the
overlay lacks from the backing export into the overlay and drops the backing
file: the overlay becomes a complete, independent disk and the exports stop.

Onto RBD (a storage pool of kind rbd): the VM runs from the same overlay, kept in the restore's
folder, and a blockdev-mirror per disk copies the disk (backup and guest writes alike) into a new
RBD image; its copy mode is write-blocking, so once the copy is complete every write the guest
was told is done is in the image too. Then the VM's definition is pointed at the image, the
mirror completes (the running VM switches to it) and the overlay and the export go: the VM is
a VM on RBD like one created there.

The job lives in QEMU, so it goes on if the appliance dies. What is needed to
finish it is recorded in <data dir>/instant/<vm>/state.json (backup, exports,
overlays); resume() restarts whatever is gone (nbdkit, the VM, the stream job)
and waits for the copy to complete.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance.errors import ConflictError, NotFoundError
from appliance.names import InvalidNameError, check_vm_name
from appliance.settings import Settings
from appliance.vms.service import VMService
from dedup import Store
from restore.export import BackupExport
from restore.targets import create_qcow2
from vmm import DiskSpec, QMPConnectError, QMPSession, disk_of_qdev, image_info
from vmm.cmdline import protocol_node
from vmm.network_disks import RbdDisk, is_network, network_disk

from .restored_vm import define_like

STATE_FILE = "state.json"
Status = Literal["hydrating", "done", "failed"]


@dataclass
class InstantDisk:
    name: str  # the new VM's disk
    source: str  # the backup's disk it is restored from
    overlay: str
    socket: str
    target: str | None = None   # the RBD image the disk is copied into; None: the overlay becomes the disk


@dataclass
class InstantRestore:
    vm: str
    backup_id: str
    store: str
    disks: list[InstantDisk]
    speed: int = 0  # bytes/s per stream job; 0: as fast as it goes
    status: Status = "hydrating"
    error: str | None = None
    progress: dict[str, list[int]] = field(default_factory=dict)  # disk -> [copied, total], while hydrating

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> InstantRestore:
        return cls(**{**doc, "disks": [InstantDisk(**d) for d in doc["disks"]]})


def job_id(disk: str) -> str:
    return f"instant-{disk}"


class InstantRestoreService:
    def __init__(self, settings: Settings, vms: VMService, store: Store):
        self.settings = settings
        self.vms = vms
        self.store = store

    async def start(self, backup_id: str, name: str, speed: int = 0,
                    storage_pool: str | None = None) -> InstantRestore:
        """Define VM `name` from the backup on overlays of the served backup, start it, start the
        copy (into the disks of `storage_pool`, if given)."""
        check_vm_name(name)   # it names a folder: checked before anything is made or removed there
        manifest = self.store.get_backup(backup_id)
        folder = self._folder(name)
        if folder.exists():
            if self.load(name).status != "done":
                raise ConflictError(f"an instant restore into VM {name} is not finished ({folder})")
            shutil.rmtree(folder)  # the record of a finished one, whose VM may be gone since
        backed_up, spec = define_like(self.vms, name, manifest, storage_pool)
        sizes = [manifest.disk(d.name).size for d in backed_up.disks]
        state = InstantRestore(name, backup_id, self.store.location, [
            InstantDisk(new.name, old.name, new.path, str(folder / f"{new.name}.sock"))
            if not is_network(new.path) else
            InstantDisk(new.name, old.name, str(folder / f"{new.name}.qcow2"), str(folder / f"{new.name}.sock"),
                        target=new.path)
            for old, new in zip(backed_up.disks, spec.disks, strict=True)], speed)
        try:
            folder.mkdir(parents=True)
            for disk, size in zip(state.disks, sizes, strict=True):
                export = self._export(state, disk)
                if disk.target is None:
                    # The blank disk create() made is replaced by the overlay on the backup.
                    os.unlink(disk.overlay)
                create_qcow2(Path(disk.overlay), size, backing_uri=export.uri)
            self._save(state)
            # Until its copy completes, the VM runs from the overlays.
            with self.vms.catalog.begin() as s:
                self.vms.point_disks(s, name, {d.name: d.overlay for d in state.disks if d.target},
                                     formats={d.name: "qcow2" for d in state.disks if d.target})
            await self.vms.start(name)
            self._serve_vm(state)
            await self._stream(state)
        except BaseException:
            await self.discard(name)
            raise
        return state

    async def resume(self, name: str, speed: int | None = None) -> InstantRestore:
        """Restart what an interruption stopped: exports, the VM, the copy jobs (at `speed`
        bytes/s if given, else as before)."""
        state = self.load(name)
        if state.status == "done":
            return state
        if speed is not None:
            state.speed = speed
        for disk in state.disks:
            if _backing(disk) is not None:
                self._export(state, disk)
        if self.vms.show(name).status.state not in ("running", "paused"):
            # Its RBD images were written by this VM's QEMU alone, which is gone: its locks are stale.
            for disk in state.disks:
                if disk.target and isinstance(image := network_disk(disk.target), RbdDisk):
                    await asyncio.to_thread(image.break_locks)
            await self.vms.start(name)
        self._serve_vm(state)
        state.status, state.error = "hydrating", None
        self._save(state)
        await self._stream(state)
        return state

    async def set_speed(self, name: str, speed: int) -> InstantRestore:
        """Throttle the copy to `speed` bytes/s per disk (0: unlimited), now and after a resume."""
        state = self.load(name)
        if state.status != "hydrating":
            raise ConflictError(f"the instant restore of VM {name} is {state.status}, not copying")
        state.speed = speed
        self._save(state)
        async with self.vms.driver.session(name) as qmp:
            running = {j["id"] for j in await qmp.execute("query-jobs")}
            for disk in state.disks:
                if job_id(disk.name) in running:
                    await qmp.execute("block-job-set-speed", {"device": job_id(disk.name), "speed": speed})
        return state

    async def poll(self, name: str) -> InstantRestore:
        """Look at the copy jobs once; record progress, completion or failure."""
        state = self.load(name)
        if state.status != "hydrating":
            return state
        errors, backed = await self._inspect(state) if self._runs(name) else self._stopped(state)
        if errors:
            state.status, state.error = "failed", "; ".join(errors) + " (resume to go on)"
        elif not backed:
            for disk in state.disks:
                _running_export(disk).stop()
                if disk.target:   # the VM runs on the RBD image: the overlay holds nothing it lacks
                    Path(disk.overlay).unlink(missing_ok=True)
            state.status, state.progress = "done", {}
        self._save(state)
        return state

    def _runs(self, name: str) -> bool:
        return self.vms.show(name).status.state in ("running", "paused")

    @staticmethod
    def _stopped(state: InstantRestore) -> tuple[list[str], list[str]]:
        """(errors, disks still reading from the backup) of the VM that stopped mid-copy."""
        backed = [d.name for d in state.disks if _backing(d) is not None]
        return ([f"VM {state.vm} stopped before disks {', '.join(backed)} were copied"] if backed else []), backed

    async def _inspect(self, state: InstantRestore) -> tuple[list[str], list[str]]:
        """(errors, disks still reading from the backup) of the running VM; records progress. A
        QEMU that dies as it is asked (its monitor refuses the connection) stopped mid-copy."""
        try:
            return await self._ask_qemu(state)
        except QMPConnectError:
            if self._runs(state.vm):
                raise
            return self._stopped(state)

    async def _ask_qemu(self, state: InstantRestore) -> tuple[list[str], list[str]]:
        errors, backed = [], []
        async with self.vms.driver.session(state.vm) as qmp:
            jobs = {j["id"]: j for j in await qmp.execute("query-jobs")}
            for disk in state.disks:
                job = jobs.get(job_id(disk.name))
                if job is not None:
                    state.progress[disk.name] = [job["current-progress"], job["total-progress"]]
                    if job["status"] == "ready" and disk.target:
                        await self._switch(qmp, state.vm, disk)
                    if job["status"] == "concluded":
                        await qmp.execute("job-dismiss", {"id": job["id"]})
                        if job.get("error"):
                            errors.append(f"copying disk {disk.name} failed: {job['error']}")
                if await _still_copying(qmp, disk):
                    backed.append(disk.name)
                    if job is None:
                        errors.append(f"the copy job of disk {disk.name} is gone before it finished")
        return errors, backed

    async def wait(self, name: str, timeout: float, interval: float = 0.5) -> InstantRestore:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (state := await self.poll(name)).status == "hydrating":
            if loop.time() > deadline:
                raise ConflictError(f"the instant restore of VM {name} is still copying after {timeout:.0f}s")
            await asyncio.sleep(interval)
        return state

    def load(self, name: str) -> InstantRestore:
        try:
            doc = json.loads((self._folder(name) / STATE_FILE).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"no instant restore into VM {name}") from None
        return InstantRestore.from_dict(doc)

    async def discard(self, name: str) -> None:
        """Undo a failed start: stop the VM and the exports, remove the VM and the state."""
        folder = self._folder(name)
        targets = [d.target for d in self.load(name).disks if d.target] if (folder / STATE_FILE).exists() else []
        await self.vms.stop(name, force=True)
        self.vms.delete(name)
        for target in targets:   # the VM named its overlays: its RBD images are the state's
            image = network_disk(target)
            assert isinstance(image, RbdDisk)
            image.remove()
        for sock in folder.glob("*.sock"):
            BackupExport(sock, sock.with_suffix(".pid")).stop()
        shutil.rmtree(folder, ignore_errors=True)

    async def _stream(self, state: InstantRestore) -> None:
        async with self.vms.driver.session(state.vm) as qmp:
            running = {j["id"] for j in await qmp.execute("query-jobs")}
            for disk in state.disks:
                if job_id(disk.name) in running or not await _still_copying(qmp, disk):
                    continue
                if disk.target:
                    await self._mirror(qmp, state, disk)
                    continue
                # auto-dismiss off: a failed job stays listed with its error until poll() reads it.
                await qmp.execute("block-stream", {"job-id": job_id(disk.name), "device": disk.name,
                                                   "speed": state.speed, "auto-dismiss": False})

    async def _mirror(self, qmp: QMPSession, state: InstantRestore, disk: InstantDisk) -> None:
        """Copy the disk as the guest sees it into its RBD image, which the guest's writes reach
        synchronously once the copy caught up (write-blocking)."""
        assert disk.target is not None
        target = DiskSpec(disk.name, disk.target, "raw")
        nodes = {n["node-name"] for n in await qmp.execute("query-named-block-nodes", {"flat": True})}
        node = target_node(disk.name)
        protocol, mirror = f"{node}f", f"{disk.name}-mir"
        if protocol not in nodes:   # a QEMU started again by resume() has none
            await qmp.execute("blockdev-add", {**protocol_node(target), "node-name": protocol})
            await qmp.execute("blockdev-add", {"driver": "raw", "file": protocol, "node-name": node})
        await qmp.execute("blockdev-mirror", {"job-id": job_id(disk.name), "device": disk.name, "target": node,
                                              "sync": "full", "speed": state.speed, "copy-mode": "write-blocking",
                                              # named, the filter is the disk's root node: what writes into
                                              # the node (a backup's copy, qemu-io) passes through it too
                                              "filter-node-name": mirror, "auto-dismiss": False})

    async def _switch(self, qmp: QMPSession, vm: str, disk: InstantDisk) -> None:
        """The copy caught up: the definition names the RBD image first (a QEMU that dies now is
        started again on it, which holds every acknowledged write), then the VM moves onto it."""
        assert disk.target is not None
        with self.vms.catalog.begin() as s:
            self.vms.point_disks(s, vm, {disk.name: disk.target}, formats={disk.name: "raw"})
        await qmp.execute("block-job-complete", {"device": job_id(disk.name)})

    def _export(self, state: InstantRestore, disk: InstantDisk) -> BackupExport:
        """The disk's export, started unless it runs; it outlives this process, for the VM."""
        running = _running_export(disk)
        if running.pid() is not None:
            return running
        Path(disk.socket).unlink(missing_ok=True)
        return BackupExport.start(state.store, state.backup_id, disk.source, Path(disk.socket), outlives_owner=True)

    def _serve_vm(self, state: InstantRestore) -> None:
        """The exports belong to the VM's QEMU from now on: swept once it is gone, and restarted
        by resume()."""
        if (pid := self.vms.driver.status(state.vm).pid) is not None:
            for disk in state.disks:
                _running_export(disk).hand_over(pid)

    def _folder(self, name: str) -> Path:
        """The restore's folder; a name no VM can have has none (and never names another folder)."""
        try:
            return self.settings.data_dir / "instant" / check_vm_name(name)
        except InvalidNameError:
            raise NotFoundError(f"no instant restore into VM {name!r}") from None

    def _save(self, state: InstantRestore) -> None:
        path = self._folder(state.vm) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)


async def _still_copying(qmp: QMPSession, disk: InstantDisk) -> bool:
    """Whether the disk in the running VM still reads from the backup: its image has its backing
    file; onto RBD, it still runs on the overlay (under the mirror's filter, which shows its
    file), not on the image (switched to, or opened by a QEMU started again since)."""
    for entry in await qmp.execute("query-block"):
        if disk_of_qdev(entry.get("qdev", "")) == disk.name:
            inserted = entry.get("inserted", {})
            if disk.target:
                return inserted.get("image", {}).get("filename") == disk.overlay
            return "backing_file" in inserted
    raise NotFoundError(f"the VM has no disk {disk.name}")


def target_node(disk: str) -> str:
    """The node of the RBD image a disk is copied into (node names are at most 31 characters, disk names 26)."""
    return f"{disk}-rbd"


def _running_export(disk: InstantDisk) -> BackupExport:
    socket = Path(disk.socket)
    return BackupExport(socket, socket.with_suffix(".pid"))


def _backing(disk: InstantDisk) -> str | None:
    """The overlay file's backing file, read from its header (the VM may not run); none once the
    disk moved onto its RBD image."""
    if disk.target and not Path(disk.overlay).exists():
        return None
    return image_info(disk.overlay).get("backing-filename")
