"""The routers of the appliance's operations (jobs, events, policies, deletion) and what runs beside them.

While the web app runs, it takes over the jobs a previous run left (rolled back or resumed)
and runs the scheduler.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from appliance.context import Appliance
from appliance.notifications.notifier import Notifier
from appliance.policies.scheduler import Scheduler

from .deletion import deletion_router
from .jobs import job_router
from .policies import policy_router


def operations_router(appliance: Appliance) -> APIRouter:
    @asynccontextmanager
    async def running(_: FastAPI) -> AsyncIterator[None]:
        appliance.jobs.recover()
        scheduler = Scheduler.for_appliance(appliance)
        scheduler.start()
        notifier = Notifier.for_appliance(appliance)   # alarms and their messages: notifications/notifier.py
        notifier.start()
        try:
            yield
        finally:
            notifier.stop()
            scheduler.stop()

    router = APIRouter(lifespan=running)
    router.include_router(job_router(appliance))
    router.include_router(policy_router(appliance))
    router.include_router(deletion_router(appliance))
    return router
