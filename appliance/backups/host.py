"""What backing up a VM of another host shares, whatever reaches it (libvirt, SSH): claiming the
backup in the catalog, ingesting the exported points into the store, recording how it ended.

Such a VM's backups go by `<vm>@<host>` in the catalog and the store, so listing, restores,
verify and prune treat them like a local VM's. A failed backup leaves no manifest and a catalog
row marked failed; what becomes of its checkpoint is the export's business. A good one's
checkpoints go in the ledger (checkpoints.py), from which the next backup's bases come.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow
from appliance.errors import ConflictError
from appliance.process import claim
from appliance.settings import Settings
from dedup import BackupManifest, Store, new_backup_id
from dedup.names import check_name
from dedup.writer import BackupSession
from transports.points import DiskPoint

from . import checkpoints
from .catalog import fail_interrupted
from .ingest import seal_points
from .options import Progress
from .records import BackupRecord, BackupStatus, last_good_backup
from .service import BackupResult, checkpoint_name


def backup_vm_name(host: str, vm: str) -> str:
    """The name a host's VM (or libvirt domain) goes by in the catalog and the store."""
    return check_name("vm name", f"{vm}@{host}")


class HostBackups:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], store: Store):
        self.settings = settings
        self.catalog = catalog
        self.store = store

    def run(self, vm: str, full: bool,
            body: Callable[[BackupRecord, BackupManifest | None, str | None], BackupResult]) -> BackupResult:
        """Claim a backup of `vm`, run `body(record, parent manifest, parent checkpoint)` (no parent:
        a full backup) and record how it ended."""
        rec = self._begin(vm, full)
        try:
            parent, since = None, None
            if rec.parent:
                parent = self.store.get_backup(rec.parent)
                with self.catalog() as s:
                    since = s.get_one(BackupRecord, rec.parent).checkpoint
            result = body(rec, parent, since)
        except BaseException as e:
            self._finish(rec.id, BackupStatus.FAILED, error=str(e) or type(e).__name__)
            raise
        self._finish(rec.id, BackupStatus.OK, manifest=result.manifest, points=result.points)
        return result

    def seal(self, unpublished: ExitStack, rec: BackupRecord, parent: BackupManifest | None, points: list[DiskPoint],
             notes: list[str], progress: Progress | None, definition: dict[str, Any]) -> tuple[BackupSession,
                                                                                             BackupManifest]:
        """Read the points into the store, sealed (ingest.seal_points): the caller publishes the
        manifest once its export is closed."""
        return seal_points(unpublished, self.store, vm=rec.vm_name, backup_id=rec.id, parent=parent,
                           checkpoint=rec.checkpoint, definition=definition, notes=notes, points=points,
                           progress=progress)

    def _begin(self, vm: str, full: bool) -> BackupRecord:
        backup_id = new_backup_id(utcnow())
        with self.catalog.begin() as s:
            fail_interrupted(s, vm)
            running = s.scalars(select(BackupRecord).where(BackupRecord.vm_name == vm,
                                                           BackupRecord.status == BackupStatus.RUNNING)).first()
            if running:
                raise ConflictError(f"backup {running.id} of {vm} is still running (pid {running.runner_pid})")
            parent = None if full else last_good_backup(s, vm)
            rec = BackupRecord(id=backup_id, vm_name=vm, store=self.store.location, kind="full",
                               status=BackupStatus.RUNNING,
                               parent=parent.id if parent else None, checkpoint=checkpoint_name(backup_id),
                               notes=[], **claim())
            s.add(rec)
        return rec

    def _finish(self, backup_id: str, status: BackupStatus, manifest: BackupManifest | None = None,
                error: str | None = None, points: list[DiskPoint] | None = None) -> None:
        with self.catalog.begin() as s:
            rec = s.get_one(BackupRecord, backup_id)
            if points is not None:
                checkpoints.record(s, rec.vm_name, backup_id, points, checkpoints.current(s, rec.vm_name))
            rec.status, rec.finished_at, rec.error = status, utcnow(), error
            rec.runner_pid = rec.runner_start = None
            if manifest:
                rec.kind, rec.parent, rec.notes = manifest.kind, manifest.parent, list(manifest.notes)
                rec.size = sum(d.size for d in manifest.disks)
                rec.bytes_read = sum(d.stats.bytes_read for d in manifest.disks)
                rec.bytes_stored = sum(d.stats.bytes_stored for d in manifest.disks)
