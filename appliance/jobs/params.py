"""What each kind of job takes: one pydantic model per kind, the parameters a job is stored with.

The API's request bodies are these models, or the part of one that is not in the route's path
(`BackupRequest` is the body of POST /vms/{name}/backups, `BackupParams` adds the VM); the CLI
and the scheduler fill the same models, and POST /api/v1/jobs takes any of them by kind
(`PARAMS`). Light on purpose: pydantic and the names' rules, no service.
"""
from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from appliance.backups.options import DEFAULT_FULL_EVERY, BackupOptions
from appliance.backups.retention import RetentionCounts, RetentionRules
from appliance.backups.selection import DiskSelection
from appliance.names import Label
from dedup import DEFAULT_BLOCK_SIZE, DEFAULT_GRACE, DEFAULT_PACK_SIZE, DEFAULT_REPACK_THRESHOLD, is_remote
from vmm.migration import DEFAULT_TIMEOUT as MIGRATION_TIMEOUT
from vmm.spec import validate_vm_name

# The name of a VM a job creates: checked as a definition would check it.
NewVMName = Annotated[str, AfterValidator(validate_vm_name)]


class JobParams(BaseModel):
    """What every kind's parameters say about the VMs and backups they name, for the API to
    check the caller's view of them before it submits the job."""
    model_config = ConfigDict(extra="forbid")

    def vms(self) -> list[str]:
        """The existing VMs the job works on."""
        return []

    def new_vms(self) -> list[str]:
        """The VMs the job creates (they become the caller's)."""
        return []

    def backup(self) -> str | None:
        """The backup the job reads."""
        return None


class OnVM(JobParams):
    vm: str

    def vms(self) -> list[str]:
        return [self.vm]


# -- backups ----------------------------------------------------------------------------------------

class DiskChoice(BaseModel):
    """Which disks a backup reads (every disk that holds data, unless these say otherwise)."""
    include: list[str] = Field(default=[], description="read only the disks one of these selects: a name pattern "
                               "(vdb, vd[b-d]) or kind:<tag> (qcow2, raw, file, block, network, readonly...)")
    exclude: list[str] = Field(default=[], description="then leave out the disks one of these selects (same syntax)")

    @model_validator(mode="after")
    def _selection_is_valid(self) -> Self:
        self.disk_selection()
        return self

    def disk_selection(self) -> DiskSelection:
        return DiskSelection.of(self.include, self.exclude)


class BackupRequest(DiskChoice):
    """How to back up a VM (the body of POST /vms/{name}/backups)."""
    model_config = ConfigDict(extra="forbid")
    full: bool = Field(default=False, description="read every disk in full")
    full_every: int = Field(strict=True, default=DEFAULT_FULL_EVERY, ge=0, le=100_000,
                            description="read a disk in full after this many incrementals of it (0: always)")
    transport: Literal["pull", "push"] = Field(default="pull",
                                               description="pull: Cairn reads an NBD export of the point in time; "
                                               "push: QEMU writes it into a target Cairn serves")

    def options(self) -> BackupOptions:
        return BackupOptions(full_every=self.full_every, transport=self.transport, disks=self.disk_selection())


class BackupParams(BackupRequest, OnVM):
    retention: RetentionRules | None = None   # prune the VM's backups afterwards


class HostBackupRequest(DiskChoice):
    """How to back up a VM of a registered host (the body of POST /hosts/{name}/vms/{vm}/backups);
    an ssh host's VMs are backed up whole: a disk choice is refused there."""
    model_config = ConfigDict(extra="forbid")
    full: bool = Field(default=False, description="read every disk in full")
    full_every: int = Field(strict=True, default=DEFAULT_FULL_EVERY, ge=0, le=100_000,
                            description="read a disk in full after this many incrementals of it (0: always)")


class OnHostVM(JobParams):
    host: str
    vm: str = Field(description="the VM (or libvirt domain) on the host; its backups go by <vm>@<host>")


class HostBackupParams(HostBackupRequest, OnHostVM):
    pass


# -- snapshots --------------------------------------------------------------------------------------

class SnapshotParams(OnVM):
    """A policy's automatic snapshot, and the rotation of the policy's older ones."""
    prefix: str = Field(default="auto", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63)
    keep: int = Field(strict=True, default=0, ge=0, description="automatic snapshots named prefix-* to keep (0: all)")


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Label | None = None
    automatic: bool = False
    memory: bool = Field(default=False,
                         description="also save the running guest's memory, so a revert resumes it")


class SnapshotCreateParams(SnapshotRequest, OnVM):
    pass


class RevertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    memory: bool | None = Field(default=None,
                                description="resume from the snapshot's memory state (default: if it has one; the VM "
                                "is restarted from it) or, false, the disks only")


class SnapshotRevertParams(RevertRequest, OnVM):
    snapshot: str = Field(description="the snapshot's name or id")


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    via: Literal["commit", "pull"] | None = None
    rate_limit: int | None = Field(strict=True, default=None, gt=0,
                                   description="bytes per second: the block job's speed on a running VM, qemu-img "
                                   "commit -r on a stopped one (an offline pull has no limit)")


class SnapshotDeleteParams(DeleteRequest, OnVM):
    snapshot: str = Field(description="the snapshot's name or id")


# -- restores ---------------------------------------------------------------------------------------

class FromBackup(JobParams):
    backup_id: str

    def backup(self) -> str | None:
        return self.backup_id


class DiskRestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(description="an nbd:// or ssh:// URL, or an absolute path on the appliance host outside "
                                    "its data dir: a new or existing image file, or a block device")
    format: Literal["raw", "qcow2"] = "raw"
    force: bool = False
    verify: bool = False


class DiskRestoreParams(DiskRestoreRequest, FromBackup):
    disk: str | None = Field(default=None, description="which disk (none: the backup's only one)")
    ssh_key: str | None = Field(default=None, description="private key for an ssh:// target")
    known_hosts: str | None = Field(default=None, description="known_hosts file for an ssh:// target")


class LibvirtRestoreRequest(BaseModel):
    """How to restore a libvirt domain's backup into a libvirt host (the body of POST
    /hosts/{name}/restores): as a new domain (`name`, and `directory` or `pool` for its disks) or
    over the domain it was taken of (`over`), all or nothing."""
    model_config = ConfigDict(extra="forbid")
    backup_id: str
    name: str | None = Field(default=None, description="restore as a new domain of this name")
    directory: str | None = Field(default=None, description="the new domain's disks go into this directory...")
    pool: str | None = Field(default=None, description="...or into this storage pool (dir, fs or netfs)")
    start: bool = Field(default=False, description="start the new domain once defined")
    over: bool = Field(default=False, description="replace the disks of the domain backed up instead")
    stop: bool = Field(default=False, description="with over: shut the domain down first")
    verify: bool = Field(default=True, description="read each restored disk back")

    @model_validator(mode="after")
    def _new_or_over(self) -> Self:
        if self.over == (self.name is not None):
            raise ValueError("give name (a new domain) or over (replace the backed-up domain's disks)")
        if self.name is not None and (self.directory is None) == (self.pool is None):
            raise ValueError("a new domain's disks go into a directory or a storage pool: give one of them")
        if self.directory is not None and not self.directory.startswith("/"):
            raise ValueError(f"directory {self.directory!r} is not an absolute path on the host")
        return self


class LibvirtRestoreParams(LibvirtRestoreRequest, FromBackup):
    host: str


class RestoreAsNewParams(FromBackup):
    name: NewVMName = Field(description="the new VM's name")
    verify: bool = True
    storage_pool: str | None = Field(default=None, description="restore the disks into this storage pool (an rbd "
                                                               "pool: into RBD images) instead of the data dir")

    def new_vms(self) -> list[str]:
        return [self.name]


class RestoreOverParams(FromBackup, OnVM):
    """Over the VM the backup came from (`vm`), all or nothing."""
    stop: bool = Field(default=False, description="shut the VM down first")
    verify: bool = True


class InstantRestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: NewVMName = Field(description="the new VM's name")
    speed: int = Field(strict=True, default=0, ge=0, description="bytes/s per disk; 0: unlimited")
    storage_pool: str | None = Field(default=None, description="copy the disks into this storage pool (an rbd "
                                                               "pool: into RBD images) instead of the data dir")


class InstantRestoreParams(InstantRestoreRequest, FromBackup):
    def new_vms(self) -> list[str]:
        return [self.name]


# -- power ----------------------------------------------------------------------------------------

MAX_STOP_TIMEOUT = 3600.0   # a stop waits at most an hour for its guest (a forced stop cuts it short anyway)


class StartRequest(BaseModel):
    """How to start a VM (the body of POST /vms/{name}/start)."""
    model_config = ConfigDict(extra="forbid")
    paused: bool = Field(default=False, description="QEMU sets the machine up, the guest runs no code until resumed")


class VMStartParams(StartRequest, OnVM):
    pass


class StopRequest(BaseModel):
    """How to stop a VM (the body of POST /vms/{name}/stop)."""
    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(strict=True, default=30.0, ge=0, le=MAX_STOP_TIMEOUT,
                           description="seconds the guest gets to shut down before QEMU is ended")
    force: bool = Field(default=False, description="end QEMU now; also cuts short a graceful stop that is waiting")


class VMStopParams(StopRequest, OnVM):
    pass


class HostVMStartParams(OnHostVM):
    pass


class HostStopRequest(BaseModel):
    """How to stop a VM of a registered host (the body of POST /hosts/{name}/vms/{vm}/stop)."""
    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(strict=True, default=60.0, gt=0, le=MAX_STOP_TIMEOUT,
                           description="seconds to wait after the ACPI power button")
    force: bool = Field(default=False, description="pull the plug at once; also cuts short a graceful stop that is "
                                                   "waiting")


class HostVMStopParams(HostStopRequest, OnHostVM):
    pass


# -- clones -----------------------------------------------------------------------------------------

class CloneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    names: list[NewVMName] = Field(min_length=1)
    mode: Literal["full", "instant"] = "full"


class CloneParams(CloneRequest, JobParams):
    source: str

    def vms(self) -> list[str]:
        return [self.source]

    def new_vms(self) -> list[str]:
        return list(self.names)


class MigrateRequest(BaseModel):
    """Where to move a running VM (the body of POST /vms/{name}/migrations)."""
    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="another host of the VM's compute pool (\"local\": this machine)")
    timeout: float = Field(strict=True, default=MIGRATION_TIMEOUT, gt=0, le=3600,
                           description="seconds the migration may take before it is cancelled (the VM runs on)")


class MigrateParams(MigrateRequest, OnVM):
    pass


# -- the store --------------------------------------------------------------------------------------

class VerifyParams(JobParams):
    sample_percent: float = Field(strict=True, default=100.0, gt=0, le=100)


class GcParams(JobParams):
    grace_seconds: float = Field(strict=True, default=DEFAULT_GRACE.total_seconds(), ge=0, le=10 * 365 * 86400)
    dry_run: bool = False
    repack_percent: float = Field(strict=True, default=DEFAULT_REPACK_THRESHOLD * 100, gt=0, le=100,
                                  description="repack a pack once this share of it is unreferenced")


class UpgradeParams(JobParams):
    """Move the store to format 2 in place (the sizes apply to a format-1 store only)."""
    # The store's config checks the sizes (a power of two, in range): StoreConfigError, 422.
    block_size: int = Field(strict=True, default=DEFAULT_BLOCK_SIZE, gt=0, description="bytes per block of the format-2 store")
    pack_size: int = Field(strict=True, default=DEFAULT_PACK_SIZE, gt=0, description="bytes per pack of the format-2 store")


class PruneParams(RetentionCounts, OnVM):
    """Prune the VM's backups by the keep rules (at least one; `dry_run`: only say what would go)."""
    dry_run: bool = False

    def rules(self) -> dict[str, int]:
        return self.model_dump(include=set(RetentionCounts.model_fields))


def _store_location(location: str | None) -> str | None:
    """A store another than the appliance's: a URL, or a directory named from the root (a relative
    one would land wherever the server happens to run), with no control characters."""
    if location is None:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in location):
        raise ValueError("a store location holds no control characters")
    if not is_remote(location) and not location.startswith("/"):
        raise ValueError(f"store location {location!r}: an absolute directory or a URL (sftp://, rados://, s3://)")
    return location


StoreLocation = Annotated[str | None, AfterValidator(_store_location)]


class SyncParams(JobParams):
    """What to copy where: to another store (push, target) or from one (pull, source)."""
    target: StoreLocation = Field(default=None, description="the store to copy into (push); default: this appliance's")
    source: StoreLocation = Field(default=None, description="the store to copy from (pull); default: this appliance's")
    backups_of: list[str] = Field(default=[], description="copy the backups of these VMs only (default: all)")
    bandwidth: int | None = Field(strict=True, default=None, ge=1, description="bytes per second at most (default: no limit)")

    @model_validator(mode="after")
    def _names_another_store(self) -> Self:
        if self.target is None and self.source is None:
            raise ValueError("a sync needs a target (push) or a source (pull) other than this appliance's store")
        if self.target is not None and self.target == self.source:
            raise ValueError("source and target are the same store")
        return self


# Every kind the appliance runs, and what it takes.
PARAMS: dict[str, type[JobParams]] = {
    "backup": BackupParams,
    "host.backup": HostBackupParams,
    "snapshot": SnapshotParams,
    "snapshot.create": SnapshotCreateParams,
    "snapshot.revert": SnapshotRevertParams,
    "snapshot.delete": SnapshotDeleteParams,
    "restore.disk": DiskRestoreParams,
    "restore.new_vm": RestoreAsNewParams,
    "restore.over_vm": RestoreOverParams,
    "restore.instant": InstantRestoreParams,
    "restore.libvirt": LibvirtRestoreParams,
    "vm.start": VMStartParams,
    "vm.stop": VMStopParams,
    "host.vm.start": HostVMStartParams,
    "host.vm.stop": HostVMStopParams,
    "vm.clone": CloneParams,
    "vm.migrate": MigrateParams,
    "store.verify": VerifyParams,
    "store.gc": GcParams,
    "store.prune": PruneParams,
    "store.sync": SyncParams,
    "store.upgrade": UpgradeParams,
}
