"""The routers of the appliance's operations: jobs, events, policies, deletion, the management nodes.

What runs beside them (recovery, the scheduler, the notifications loop) is the server's to
start, on the node that leads: appliance/server/services.py.
"""
from __future__ import annotations

from fastapi import APIRouter

from . import deletion, jobs, nodes, policies

router = APIRouter()
router.include_router(jobs.router)
router.include_router(policies.router)
router.include_router(deletion.router)
router.include_router(nodes.router)
