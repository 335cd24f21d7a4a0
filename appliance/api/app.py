"""The web API under /api/v1 (OpenAPI at /api/v1/openapi.json).

create_app applies to every route, whichever router brings it: authentication and the role
rule before a body is read, and the limits on bodies (request_gate.RequestGate, api_auth.authorize,
roles.required_role), the audit log of changes (audit.AuditMiddleware), and one error body,
{"error": {"code", "message", "details"}} (ErrorOut).

Every error is translated once, here, by the one table of appliance/error_statuses.py, and every
status a route can answer is declared in the OpenAPI (`declare_statuses`): those of the request
gate and the visibility guard from the route's role and parameters, and those of the errors the
route names with `raises`.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from appliance.access.audit import record_changes
from appliance.access.visibility import guard
from appliance.context import Appliance
from appliance.error_statuses import roots, status_of

from . import access, auth, health, users
from .answers import declare_statuses, error_body
from .auth import bearer
from .dependencies import serve

log = logging.getLogger(__name__)


# HTTP errors raised by the framework itself (no such route, method not allowed), named like ours.
_HTTP_CODES = {404: "NotFoundError", 405: "MethodNotAllowedError"}


def create_app(appliance: Appliance) -> FastAPI:
    """The app; every route it has or is given later needs credentials, except roles.PUBLIC,
    and answers 404 for a VM, backup or job its caller may not see (visibility.guard)."""
    api = FastAPI(title="Cairn", version=health.VERSION, openapi_url="/api/v1/openapi.json", docs_url=None,
                  redoc_url=None, dependencies=[Depends(bearer), Depends(guard(appliance))])
    from .gate import RequestGate  # it answers with this module's error_body
    api.add_middleware(RequestGate, appliance=appliance)
    record_changes(api, appliance.audit)   # added last: outermost, it also records what the gate refuses

    def failed(request: Request, status: int, code: str, message: str, details: Any = None) -> JSONResponse:
        request.state.error = f"{code}: {message}"  # for the audit line
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_body(status, code, message, details, headers)

    async def translated(request: Request, e: Exception) -> JSONResponse:
        status = status_of(e) or 500
        if status == 500:   # the appliance's own fault (not another host's): its log keeps the trace
            log.error("%s %s: %s", request.method, request.url.path, e, exc_info=e)
        return failed(request, status, type(e).__name__, str(e))
    for root in roots():
        api.add_exception_handler(root, translated)

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        return failed(request, 422, "ValidationError", "the request is not valid",
                      [{"loc": list(x["loc"]), "msg": x["msg"]} for x in e.errors()])

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return failed(request, e.status_code, _HTTP_CODES.get(e.status_code, f"HTTP{e.status_code}"), str(e.detail))

    @api.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer; the caller gets the usual body, not a text page.
        return failed(request, 500, "InternalError", "an unexpected error: the appliance's log has the details")

    serve(api, appliance)
    api.include_router(health.router)
    api.include_router(auth.router)
    api.include_router(users.router)
    api.include_router(access.router)

    from . import backups, snapshots, store
    api.include_router(store.router)
    api.include_router(backups.router)
    api.include_router(snapshots.router)
    # Jobs, events, policies, deletion; backups, store verify and GC are started as jobs.
    from . import operations
    api.include_router(operations.router)
    from . import vms
    vms.serve_consoles(api)
    api.include_router(vms.router)
    from . import restores
    api.include_router(restores.router)
    from . import hosts
    api.include_router(hosts.router)
    from . import networks
    api.include_router(networks.router)
    # Prometheus metrics at /metrics; alarms and where their messages go.
    from . import metrics, notifications
    api.include_router(metrics.router)
    metrics.time_requests(api)
    api.include_router(notifications.router)
    # The web console: static files at /ui that call this API like any script.
    from appliance.web import mount_console
    mount_console(api)

    declare_statuses(api)
    return api

