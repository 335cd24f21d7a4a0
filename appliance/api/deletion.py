"""Deleting backups and policies under deletion protection, the rules, and the recycle bin.

Every DELETE takes `?dry_run=true`: then it only says what the deletion would take with it.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from appliance.access.visibility import recycled_visible
from appliance.catalog.query import ListQuery
from appliance.deletion.deletables import deletion_service
from appliance.deletion.protection import DeletionRule, DeletionService, Impact, RecycledOut, recycled_out
from appliance.errors import ConflictError, NotFoundError

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep
from .listing import list_query

# Deleting, restoring and purging meet what is not there, and what protection or state forbids.
router = APIRouter(prefix="/api/v1", tags=["deletion"], responses=raises(NotFoundError, ConflictError))


def the_deletions(appliance: ApplianceDep) -> DeletionService:
    """A route's deletion service: made per request, it holds nothing but the appliance's."""
    return deletion_service(appliance)


Deletions = Annotated[DeletionService, Depends(the_deletions)]


def delete_or_preview(deletions: DeletionService, kind: str, name: str, dry_run: bool) -> Impact:
    return deletions.preview(kind, name) if dry_run else deletions.delete(kind, name)


@router.delete("/backups/{backup_id}", response_model=Impact)
def delete_backup(deletions: Deletions, backup_id: str, dry_run: bool = False) -> Impact:
    """Delayed by default: the backup waits in the recycle bin (restorable) for a week."""
    return delete_or_preview(deletions, "backup", backup_id, dry_run)


@router.delete("/policies/{ref}", response_model=Impact)
def delete_policy(deletions: Deletions, ref: str, dry_run: bool = False) -> Impact:
    return delete_or_preview(deletions, "policy", ref, dry_run)


@router.get("/deletion-rules", response_model=dict[str, DeletionRule])
def get_rules(deletions: Deletions) -> dict[str, DeletionRule]:
    return deletions.rules()


@router.put("/deletion-rules/{kind}", response_model=DeletionRule)
def set_rule(deletions: Deletions, kind: str, rule: DeletionRule) -> DeletionRule:
    return deletions.set_rule(kind, rule)


@router.get("/recycle-bin", response_model=list[RecycledOut])
def list_bin(deletions: Deletions, caller: Caller, query: Annotated[ListQuery, Depends(list_query)],
             response: Response) -> list[RecycledOut]:
    return [recycled_out(r) for r in deletions.page(query, recycled_visible(caller), response)]


@router.post("/recycle-bin/{recycle_id}/restore", response_model=RecycledOut)
def restore(deletions: Deletions, recycle_id: str) -> RecycledOut:
    return deletions.restore(recycle_id)


@router.delete("/recycle-bin/{recycle_id}", response_model=RecycledOut)
def purge(deletions: Deletions, recycle_id: str) -> RecycledOut:
    """Delete for good now, without waiting for its purge time."""
    return deletions.purge(recycle_id)
