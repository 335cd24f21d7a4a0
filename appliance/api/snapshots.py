"""Snapshot endpoints under /api/v1/vms/{name}/snapshots: the same operations as `cairn snapshot`.

They answer when the operation is done (a commit or pull of a large layer takes a while)."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from appliance.context import Appliance
from appliance.snapshots.service import snapshot_dict, tree_dict


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    automatic: bool = False
    memory: bool = Field(False, description="also save the running guest's memory, so a revert resumes it")


class RevertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: bool | None = Field(None, description="resume from the snapshot's memory state (default: if it has "
                                                  "one; the VM is restarted from it) or, false, the disks only")


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    via: Literal["commit", "pull"] | None = None
    rate_limit: int | None = Field(None, gt=0, description="bytes per second: the block job's speed on a running "
                                   "VM, qemu-img commit -r on a stopped one (an offline pull has no limit)")


def snapshot_router(appliance: Appliance) -> APIRouter:
    router = APIRouter(prefix="/api/v1/vms/{name}/snapshots", tags=["snapshots"])
    service = appliance.snapshots

    @router.get("")
    def list_snapshots(name: str) -> dict[str, Any]:
        return tree_dict(service.tree(name))

    @router.post("", status_code=201)
    async def create_snapshot(name: str, body: SnapshotRequest | None = None) -> dict[str, Any]:
        body = body or SnapshotRequest()
        return snapshot_dict(await service.create(name, body.name, body.automatic, body.memory))

    @router.post("/{snapshot}/revert")
    async def revert_snapshot(name: str, snapshot: str, body: RevertRequest | None = None) -> dict[str, Any]:
        return snapshot_dict(await service.revert(name, snapshot, (body or RevertRequest()).memory))

    @router.delete("/{snapshot}")
    async def delete_snapshot(name: str, snapshot: str, body: DeleteRequest | None = None) -> list[dict[str, Any]]:
        body = body or DeleteRequest()
        merges = await service.delete(name, snapshot, body.via, body.rate_limit)
        return [{"disk": m.disk, "via": m.kind, "moved_bytes": m.moved_bytes} for m in merges]

    @router.post("/check")
    async def check_snapshots(name: str, repair: bool = False) -> dict[str, Any]:
        return vars(await service.check(name, fix=repair))

    return router
