"""The catalog's side of backups: listing and finding them, and telling interrupted ones.

Light on purpose (SQLAlchemy and the tables only): `cairn backup list` and the API's
listings use it without loading the machinery that makes backups.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, exists, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from appliance.catalog.base import utcnow
from appliance.catalog.paging import fetch_page, page_statement
from appliance.catalog.query import MAX_INTEGER, HasHeaders, ListQuery
from appliance.errors import NotFoundError

from .records import BackupRecord, BackupStatus


class BackupCatalog:
    def __init__(self, catalog: sessionmaker[Session]):
        self.catalog = catalog

    def page(self, query: ListQuery, where: ColumnElement[bool] | None = None, vm: str | None = None,
             response: HasHeaders | None = None, latest: bool = False) -> list[BackupRecord]:
        """The backups `query` asks for, among those `where` selects (the caller's visible
        ones), of VM `vm` if given and, with `latest`, only each VM's newest: oldest first
        unless it sorts otherwise, filtered, sorted and paged in the catalog. Backups whose
        process died are marked failed first."""
        with self.catalog.begin() as s:
            fail_interrupted(s, vm)
        with self.catalog() as s:
            return fetch_page(s, self.statement(query, where, vm, latest), response)

    @staticmethod
    def statement(query: ListQuery, where: ColumnElement[bool] | None = None, vm: str | None = None,
                  latest: bool = False) -> Select[Any]:
        """The SELECT of page()."""
        stmt = select(BackupRecord)
        if where is not None:
            stmt = stmt.where(where)
        if vm:
            stmt = stmt.where(BackupRecord.vm_name == vm)
        if latest:   # no newer backup of the same VM
            newer = aliased(BackupRecord)
            stmt = stmt.where(~exists().where(newer.vm_name == BackupRecord.vm_name,
                                              newer.started_at > BackupRecord.started_at))
        return page_statement(query.sorted_by_default("started_at"), BackupRecord, stmt)

    def get(self, backup_id: str) -> BackupRecord:
        with self.catalog() as s:
            rec = s.get(BackupRecord, backup_id)
            if rec is None:
                raise NotFoundError(f"no backup {backup_id}")
            return rec

    # Last in the class: the name would shadow the built-in `list` in the annotations after it.
    def list(self, vm: str | None = None) -> list[BackupRecord]:
        """Every backup (of VM `vm`), oldest first (a listing to show: page())."""
        return self.page(ListQuery(limit=MAX_INTEGER), vm=vm)


def fail_interrupted(session: Session, vm: str | None) -> None:
    """Backups marked running whose process is gone were interrupted: say so.

    What they left behind is cleared by the next backup of the VM (exports, bitmaps) and by
    the store's GC (the unfinished backup directory).
    """
    q = select(BackupRecord).where(BackupRecord.status == BackupStatus.RUNNING)
    if vm:
        q = q.where(BackupRecord.vm_name == vm)
    for rec in session.scalars(q):
        from appliance.jobs.nodes import process_gone  # only then: a listing needs none of the jobs' machinery

        if process_gone(session, rec.runner_pid, rec.runner_start):
            rec.status, rec.finished_at = BackupStatus.FAILED, utcnow()
            rec.error = f"interrupted: the process running it (pid {rec.runner_pid}) exited"
            rec.runner_pid = rec.runner_start = None

