"""Snapshot endpoints under /api/v1/vms/{name}/snapshots: the same operations as `cairn snapshot`.

Taking, reverting and deleting a snapshot are jobs on the VM (a commit or pull of a large layer
takes a while): they answer 202 with the job, whose result is the snapshot (or the merges)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from appliance.jobs.params import (
    DeleteRequest,
    RevertRequest,
    SnapshotCreateParams,
    SnapshotDeleteParams,
    SnapshotRequest,
    SnapshotRevertParams,
)

from .auth import Caller
from .dependencies import ApplianceDep
from .jobs import SUBMIT_ERRORS, JobOut, submit_job
from .models import snapshot_tree

router = APIRouter(prefix="/api/v1/vms/{name}/snapshots", tags=["snapshots"])


@router.get("")
def list_snapshots(appliance: ApplianceDep, name: str) -> dict[str, Any]:
    return snapshot_tree(appliance.snapshots, name)


@router.post("", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def create_snapshot(appliance: ApplianceDep, caller: Caller, name: str, body: SnapshotRequest | None = None) -> JobOut:
    params = SnapshotCreateParams(vm=name, **(body or SnapshotRequest()).model_dump())
    return submit_job(appliance, caller, "snapshot.create", params)


@router.post("/{snapshot}/revert", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def revert_snapshot(appliance: ApplianceDep, caller: Caller, name: str, snapshot: str,
                    body: RevertRequest | None = None) -> JobOut:
    params = SnapshotRevertParams(vm=name, snapshot=snapshot, **(body or RevertRequest()).model_dump())
    return submit_job(appliance, caller, "snapshot.revert", params)


@router.delete("/{snapshot}", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def delete_snapshot(appliance: ApplianceDep, caller: Caller, name: str, snapshot: str,
                    body: DeleteRequest | None = None) -> JobOut:
    params = SnapshotDeleteParams(vm=name, snapshot=snapshot, **(body or DeleteRequest()).model_dump())
    return submit_job(appliance, caller, "snapshot.delete", params)


@router.post("/check")
async def check_snapshots(appliance: ApplianceDep, name: str, repair: bool = False) -> dict[str, Any]:
    return vars(await appliance.snapshots.check(name, fix=repair))
