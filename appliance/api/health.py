"""GET /api/v1/health: whether the appliance answers, its version and where its store is.

Public (access/roles.PUBLIC): load balancers, `cairn serve`'s own start-up check and the tests
poll it before signing in. Its router is included first, so the first request, which builds
the routes of the router it reaches, does not wait for the others."""
from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from .dependencies import ApplianceDep

VERSION = "0.1.0"

router = APIRouter()


class Health(BaseModel):
    status: str
    version: str
    store: str


@router.get("/api/v1/health", response_model=Health)
def health(appliance: ApplianceDep) -> Health:
    return Health(status="ok", version=VERSION, store=appliance.store.location)
