"""Backups under /api/v1/backups: the list the caller sees, and one backup.

Taking a backup is a job (api/jobs.py); restoring one is api/restores.py's.
"""
from __future__ import annotations

from fastapi import APIRouter, Response

from appliance.access.visibility import vm_visible
from appliance.backups.catalog import BackupCatalog
from appliance.backups.records import BackupRecord
from appliance.catalog.query import QueryError
from dedup import BackupNotFoundError

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
