"""Backing up a VM: export its disks at one instant, ingest them into the store, record it.

Running VM: a fleecing export over QMP (the guest goes on). Stopped VM: qemu-nbd over
its images. Either way the next incremental starts from the checkpoint bitmap made
at the same instant, as the catalog's checkpoint ledger records it; if that bitmap
cannot be trusted the disk is read in full and the backup says why. A failed backup
leaves no manifest in the store, a catalog row marked failed, and the previous
checkpoint intact. The manifest is written last, once the export is closed: a backup whose
export cannot be closed (QEMU died after a push copied the instant) fails with nothing in the
store, as its record says.
"""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.backups import checkpoints
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError, NotFoundError
from appliance.process import claim
from appliance.settings import Settings
from dedup import BackupManifest, Store, new_backup_id
from transports.fleece import FleeceExport
from transports.guest_agent import GuestFreeze
from transports.live import LiveExport, exported
from transports.offline import OfflineExport
from transports.points import DiskPoint
from transports.push import NbdPushTarget, PushExport, PushTarget
from transports.sshfs import SshfsPushTarget
from vmm import QemuDriver, VMSpec
from vmm.cmdline import GUEST_AGENT_CHARDEV, protocol_driver
from vmm.hosts import HostDisk
from vmm.network_disks import is_network
from vmm.spec import CDROM_NODE

from .catalog import BackupCatalog, fail_interrupted
from .ingest import seal_points
from .options import BackupOptions, Progress
from .records import BackupRecord, BackupStatus, last_good_backup


@dataclass
class BackupResult:
    manifest: BackupManifest
    notes: list[str] = field(default_factory=list)
    points: list[DiskPoint] = field(default_factory=list)   # what was read, and the checkpoints made


def spec_disks(spec: VMSpec) -> list[HostDisk]:
    """A Cairn VM's disks as a disk selection sees them (a missing path is reported by the
    backup), and its cdrom, which is left out."""
    disks = [HostDisk(d.name, d.path, d.format, kind=_kind(d.path)) for d in spec.disks]
    if spec.cdrom is not None:
        disks.append(HostDisk(CDROM_NODE, spec.cdrom, "raw", device="cdrom", readonly=True))
    return disks


def _kind(path: str) -> str:
    if is_network(path):
        return "network"
    return "block" if protocol_driver(path) == "host_device" else "file"


def checkpoint_name(backup_id: str) -> str:
    return f"cairn-{backup_id}"


class BackupService:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], driver: QemuDriver, store: Store):
        self.settings = settings
        self.catalog = catalog
        self.driver = driver
        self.store = store
        self.records = BackupCatalog(catalog)

    def get(self, backup_id: str) -> BackupRecord:
        return self.records.get(backup_id)

    def begin(self, spec: VMSpec, full: bool = False, backup_id: str | None = None) -> BackupRecord:
        """Claim a backup id (`backup_id`, or a new one) and record it as running (so the API
        can answer at once)."""
        for disk in spec.disks:
            if is_network(disk.path):
                continue   # reached when it is read: the export says what is wrong
            if not Path(disk.path).exists():
                raise NotFoundError(f"disk {disk.name} of VM {spec.name} is missing: {disk.path} does not exist")
        backup_id = backup_id or new_backup_id(utcnow())
        with self.catalog.begin() as s:
            fail_interrupted(s, spec.name)
            running = s.scalars(select(BackupRecord).where(BackupRecord.vm_name == spec.name,
                                                           BackupRecord.status == BackupStatus.RUNNING)).first()
            if running:
                raise ConflictError(f"backup {running.id} of VM {spec.name} is still running "
                                    f"(pid {running.runner_pid})")
            parent = None if full else last_good_backup(s, spec.name)
            rec = BackupRecord(id=backup_id, vm_name=spec.name, store=self.store.location, kind="full",
                               status=BackupStatus.RUNNING, parent=parent.id if parent else None,
                               checkpoint=checkpoint_name(backup_id), notes=[], **claim())
            s.add(rec)
        return rec

    async def run(self, spec: VMSpec, rec: BackupRecord, progress: Progress | None = None,
                  options: BackupOptions = BackupOptions()) -> BackupResult:
        try:
            result = await self._run(spec, rec, progress, options)
        except BaseException as e:
            self._finish(rec.id, status=BackupStatus.FAILED, error=str(e) or type(e).__name__)
            raise
        self._finish(rec.id, status=BackupStatus.OK, manifest=result.manifest, points=result.points)
        return result

    async def create(self, spec: VMSpec, full: bool = False, progress: Progress | None = None,
                     options: BackupOptions = BackupOptions()) -> BackupResult:
        return await self.run(spec, self.begin(spec, full), progress, options)

    async def _run(self, spec: VMSpec, rec: BackupRecord, progress: Progress | None,
                   options: BackupOptions) -> BackupResult:
        parent = self.store.get_backup(rec.parent) if rec.parent else None
        choice = options.disks.choose(f"VM {spec.name}", spec_disks(spec))
        chosen = replace(spec, disks=[d for d in spec.disks if d.name in choice.names])
        with self.catalog() as s:
            ledger = checkpoints.current(s, spec.name)
        bases = checkpoints.plan_bases(choice.names, parent, ledger, options.full_every)
        scratch = self.settings.scratch_dir / rec.id
        try:
            with ExitStack() as unpublished:
                async with self._export(chosen, rec.new_checkpoint, bases, scratch, options) as (points, repairs):
                    session, sealed = await asyncio.to_thread(
                        seal_points, unpublished, self.store, vm=spec.name, backup_id=rec.id, parent=parent,
                        checkpoint=rec.checkpoint, definition=spec.to_dict(),
                        notes=choice.notes + bases.notes + repairs, points=points, progress=progress)
                # Only once QEMU let go of the instant: an export that could not be closed (QEMU
                # died) fails the backup, which then leaves no manifest in the store.
                manifest = await asyncio.to_thread(session.publish, sealed)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return BackupResult(manifest, list(manifest.notes), points)

    @asynccontextmanager
    async def _export(self, spec: VMSpec, checkpoint: str, bases: checkpoints.Bases, scratch: Path,
                      options: BackupOptions) -> AsyncIterator[tuple[list[DiskPoint], list[str]]]:
        """The VM's disks at one instant; the checkpoint is kept only if the body succeeds."""
        if self.driver.status(spec.name).state in ("running", "paused"):
            freeze = GuestFreeze(self.driver.paths(spec.name).guest_agent_socket, GUEST_AGENT_CHARDEV)
            live = await self._live_export(spec, checkpoint, bases, scratch, options, freeze)
            async with exported(live, lambda: self.driver.session(spec.name)) as points:
                yield points, live.notes + freeze.notes
        else:
            offline = OfflineExport({d.name: d.path for d in spec.disks}, checkpoint, bases.known, set(bases.full))
            points = await asyncio.to_thread(offline.open)
            if options.transport != "pull":
                offline.notes.append(f"the VM is stopped: its images were read directly, not by {options.transport}")
            try:
                yield points, offline.notes
            except BaseException:
                await asyncio.to_thread(offline.close, False)
                raise
            await asyncio.to_thread(offline.close, True)

    async def _live_export(self, spec: VMSpec, checkpoint: str, bases: checkpoints.Bases, scratch: Path,
                           options: BackupOptions, freeze: GuestFreeze) -> LiveExport:
        args = ([d.name for d in spec.disks], checkpoint, bases.known, set(bases.full))
        if options.transport == "pull":
            return FleeceExport(scratch, *args, quiesce=freeze.around)
        if options.sshfs is not None:   # the sshfs transport: BackupOptions holds its endpoint exactly then
            target: PushTarget = await asyncio.to_thread(SshfsPushTarget, options.sshfs, scratch.name)
        else:
            target = NbdPushTarget(scratch)
        return PushExport(target, *args, quiesce=freeze.around)

    def _finish(self, backup_id: str, status: BackupStatus, manifest: BackupManifest | None = None,
                error: str | None = None, points: list[DiskPoint] | None = None) -> None:
        with self.catalog.begin() as s:
            rec = s.get_one(BackupRecord, backup_id)
            if points is not None:
                checkpoints.record(s, rec.vm_name, backup_id, points, checkpoints.current(s, rec.vm_name))
            rec.status, rec.finished_at, rec.error = status, utcnow(), error
            rec.runner_pid = rec.runner_start = None
            if manifest:
                rec.kind = manifest.kind
                rec.parent = manifest.parent
                rec.notes = list(manifest.notes)
                rec.size = sum(d.size for d in manifest.disks)
                rec.bytes_read = sum(d.stats.bytes_read for d in manifest.disks)
                rec.bytes_stored = sum(d.stats.bytes_stored for d in manifest.disks)

    # Last in the class: the name would shadow the built-in `list` in the annotations after it.
    def list(self, vm: str | None = None) -> list[BackupRecord]:
        return self.records.list(vm)
