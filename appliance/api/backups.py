"""Backups under /api/v1/backups: the list the caller sees, one backup, and its protection.

Taking a backup is a job (api/jobs.py); restoring one is api/restores.py's. Protecting one
(never pruned, nor deleted while protected) answers the backup as it is then, for the caller to
show without asking again: the operator's, like deleting one; the lock that nobody lifts before
its date is the admin's (api/store.py).
"""
from __future__ import annotations

from fastapi import APIRouter, Response

from appliance.access.visibility import vm_visible
from appliance.backups.catalog import BackupCatalog
from appliance.backups.protection import BackupProtection
from appliance.backups.records import BackupRecord
from appliance.catalog.query import QueryError
from appliance.errors import ConflictError, NotFoundError
from dedup import BackupNotFoundError, StoreError

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep
from .listing import Query
from .models import BackupOut

router = APIRouter(prefix="/api/v1/backups", tags=["backups"])


@router.get("", response_model=list[BackupOut], responses=raises(QueryError))
def list_backups(appliance: ApplianceDep, caller: Caller, query: Query, response: Response, vm: str | None = None,
                 latest: bool = False) -> list[BackupOut]:
    """A page of the backups the caller sees (of VM `vm`; with `latest`, each VM's newest
    only), oldest first unless `sort` says otherwise (the list query: docs/api.md)."""
    records = BackupCatalog(appliance.catalog).page(query, vm_visible(BackupRecord.vm_name, caller), vm, response,
                                                    latest)
    return [BackupOut.model_validate(r) for r in records]


@router.get("/{backup_id}", response_model=BackupOut, responses=raises(BackupNotFoundError))
def get_backup(appliance: ApplianceDep, backup_id: str) -> BackupOut:
    return BackupOut.model_validate(appliance.backups.get(backup_id))


PROTECTION_ERRORS = raises(NotFoundError, ConflictError, StoreError)


@router.put("/{backup_id}/protection", response_model=BackupOut, responses=PROTECTION_ERRORS)
def protect_backup(appliance: ApplianceDep, backup_id: str) -> BackupOut:
    """Protect the backup: no prune removes it and it cannot be deleted until it is unprotected
    (the store's `protected` mark). Asking again changes nothing. A running, failed, pruned or
    recycled backup is refused (409)."""
    return BackupOut.model_validate(BackupProtection(appliance.catalog, appliance.store).protect(backup_id))


@router.delete("/{backup_id}/protection", response_model=BackupOut, responses=PROTECTION_ERRORS)
def unprotect_backup(appliance: ApplianceDep, backup_id: str) -> BackupOut:
    """Unprotect the backup: retention rules and deletion apply to it again. Asking again changes nothing."""
    return BackupOut.model_validate(BackupProtection(appliance.catalog, appliance.store).unprotect(backup_id))
