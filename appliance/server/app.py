"""The app `cairn serve` runs: the web API, and the node's services for as long as it serves.

The API modules only declare routes; what runs beside them (the scheduler, HA, recovery, the
event relay: services.py) is started here, on the node and, for the leader's part, only while
this node leads.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from appliance.api.app import create_app
from appliance.context import Appliance

from .services import NodeServices


def server_app(appliance: Appliance, address: str = "") -> FastAPI:
    """create_app's API with the node's services (listening at `address`, for people). A node
    that may not serve (another `cairn serve` holds its name, or the SQLite catalog) is refused
    now, before anything listens."""
    appliance.jobs.nodes.check_serve()
    api = create_app(appliance)
    services = NodeServices(appliance, address)
    routers_lifespan = api.router.lifespan_context

    @asynccontextmanager
    async def serving(app: FastAPI) -> AsyncIterator[None]:
        async with routers_lifespan(app):   # none of the API's routers has one now, nor yields a state
            await run_in_threadpool(services.start)
            try:
                yield
            finally:
                await run_in_threadpool(services.stop)

    api.router.lifespan_context = serving
    return api
