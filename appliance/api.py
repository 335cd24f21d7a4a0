"""The web API under /api/v1 (OpenAPI at /api/v1/openapi.json).

Backups started here run on a thread of their own; the call answers at once with
the backup's record, whose status moves from running to ok or failed.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from dedup import StoreError

from .context import Appliance
from .errors import CairnError

log = logging.getLogger("cairn.api")
VERSION = "0.1.0"


class Health(BaseModel):
    status: str
    version: str
    store: str


class DiskOut(BaseModel):
    name: str
    path: str
    format: str


class VMOut(BaseModel):
    name: str
    state: str
    pid: int | None
    vcpus: int
    memory_mib: int
    disks: list[DiskOut]


class BackupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full: bool = False


class BackupOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    vm_name: str
    kind: str
    status: str
    parent: str | None
    started_at: datetime
    finished_at: datetime | None
    size: int
    bytes_read: int
    bytes_stored: int
    error: str | None
    notes: list[str]


class ErrorOut(BaseModel):
    error: dict[str, Any]


def error_body(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(status_code=status, content={"error": body})


def create_app(appliance: Appliance) -> FastAPI:
    api = FastAPI(title="Cairn", version=VERSION, openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs",
                  redoc_url=None)

    @api.exception_handler(CairnError)
    async def cairn_error(_: Request, e: CairnError) -> JSONResponse:
        return error_body(e.status, type(e).__name__, str(e))

    @api.exception_handler(StoreError)
    async def store_error(_: Request, e: StoreError) -> JSONResponse:
        return error_body(500, type(e).__name__, str(e))

    @api.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_body(422, "ValidationError", "the request is not valid",
                          [{"loc": list(x["loc"]), "msg": x["msg"]} for x in e.errors()])

    def vm_out(view: Any) -> VMOut:
        d = view.to_dict()
        return VMOut(name=d["name"], state=d["state"], pid=d["pid"], vcpus=d["vcpus"], memory_mib=d["memory_mib"],
                     disks=[DiskOut(**{k: disk[k] for k in ("name", "path", "format")}) for disk in d["disks"]])

    from .api_store import store_router  # here: api_store builds on this module's error_body
    api.include_router(store_router(appliance))
    from .api_snapshots import snapshot_router
    api.include_router(snapshot_router(appliance))

    @api.get("/api/v1/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", version=VERSION, store=str(appliance.store.path))

    @api.get("/api/v1/vms", response_model=list[VMOut])
    def list_vms() -> list[VMOut]:
        return [vm_out(v) for v in appliance.vms.list()]

    @api.get("/api/v1/vms/{name}", response_model=VMOut, responses={404: {"model": ErrorOut}})
    def get_vm(name: str) -> VMOut:
        return vm_out(appliance.vms.show(name))

    @api.post("/api/v1/vms/{name}/backups", response_model=BackupOut, status_code=202,
              responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}})
    def start_backup(name: str, body: BackupRequest | None = None) -> BackupOut:
        spec = appliance.vms.spec(name)
        rec = appliance.backups.begin(spec, full=bool(body and body.full))
        threading.Thread(target=_run_backup, args=(appliance, spec, rec), name=f"backup-{rec.id}",
                         daemon=True).start()
        return BackupOut.model_validate(rec)

    @api.get("/api/v1/backups", response_model=list[BackupOut])
    def list_backups(vm: str | None = None) -> list[BackupOut]:
        return [BackupOut.model_validate(r) for r in appliance.backups.list(vm)]

    @api.get("/api/v1/backups/{backup_id}", response_model=BackupOut, responses={404: {"model": ErrorOut}})
    def get_backup(backup_id: str) -> BackupOut:
        return BackupOut.model_validate(appliance.backups.get(backup_id))

    return api


def _run_backup(appliance: Appliance, spec: Any, rec: Any) -> None:
    try:
        asyncio.run(appliance.backups.run(spec, rec))
    except Exception:  # noqa: BLE001 - the failure is recorded on the backup; keep the log
        log.exception("backup %s of %s failed", rec.id, spec.name)
