"""Backing up a VM: export its disks at one instant, ingest them into the store, record it.

Running VM: a fleecing export over QMP (the guest goes on). Stopped VM: qemu-nbd over
its images. Either way the next incremental starts from the checkpoint bitmap made
at the same instant; if that bitmap cannot be trusted the disk is read in full and
the backup says why. A failed backup leaves no manifest in the store, a catalog row
marked failed, and the previous checkpoint intact.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dedup import BackupManifest, Store, new_backup_id

from transports import NbdSource, ingest_disk
from transports.fleece import FleeceExport
from transports.offline import OfflineExport
from transports.points import DiskPoint
from vmm import QemuDriver, VMSpec

from .catalog import BackupRecord, last_good_backup, utcnow
from .errors import ConflictError, NotFoundError
from .settings import Settings

# progress(disk, bytes done, bytes to read)
Progress = Callable[[str, int, int], None]


@dataclass
class BackupResult:
    manifest: BackupManifest
    notes: list[str] = field(default_factory=list)


def checkpoint_name(backup_id: str) -> str:
    return f"cairn-{backup_id}"


class BackupService:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], driver: QemuDriver, store: Store):
        self.settings = settings
        self.catalog = catalog
        self.driver = driver
        self.store = store

    def list(self, vm: str | None = None) -> list[BackupRecord]:
        with self.catalog.begin() as s:
            _fail_interrupted(s, vm)
        with self.catalog() as s:
            q = select(BackupRecord).order_by(BackupRecord.started_at)
            if vm:
                q = q.where(BackupRecord.vm_name == vm)
            return list(s.scalars(q))

    def get(self, backup_id: str) -> BackupRecord:
        with self.catalog() as s:
            rec = s.get(BackupRecord, backup_id)
            if rec is None:
                raise NotFoundError(f"no backup {backup_id}")
            return rec

    def begin(self, spec: VMSpec, full: bool = False) -> BackupRecord:
        """Claim a backup id and record it as running (so the API can answer at once)."""
        for disk in spec.disks:
            if not Path(disk.path).exists():
                raise NotFoundError(f"disk {disk.name} of VM {spec.name} is missing: {disk.path} does not exist")
        backup_id = new_backup_id(utcnow())
        with self.catalog.begin() as s:
            _fail_interrupted(s, spec.name)
            running = s.scalars(select(BackupRecord).where(BackupRecord.vm_name == spec.name,
                                                           BackupRecord.status == "running")).first()
            if running:
                raise ConflictError(f"backup {running.id} of VM {spec.name} is still running "
                                    f"(pid {running.runner_pid})")
            parent = None if full else last_good_backup(s, spec.name)
            rec = BackupRecord(id=backup_id, vm_name=spec.name, store=str(self.store.path), kind="full",
                               status="running", parent=parent.id if parent else None,
                               checkpoint=checkpoint_name(backup_id), notes=[], runner_pid=os.getpid())
            s.add(rec)
        return rec

    async def run(self, spec: VMSpec, rec: BackupRecord, progress: Progress | None = None) -> BackupResult:
        try:
            result = await self._run(spec, rec, progress)
        except BaseException as e:
            self._finish(rec.id, status="failed", error=str(e) or type(e).__name__)
            raise
        self._finish(rec.id, status="ok", manifest=result.manifest)
        return result

    async def create(self, spec: VMSpec, full: bool = False, progress: Progress | None = None) -> BackupResult:
        return await self.run(spec, self.begin(spec, full), progress)

    async def _run(self, spec: VMSpec, rec: BackupRecord, progress: Progress | None) -> BackupResult:
        parent = self.store.get_backup(rec.parent) if rec.parent else None
        parent_disks = {d.name for d in parent.disks} if parent else set()
        since = {d.name: parent.checkpoint if d.name in parent_disks else None for d in spec.disks}
        scratch = self.settings.scratch_dir / rec.id
        try:
            async with self._export(spec, rec.checkpoint, since, scratch) as (points, repairs):
                manifest = await asyncio.to_thread(self._ingest, spec, rec, parent, points, repairs, progress)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return BackupResult(manifest, manifest.notes)

    @asynccontextmanager
    async def _export(self, spec: VMSpec, checkpoint: str, since: dict[str, str | None],
                      scratch: Path) -> AsyncIterator[tuple[list[DiskPoint], list[str]]]:
        """The VM's disks at one instant; the checkpoint is kept only if the body succeeds."""
        if self.driver.status(spec.name).state in ("running", "paused"):
            live = FleeceExport(scratch, [d.name for d in spec.disks], checkpoint, since)
            async with self.driver.session(spec.name) as qmp:
                try:
                    points = await live.open(qmp)
                except BaseException:
                    await live.close(qmp, success=False)
                    raise
            try:
                yield points, live.notes
            except BaseException:
                async with self.driver.session(spec.name) as qmp:
                    await live.close(qmp, success=False)
                raise
            async with self.driver.session(spec.name) as qmp:
                await live.close(qmp, success=True)
        else:
            offline = OfflineExport({d.name: d.path for d in spec.disks}, checkpoint, since)
            points = await asyncio.to_thread(offline.open)
            try:
                yield points, offline.notes
            except BaseException:
                await asyncio.to_thread(offline.close, False)
                raise
            await asyncio.to_thread(offline.close, True)

    def _ingest(self, spec: VMSpec, rec: BackupRecord, parent: BackupManifest | None,
                points: list[DiskPoint], repairs: list[str], progress: Progress | None) -> BackupManifest:
        incremental = any(p.since for p in points)
        with self.store.begin_backup(vm=spec.name, backup_id=rec.id, kind="incremental" if incremental else "full",
                                     parent=parent if incremental else None, checkpoint=rec.checkpoint,
                                     vm_definition=spec.to_dict()) as session:
            for note in repairs:
                session.note(note)
            for point in points:
                if point.fallback_reason:
                    session.note(point.fallback_reason)
                writer = session.disk(point.disk, point.size)
                report = (lambda done, total, d=point.disk: progress(d, done, total)) if progress else None
                with NbdSource(point.uri, point.since) as source:
                    stats = ingest_disk(source, writer, self.store.chunk_size, incremental=point.since is not None,
                                        progress=report)
                writer.record_read(stats.bytes_read)
            return session.commit()

    def _finish(self, backup_id: str, status: str, manifest: BackupManifest | None = None,
                error: str | None = None) -> None:
        with self.catalog.begin() as s:
            rec = s.get(BackupRecord, backup_id)
            rec.status, rec.finished_at, rec.error, rec.runner_pid = status, utcnow(), error, None
            if manifest:
                rec.kind = manifest.kind
                rec.parent = manifest.parent
                rec.notes = list(manifest.notes)
                rec.size = sum(d.size for d in manifest.disks)
                rec.bytes_read = sum(d.stats.bytes_read for d in manifest.disks)
                rec.bytes_stored = sum(d.stats.bytes_stored for d in manifest.disks)


def _fail_interrupted(session: Session, vm: str | None) -> None:
    """Backups marked running whose process is gone were interrupted: say so.

    What they left behind is cleared by the next backup of the VM (exports, bitmaps) and by
    the store's GC (the unfinished backup directory).
    """
    q = select(BackupRecord).where(BackupRecord.status == "running")
    if vm:
        q = q.where(BackupRecord.vm_name == vm)
    for rec in session.scalars(q):
        if rec.runner_pid is None or not _alive(rec.runner_pid):
            rec.status, rec.finished_at = "failed", utcnow()
            rec.error = f"interrupted: the process running it (pid {rec.runner_pid}) exited"
            rec.runner_pid = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
