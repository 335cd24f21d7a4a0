"""The admin's views: users under /api/v1/users and the audit log at /api/v1/audit."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from appliance.access.roles import Role
from appliance.errors import CairnError, ConflictError, NotFoundError
from appliance.names import InvalidNameError

from .answers import raises
from .auth import Text, UserOut
from .dependencies import ApplianceDep
from .listing import PageSize, Skip


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=64)
    password: Text = Field(max_length=1024)
    role: Role = Role.VIEWER


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    password: Text | None = Field(None, max_length=1024)
    disabled: bool | None = None
    reset_totp: bool = Field(False, description="drop the user's TOTP: they sign in with the password alone")
    groups: list[Text] | None = Field(None, max_length=64, description="the user's groups, replacing the "
                                      "ones they had: they see the VMs shared with these groups")


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    actor: str
    credential: str | None
    client: str | None
    method: str
    path: str
    status: int
    result: str
    error: str | None


# A name taken, the last admin kept, a password too short or a user who is not there.
router = APIRouter(prefix="/api/v1", responses=raises(NotFoundError, ConflictError, InvalidNameError, CairnError))


@router.get("/users", response_model=list[UserOut], tags=["users"])
def list_users(appliance: ApplianceDep) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in appliance.users.list()]


@router.post("/users", response_model=UserOut, status_code=201, tags=["users"])
def create_user(appliance: ApplianceDep, body: UserCreate) -> UserOut:
    return UserOut.model_validate(appliance.users.create(body.name, body.password, body.role))


@router.get("/users/{name}", response_model=UserOut, tags=["users"])
def get_user(appliance: ApplianceDep, name: str) -> UserOut:
    return UserOut.model_validate(appliance.users.get(name))


@router.patch("/users/{name}", response_model=UserOut, tags=["users"])
def update_user(appliance: ApplianceDep, name: str, body: UserUpdate) -> UserOut:
    return UserOut.model_validate(appliance.users.update(name, role=body.role, password=body.password,
                                                         disabled=body.disabled, reset_totp=body.reset_totp,
                                                         groups=body.groups))


@router.delete("/users/{name}", status_code=204, tags=["users"])
def delete_user(appliance: ApplianceDep, name: str) -> Response:
    appliance.users.delete(name)
    return Response(status_code=204)


@router.get("/audit", response_model=list[AuditOut], tags=["audit"])
def audit(appliance: ApplianceDep, actor: str | None = None,
          result: Literal["ok", "denied", "rejected", "failed"] | None = None, since: datetime | None = None,
          text: str | None = Query(None, max_length=200, description="in the path or the error, case aside"),
          limit: PageSize = 100, offset: Skip = 0) -> list[AuditOut]:
    """Newest first."""
    rows = appliance.audit.list(actor=actor, result=result, since=since, text=text, limit=limit, offset=offset)
    return [AuditOut.model_validate(r) for r in rows]
