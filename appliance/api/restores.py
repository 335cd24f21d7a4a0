"""Restore endpoints: a disk into a target the appliance host can reach, a whole VM as a
new VM or over the VM it came from, files out of a backed-up filesystem, instant restore
and boot tests. Restores are jobs: they answer 202 with the job, whose result says what was
restored (an instant restore's job ends once its VM runs; GET /instant-restores/{vm} follows
the copy). Files and boot tests answer when they are done."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.params import (
    DiskRestoreParams,
    DiskRestoreRequest,
    InstantRestoreParams,
    InstantRestoreRequest,
    RestoreAsNewParams,
    RestoreOverParams,
)
from appliance.restores.boot_test import DEFAULT_MARKER
from dedup import StoreError
from restore import RestoreError
from restore.destinations import RBD_SCHEME
from restore.files import BackupFilesystem
from vmm import VMError

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep
from .jobs import SUBMIT_ERRORS, JobOut, submit_job
from .models import BootTestOut, InstantRestoreOut

DOWNLOAD_BLOCK = 1 << 20


class RestoreAsNewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["new"]
    name: str = Field(description="the new VM's name")
    verify: bool = True
    storage_pool: str | None = Field(None, description="restore the disks into this storage pool (an rbd pool: "
                                                       "into RBD images) instead of the data dir")


class RestoreOverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["over"]
    stop: bool = Field(False, description="shut the VM down first")
    verify: bool = True


VMRestoreRequest = Annotated[RestoreAsNewRequest | RestoreOverRequest, Field(discriminator="mode")]


class FileEntryOut(BaseModel):
    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: float
    target: str | None


class SpeedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speed: int = Field(strict=True, ge=0, description="bytes/s per disk; 0: unlimited")


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speed: int | None = Field(None, strict=True, ge=0)


class BootTestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(strict=True, default=120.0, gt=0, le=3600)
    marker: str = Field(default=DEFAULT_MARKER, min_length=1)


# /api/v1/backups/{backup_id}/...: restore from one backup. Every route reads the backup from the
# store, and what it restores to meets QEMU.
backup_restores = APIRouter(prefix="/api/v1/backups/{backup_id}", tags=["restore"],
                            responses=raises(NotFoundError, RestoreError, StoreError, VMError))


@backup_restores.post("/disks/{disk}/restore", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def restore_one_disk(appliance: ApplianceDep, caller: Caller, backup_id: str, disk: str,
                     body: DiskRestoreRequest) -> JobOut:
    if "://" not in body.target and not body.target.startswith(RBD_SCHEME):   # a host path, not a URL
        appliance.host_paths.disk_target(caller, body.target, "restore target")
    return submit_job(appliance, caller, "restore.disk",
                      DiskRestoreParams(backup_id=backup_id, disk=disk, **body.model_dump()))


@backup_restores.post("/restore", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def restore_vm(appliance: ApplianceDep, caller: Caller, backup_id: str, body: VMRestoreRequest) -> JobOut:
    if isinstance(body, RestoreOverRequest):
        vm = appliance.store.get_backup(backup_id).vm
        return submit_job(appliance, caller, "restore.over_vm",
                          RestoreOverParams(backup_id=backup_id, vm=vm, stop=body.stop, verify=body.verify))
    return submit_job(appliance, caller, "restore.new_vm",
                      RestoreAsNewParams(backup_id=backup_id, name=body.name, verify=body.verify,
                                         storage_pool=body.storage_pool))


@backup_restores.get("/disks/{disk}/files", response_model=list[FileEntryOut])
def list_files(appliance: ApplianceDep, backup_id: str, disk: str, path: str = "/",
               partition: int | None = None) -> list[FileEntryOut]:
    """A directory of the disk's filesystem (partition: 1, 2, ... of an MBR/GPT disk)."""
    with BackupFilesystem(appliance.store, backup_id, disk, partition) as fs:
        return [FileEntryOut(**vars(e)) for e in fs.list(path)]


@backup_restores.get("/disks/{disk}/files/content")
def download_file(appliance: ApplianceDep, backup_id: str, disk: str, path: str,
                  partition: int | None = None) -> StreamingResponse:
    """One file's bytes. The filesystem is opened before the answer starts, so errors are
    reported as such; it is released (mount, loop device, nbdfuse, nbdkit) however the
    download ends: sent, failed, or abandoned by the client."""
    headers = {"Content-Disposition": attachment(PurePosixPath(path).name)}
    fs = BackupFilesystem(appliance.store, backup_id, disk, partition).mount()
    try:
        file = fs.open(path)
    except BaseException:
        fs.close()
        raise

    def content() -> Iterator[bytes]:
        while block := file.read(DOWNLOAD_BLOCK):
            yield block

    def release() -> None:
        file.close()
        fs.close()
    return ReleasingResponse(content(), release, media_type="application/octet-stream", headers=headers)


@backup_restores.post("/instant-restore", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def start_instant_restore(appliance: ApplianceDep, caller: Caller, backup_id: str,
                          body: InstantRestoreRequest) -> JobOut:
    """Start VM `name` on the backup now; its disks are copied in while it runs."""
    return submit_job(appliance, caller, "restore.instant",
                      InstantRestoreParams(backup_id=backup_id, **body.model_dump()))


@backup_restores.post("/boot-test", response_model=BootTestOut)
async def boot_test(appliance: ApplianceDep, backup_id: str, body: BootTestRequest | None = None) -> BootTestOut:
    """Boot the backup in an isolated, throw-away VM; answers with the recorded result."""
    body = body or BootTestRequest()
    result = await appliance.restores.boot_tests.run(backup_id, timeout=body.timeout, marker=body.marker)
    return BootTestOut.of(result)


@backup_restores.get("/boot-tests", response_model=list[BootTestOut])
def boot_tests(appliance: ApplianceDep, backup_id: str) -> list[BootTestOut]:
    appliance.store.get_backup(backup_id)   # a backup that is not there is not found, not one never tested
    tests = appliance.restores.boot_tests
    return [BootTestOut(id=r.id, backup_id=r.backup_id, vm_name=r.vm_name, passed=r.passed, reason=r.reason,
                        seconds=r.seconds, console=r.console, has_screen=tests.screen_path(r.id).is_file())
            for r in tests.history(backup_id)]


@backup_restores.get("/boot-tests/{test_id}/screen", response_class=FileResponse,
                     responses={200: {"content": {"image/png": {}}, "description": "the screen as a PNG"}})
def boot_test_screen(appliance: ApplianceDep, backup_id: str, test_id: int) -> FileResponse:
    """What the booted backup's screen showed at the end of the boot test."""
    tests = appliance.restores.boot_tests
    if not any(r.id == test_id for r in tests.history(backup_id)) or not tests.screen_path(test_id).is_file():
        raise NotFoundError(f"boot test {test_id} of backup {backup_id} has no screen")
    return FileResponse(tests.screen_path(test_id), media_type="image/png")


# /api/v1/instant-restores/{vm}: follow, throttle and resume instant restores. Looking at one
# whose copy is complete finishes it (stops serving the backup).
instant_restores = APIRouter(prefix="/api/v1/instant-restores/{vm}", tags=["restore"],
                             responses=raises(NotFoundError, ConflictError, RestoreError, StoreError, VMError))


@instant_restores.get("", response_model=InstantRestoreOut)
async def instant_status(appliance: ApplianceDep, vm: str) -> InstantRestoreOut:
    return InstantRestoreOut(**(await appliance.restores.instant.poll(vm)).to_dict())


@instant_restores.post("/speed", response_model=InstantRestoreOut)
async def instant_speed(appliance: ApplianceDep, vm: str, body: SpeedRequest) -> InstantRestoreOut:
    return InstantRestoreOut(**(await appliance.restores.instant.set_speed(vm, body.speed)).to_dict())


@instant_restores.post("/resume", response_model=InstantRestoreOut)
async def instant_resume(appliance: ApplianceDep, vm: str, body: ResumeRequest | None = None) -> InstantRestoreOut:
    state = await appliance.restores.instant.resume(vm, speed=body.speed if body else None)
    return InstantRestoreOut(**state.to_dict())


# Both, for one include line in create_app.
router = APIRouter()
router.include_router(backup_restores)
router.include_router(instant_restores)


class ReleasingResponse(StreamingResponse):
    """A streamed answer that calls `release` once it ends, however: sent in full, failed, or
    cut short by the client going away (which stops the stream without finishing it)."""

    def __init__(self, content: Iterator[bytes], release: Callable[[], None], **kwargs: Any) -> None:
        try:
            super().__init__(content, **kwargs)
        except BaseException:
            release()
            raise
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: when the request was cancelled (the client gone), an unshielded await
            # here would be cancelled too, and the release skipped.
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self.release)


def attachment(name: str) -> str:
    """Content-Disposition for a download named `name` (RFC 6266): the exact name as RFC 5987's
    UTF-8 filename*, and for older clients a plain ASCII filename with the rest replaced by _.
    A header is Latin-1 and one line: the name itself may be neither."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
