"""The web API under /api/v1 (OpenAPI at /api/v1/openapi.json).

create_app applies to every route, whichever router brings it: authentication and the role
rule before a body is read, and the limits on bodies (request_gate.RequestGate, api_auth.authorize,
roles.required_role), the audit log of changes (audit.AuditMiddleware), and one error body,
{"error": {"code", "message", "details"}}.
"""
from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from appliance.access.audit import record_changes
from appliance.access.visibility import access_router, guard, visibility
from appliance.context import Appliance
from appliance.errors import CairnError
from dedup import (
    BackupExistsError,
    KeyFileError,
    PassphraseRequiredError,
    StoreBusyError,
    StoreError,
    StoreFormatError,
)

from .auth import Caller, auth_router, bearer
from .models import BackupOut, VMDetail, VMOut
from .users import users_router

VERSION = "0.1.0"


def store_error_status(e: StoreError) -> int:
    """The caller's mistakes and conflicts are no server fault; a damaged or unreachable store is."""
    if isinstance(e, LookupError):
        return 404
    if isinstance(e, ValueError):
        return 422
    if isinstance(e, StoreBusyError | BackupExistsError | StoreFormatError):
        return 409   # StoreFormatError: a format-1 store wants `cairn store upgrade` first
    if isinstance(e, PassphraseRequiredError):
        return 423   # locked: the store needs its passphrase
    if isinstance(e, KeyFileError):
        return 403   # a wrong passphrase, or the key of another store
    return 500


class Health(BaseModel):
    status: str
    version: str
    store: str


class ErrorOut(BaseModel):
    error: dict[str, Any]


def error_body(status: int, code: str, message: str, details: Any = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)


# HTTP errors raised by the framework itself (no such route, method not allowed), named like ours.
_HTTP_CODES = {404: "NotFoundError", 405: "MethodNotAllowedError"}


def create_app(appliance: Appliance) -> FastAPI:
    """The app; every route it has or is given later needs credentials, except roles.PUBLIC,
    and answers 404 for a VM, backup or job its caller may not see (visibility.guard)."""
    api = FastAPI(title="Cairn", version=VERSION, openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs",
                  redoc_url=None, dependencies=[Depends(bearer), Depends(guard(appliance))])
    seen = visibility(appliance)
    from .gate import RequestGate  # it answers with this module's error_body
    api.add_middleware(RequestGate, appliance=appliance)
    record_changes(api, appliance.audit)   # added last: outermost, it also records what the gate refuses

    def failed(request: Request, status: int, code: str, message: str, details: Any = None) -> JSONResponse:
        request.state.error = f"{code}: {message}"  # for the audit line
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_body(status, code, message, details, headers)

    @api.exception_handler(CairnError)
    async def cairn_error(request: Request, e: CairnError) -> JSONResponse:
        return failed(request, e.status, type(e).__name__, str(e))

    @api.exception_handler(StoreError)
    async def store_error(request: Request, e: StoreError) -> JSONResponse:
        return failed(request, store_error_status(e), type(e).__name__, str(e))

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

    api.include_router(auth_router(appliance))
    api.include_router(users_router(appliance))
    api.include_router(access_router(appliance))

    # Imported here: api_store builds on this module's error_body.
    from .store import store_router
    api.include_router(store_router(appliance))
    from .snapshots import snapshot_router
    api.include_router(snapshot_router(appliance))
    # Jobs, events, policies, deletion; backups, store verify and GC are started as jobs.
    from .operations import operations_router
    api.include_router(operations_router(appliance))
    from .vms import vm_router
    api.include_router(vm_router(appliance))
    from .restores import restore_router
    api.include_router(restore_router(appliance))
    from .hosts import host_router
    api.include_router(host_router(appliance))
    from .networks import network_router
    api.include_router(network_router(appliance))
    # Prometheus metrics at /metrics; alarms and where their messages go.
    from .metrics import metrics_router, time_requests
    api.include_router(metrics_router(appliance))
    time_requests(api)
    from .notifications import alarm_router, notification_router
    api.include_router(notification_router(appliance))
    api.include_router(alarm_router(appliance))
    # The web console: static files at /ui that call this API like any script.
    from appliance.web import mount_console
    mount_console(api)

    @api.get("/api/v1/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", version=VERSION, store=appliance.store.location)

    @api.get("/api/v1/vms", response_model=list[VMOut])
    def list_vms(caller: Caller) -> list[VMOut]:
        hidden = seen.hidden(caller)
        return [VMOut.of(v) for v in appliance.vms.list() if v.spec.name not in hidden]

    @api.get("/api/v1/vms/{name}", response_model=VMDetail, responses={404: {"model": ErrorOut}})
    def get_vm(name: str) -> VMDetail:
        """The list's fields and the rest of the VM's definition (profile, NICs, boot, HA...)."""
        return VMDetail.of(appliance.vms.show(name))

    @api.get("/api/v1/backups", response_model=list[BackupOut])
    def list_backups(caller: Caller, vm: str | None = None) -> list[BackupOut]:
        hidden = seen.hidden(caller)
        return [BackupOut.model_validate(r) for r in appliance.backups.list(vm) if r.vm_name not in hidden]

    @api.get("/api/v1/backups/{backup_id}", response_model=BackupOut, responses={404: {"model": ErrorOut}})
    def get_backup(backup_id: str) -> BackupOut:
        return BackupOut.model_validate(appliance.backups.get(backup_id))

    return api

