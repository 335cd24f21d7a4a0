"""The catalog's side of backups: listing and finding them, and telling interrupted ones.

Light on purpose (SQLAlchemy and the tables only): `cairn backup list` and the API's
listings use it without loading the machinery that makes backups.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow
from appliance.errors import NotFoundError
from appliance.process import alive

from .records import BackupRecord, BackupStatus


class BackupCatalog:
    def __init__(self, catalog: sessionmaker[Session]):
        self.catalog = catalog

    def list(self, vm: str | None = None) -> list[BackupRecord]:
        with self.catalog.begin() as s:
            fail_interrupted(s, vm)
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


def fail_interrupted(session: Session, vm: str | None) -> None:
    """Backups marked running whose process is gone were interrupted: say so.

    What they left behind is cleared by the next backup of the VM (exports, bitmaps) and by
    the store's GC (the unfinished backup directory).
    """
    q = select(BackupRecord).where(BackupRecord.status == BackupStatus.RUNNING)
    if vm:
        q = q.where(BackupRecord.vm_name == vm)
    for rec in session.scalars(q):
        if not alive(rec.runner_pid, rec.runner_start):
            rec.status, rec.finished_at = BackupStatus.FAILED, utcnow()
            rec.error = f"interrupted: the process running it (pid {rec.runner_pid}) exited"
            rec.runner_pid = rec.runner_start = None

