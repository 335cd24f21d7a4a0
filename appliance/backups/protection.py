"""Protecting a backup ("never prune"), as the API, the CLI and the console ask for it.

The store's `protected` file (docs/store-format.md) is the truth: prune and delete read it there,
it goes with the backup when the store is synced, and it outlives the catalog. The catalog's
`protected` column is what the appliance last saw of it, so that lists show, sort and filter it
without reading the store. A change writes the store first, then the column (a crash between the
two leaves the catalog behind the store, never a backup pruned that the store says to keep), and
every prune of a VM writes back what it read of its backups' markers (`record_protection`). A
marker set or removed behind the appliance's back (dedup on the store itself, another appliance
sharing it) shows in the catalog after the VM's next prune, or the next protect or unprotect of
that backup: both may be asked again and set both places.
"""
from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import ConflictError, NotFoundError
from dedup import PruneReport, Store, protect, unprotect

from .catalog import fail_interrupted
from .records import BackupRecord, BackupStatus

# Why a backup not "ok" is refused, by its status: only a backup whose data is in the store has
# a protection to change.
_REFUSED = {
    BackupStatus.RUNNING: "backup {id} is still running: {verb} it once it is done",
    BackupStatus.FAILED: "backup {id} failed: the store holds nothing of it to {verb}",
    BackupStatus.PRUNED: "backup {id} was pruned: the store holds nothing of it to {verb}",
    BackupStatus.RECYCLED: "backup {id} is in the recycle bin: restore it from there before you {verb} it",
}


class BackupProtection:
    def __init__(self, catalog: sessionmaker[Session], store: Store):
        self.catalog = catalog
        self.store = store

    def protect(self, backup_id: str) -> BackupRecord:
        """Never prune the backup (nor delete it, until it is unprotected); the backup as it is now."""
        return self._set(backup_id, True)

    def unprotect(self, backup_id: str) -> BackupRecord:
        """Let retention rules and deletion apply to the backup again; the backup as it is now."""
        return self._set(backup_id, False)

    def _set(self, backup_id: str, protected: bool) -> BackupRecord:
        with self.catalog.begin() as s:
            rec = s.get(BackupRecord, backup_id)
            if rec is None:
                raise NotFoundError(f"no backup {backup_id}")
            fail_interrupted(s, rec.vm_name)   # a "running" backup whose process died is said failed
            status = rec.status
        if status != BackupStatus.OK:
            raise ConflictError(_REFUSED[status].format(id=backup_id, verb="protect" if protected else "unprotect"))
        (protect if protected else unprotect)(self.store, backup_id)
        with self.catalog.begin() as s:
            rec = s.get_one(BackupRecord, backup_id)
            rec.protected = protected
        return rec


def record_protection(session: Session, report: PruneReport) -> None:
    """What a prune read of the markers of the backups it ruled on (kept as "protected" or not),
    into the catalog."""
    marked: Mapping[str, bool] = {d.backup_id: "protected" in d.reasons for d in report.decisions}
    for rec in session.scalars(select(BackupRecord).where(BackupRecord.id.in_(marked))):
        rec.protected = marked[rec.id]
