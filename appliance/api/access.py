"""Who owns a VM and which group shares it, under /api/v1/vms/{name}/access: anyone who sees the
VM may read it, an admin sets it (the rule itself: appliance/access/visibility.py)."""
from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from appliance.access.records import VMAccessRecord
from appliance.access.visibility import visibility

from .dependencies import ApplianceDep


class AccessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: str | None = Field(None, max_length=64, description="a user name; none: shared with everyone")
    group: str | None = Field(None, max_length=64, description="a group whose members see it too")


class AccessOut(BaseModel):
    vm: str
    owner: str | None
    group: str | None


router = APIRouter(prefix="/api/v1/vms/{name}/access", tags=["vms"])


@router.get("", response_model=AccessOut)
def get_access(appliance: ApplianceDep, name: str) -> AccessOut:
    appliance.vms.spec(name)   # a 404 for a VM that does not exist
    return _access_out(visibility(appliance).get(name))


@router.put("", response_model=AccessOut)
def set_access(appliance: ApplianceDep, name: str, body: AccessIn) -> AccessOut:
    return _access_out(visibility(appliance).set(name, body.owner, body.group))


def _access_out(rec: VMAccessRecord) -> AccessOut:
    return AccessOut(vm=rec.vm_name, owner=rec.owner, group=rec.group)
