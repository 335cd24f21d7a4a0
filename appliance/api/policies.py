"""Backup and snapshot policies under /api/v1/policies, and the VM tags they select by."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import Field

from appliance.access.visibility import visibility
from appliance.catalog.query import ListQuery
from appliance.errors import ConflictError, NotFoundError
from appliance.policies.service import Policy, PolicyOut, PolicyService, policy_out

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep
from .listing import list_query
from .models import PolicyPreview

Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=63)]


router = APIRouter(prefix="/api/v1", tags=["policies"], responses=raises(NotFoundError, ConflictError))


def the_policies(appliance: ApplianceDep) -> PolicyService:
    """A route's policy service: made per request, it holds nothing but the catalog."""
    return PolicyService(appliance.catalog)


Policies = Annotated[PolicyService, Depends(the_policies)]


@router.get("/policies", response_model=list[PolicyOut])
def list_policies(policies: Policies, query: Annotated[ListQuery, Depends(list_query)],
                  response: Response) -> list[PolicyOut]:
    return [policy_out(r) for r in policies.page(query, response)]


@router.post("/policies", response_model=PolicyOut, status_code=201)
def create_policy(policies: Policies, policy: Annotated[Policy, Body()]) -> PolicyOut:
    return policy_out(policies.create(policy))


@router.get("/policies/{ref}", response_model=PolicyOut)
def get_policy(policies: Policies, ref: str) -> PolicyOut:
    """`ref` is the policy's id or name."""
    return policy_out(policies.get(ref))


@router.put("/policies/{ref}", response_model=PolicyOut)
def replace_policy(policies: Policies, ref: str, policy: Annotated[Policy, Body()]) -> PolicyOut:
    return policy_out(policies.replace(ref, policy))


@router.get("/policies/{ref}/preview", response_model=PolicyPreview)
def preview_policy(appliance: ApplianceDep, policies: Policies, caller: Caller, ref: str,
                   count: Annotated[int, Query(ge=1, le=100)] = 5) -> PolicyPreview:
    return PolicyPreview(**policies.preview(ref, count, visibility(appliance).seen(caller)))


@router.get("/vms/{name}/tags", response_model=list[str])
def get_tags(policies: Policies, name: str) -> list[str]:
    return policies.tags(name)


@router.put("/vms/{name}/tags", response_model=list[str])
def set_tags(policies: Policies, name: str, tags: Annotated[list[Tag], Body()]) -> list[str]:
    return policies.set_tags(name, tags)
