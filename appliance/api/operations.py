"""The routers of the appliance's operations: jobs, events, policies, deletion, the management nodes.

What runs beside them (recovery, the scheduler, the notifications loop) is the server's to
start, on the node that leads: appliance/server/services.py.
"""
from __future__ import annotations

from fastapi import APIRouter

from appliance.context import Appliance

from .deletion import deletion_router
from .jobs import job_router
from .nodes import node_router
from .policies import policy_router


def operations_router(appliance: Appliance) -> APIRouter:
    router = APIRouter()
    router.include_router(job_router(appliance))
    router.include_router(policy_router(appliance))
    router.include_router(deletion_router(appliance))
    router.include_router(node_router(appliance))
    return router
