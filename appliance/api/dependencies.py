"""What a route handler is given besides its request: the appliance it serves, and its caller.

Route handlers are module-level functions on a module-level `router`, as any FastAPI route:
they name what they need in their signature, and create_app puts the appliance where
`the_appliance` finds it (the app's state), so one module serves any number of apps (the tests
make many):

    router = APIRouter(prefix="/api/v1/vms/{name}/snapshots", tags=["snapshots"])

    @router.get("")
    def list_snapshots(appliance: ApplianceDep, name: str) -> dict[str, Any]: ...

The caller is auth.py's `Caller` (the principal the request gate authenticated).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection

from appliance.context import Appliance


def serve(api: FastAPI, appliance: Appliance) -> None:
    """Make `appliance` the one this app's route handlers are given."""
    api.state.appliance = appliance


def the_appliance(connection: HTTPConnection) -> Appliance:
    """The appliance of the app the request (or WebSocket) reached: create_app's `serve`."""
    appliance: Appliance = connection.app.state.appliance
    return appliance


ApplianceDep = Annotated[Appliance, Depends(the_appliance)]

__all__ = ["ApplianceDep", "serve", "the_appliance"]
