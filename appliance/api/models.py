"""What the API answers about VMs, backups, jobs, events, restores and policy previews.

Pydantic only, no FastAPI: the routes return these, and the CLI (appliance/cli/) returns the
same models whether it works on this machine or on an appliance through the API, so one
rendering serves both and `--json` prints the same. Importing this module costs no web stack.
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.jobs.states import JobState, Severity, StepState

if TYPE_CHECKING:
    from appliance.jobs.records import JobRecord
    from appliance.restores.boot_test import BootTestResult
    from appliance.snapshots.service import SnapshotService
    from appliance.vms.listing import VMView


class Answer(BaseModel):
    """What the API answers with. Each is built on its first use (defer_build), not as this module
    is imported: a command that prints a backup list does not pay for the VM or job models."""
    model_config = ConfigDict(defer_build=True)


class DiskOut(Answer):
    name: str
    path: str
    format: str


class VMOut(Answer):
    """A VM in a list."""
    name: str
    state: str
    pid: int | None
    vcpus: int
    memory_mib: int
    disks: list[DiskOut]

    @classmethod
    def of(cls, view: VMView) -> VMOut:
        spec = view.spec
        return cls(name=spec.name, state=view.status.state, pid=view.status.pid, vcpus=spec.vcpus,
                   memory_mib=spec.memory_mib,
                   disks=[DiskOut(name=d.name, path=d.path, format=d.format) for d in spec.disks])


class NicOut(Answer):
    name: str
    mode: str
    mac: str
    tap: str | None
    bridge: str | None
    model: str | None = Field(None, description="the emulated card; none: the OS profile's")


class VMDetail(Answer):
    """One VM: its definition and state."""
    name: str
    state: str
    pid: int | None
    vcpus: int
    memory_mib: int
    profile: str
    disks: list[dict[str, str]]
    nics: list[NicOut]
    cdrom: str | None
    boot: list[str]
    console: bool
    ha: bool
    linked_to: str | None
    host: str = Field(description="where it runs, or last ran (\"local\": this machine)")
    compute_pool: str | None = Field(description="the hosts placement chooses from (none: this machine only)")

    @classmethod
    def of(cls, view: VMView) -> VMDetail:
        spec = view.spec
        return cls(name=spec.name, state=view.status.state, pid=view.status.pid, vcpus=spec.vcpus,
                   memory_mib=spec.memory_mib, profile=spec.profile,
                   disks=[{"name": d.name, "path": d.path, "format": d.format} for d in spec.disks],
                   nics=[NicOut(**vars(n)) for n in spec.nics], cdrom=spec.cdrom, boot=spec.boot,
                   console=spec.vnc, ha=view.ha, linked_to=view.linked_to, host=view.host,
                   compute_pool=view.compute_pool)


class StartedVM(VMDetail):
    """A VM after a start: the VM as it is then, and the job that started it."""
    job_id: str = Field(description="the vm.start job (GET /api/v1/jobs/{id}; its events say where it started)")

    @classmethod
    def after(cls, view: VMView, job: JobRecord) -> StartedVM:
        return cls(**VMDetail.of(view).model_dump(), job_id=job.id)


class StoppedVM(VMDetail):
    """A VM after a stop, how it went, and the job that stopped it."""
    how: Literal["powerdown", "quit", "kill", "already-stopped", "unknown"] = Field(
        description="powerdown: the guest shut down; quit: QEMU was ended without the guest shutting "
                    "down (forced, or it did not within the timeout, or it was paused); kill: QEMU did "
                    "not even quit and was killed; unknown: it ran on another host, whose agent does not say")
    job_id: str = Field(description="the vm.stop job (GET /api/v1/jobs/{id}; its events say how it stopped)")

    @classmethod
    def after(cls, view: VMView, job: JobRecord) -> StoppedVM:
        """The VM as it is once its vm.stop job succeeded (whose result says how)."""
        return cls(**VMDetail.of(view).model_dump(), how=(job.result or {})["how"], job_id=job.id)


class BackupOut(Answer):
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
    protected: bool = Field(description="never pruned, nor deleted until unprotected (the store's mark, "
                                        "as the catalog last saw it)")


class StepOut(Answer):
    name: str
    state: StepState
    error: str | None = None


class JobOut(Answer):
    model_config = ConfigDict(from_attributes=True)
    id: str
    kind: str
    resource: str
    state: JobState
    params: dict[str, Any]
    steps: list[StepOut]
    progress: float
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    policy_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(Answer):
    model_config = ConfigDict(from_attributes=True)
    id: int
    created_at: datetime
    kind: str
    severity: Severity
    resource: str | None
    job_id: str | None
    message: str
    data: dict[str, Any]


class InstantDiskOut(Answer):
    name: str
    source: str
    overlay: str
    socket: str


class InstantRestoreOut(Answer):
    vm: str
    backup_id: str
    store: str
    disks: list[InstantDiskOut]
    speed: int
    status: Literal["hydrating", "done", "failed"]
    error: str | None
    progress: dict[str, list[int]]


class BootTestOut(Answer):
    model_config = ConfigDict(from_attributes=True)
    id: int
    backup_id: str
    vm_name: str
    passed: bool
    reason: str
    seconds: float
    console: str
    has_screen: bool = Field(description="its screen was captured: GET .../boot-tests/{id}/screen")

    @classmethod
    def of(cls, result: BootTestResult) -> BootTestOut:
        return cls(id=result.id, backup_id=result.backup_id, vm_name=result.vm, passed=result.passed,
                   reason=result.reason, seconds=result.seconds, console=result.console,
                   has_screen=result.has_screen)


class PolicyPreview(Answer):
    policy: str
    enabled: bool
    now: datetime
    next_runs: list[datetime] = Field(description="the next times the schedule fires (UTC)")
    vms: dict[str, str] = Field(description="each VM selected today and what its next run would do")


def snapshot_tree(snapshots: SnapshotService, vm: str) -> dict[str, Any]:
    """A VM's snapshot tree as GET /vms/{name}/snapshots answers it (snapshots.service.tree_dict),
    with the operation a crash interrupted, if any, in words (`interrupted`)."""
    from appliance.snapshots.service import tree_dict

    intent = snapshots.interrupted(vm)
    return {**tree_dict(snapshots.tree(vm)), "interrupted": intent.describe() if intent else None}
