"""What the commands ask of an appliance, whichever it is: `Client`.

Two implementations meet it: `LocalClient` (local.py) calls this machine's services and job
engine in this process; `RemoteClient` (remote.py) calls an appliance's API over HTTPS. Both
return the models the API answers with (appliance/api/models.py), so a command is written once,
renders once, and prints the same `--json` either way. `state.client` (common.py) is the one
the root command chose (--url, $CAIRN_URL, `cairn login`), or for this machine `MachineClient`
(machine.py): reads through the running appliance's local socket, the rest in-process.

Long operations are jobs: `run` submits one and follows it to its end, the same way for every
kind (the CLI's follow.py draws its progress and handles Ctrl-C on top of it).
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from appliance.api.models import (
        BackupOut,
        BootTestOut,
        EventOut,
        InstantRestoreOut,
        JobOut,
        PolicyPreview,
        StartedVM,
        StoppedVM,
        VMDetail,
        VMOut,
    )
    from appliance.deletion.protection import Impact
    from appliance.policies.service import Policy, PolicyOut
    from appliance.vms.devices import NewDisk, NewNic
    from dedup.stats import StoreStats

PowerAction = Literal["reboot", "pause", "resume"]
T = TypeVar("T")


@dataclass(frozen=True)
class Listing:
    """A list command's query: --filter, --sort, --limit and --offset, as the API's
    ?filter=&sort=&limit=&offset= (appliance/catalog/query.py has the syntax)."""
    filters: list[str]
    sort: str
    limit: int
    offset: int = 0


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, and how many match in all (the API's X-Total-Count)."""
    items: list[T]
    total: int


@dataclass(frozen=True)
class JobProgress:
    """A running job's progress event: how far it is overall, in which step, and the bytes of
    one disk when the step reports them (`detail`: disk, done, total)."""
    progress: float
    step: str
    detail: dict[str, Any] | None = None


@dataclass
class NewVM:
    """A VM to create, as the API's POST /vms takes it (its VMCreate), plus what only this
    machine can give: a base image named by its path here."""
    name: str
    disks: list[int] = field(default_factory=list)    # sizes of blank disks, bytes
    memory_mib: int = 256
    vcpus: int = 1
    image: str | None = None          # a library disk image for the first disk (a thin overlay)
    iso: str | None = None            # a library ISO in the cdrom
    storage_pool: str | None = None
    compute_pool: str | None = None
    profile: str = "modern"
    nics: list[dict[str, str]] = field(default_factory=list)   # {"mode": user|tap|bridge, "tap"|"bridge": name}
    boot: list[str] = field(default_factory=list)
    console: bool = True
    ha: bool = False
    kernel: str | None = None         # direct boot: a library image, or a path on the appliance's host
    initrd: str | None = None
    append: str | None = None
    base_image: str | None = None     # a file on this machine for the first disk: local only


class Client(Protocol):
    """An appliance, as the commands see it."""

    where: str   # "this machine" or the appliance's URL, for messages

    # -- jobs: every long operation ---------------------------------------------------------------
    def run(self, kind: str, params: BaseModel) -> Generator[JobOut | JobProgress, None, None]:
        """Submit a job and follow it: the job as submitted first, then its progress and, now and
        then, its state, and last the job as it ended. Closing the iterator stops following
        (the job runs on: here in this process, there on the appliance)."""
        ...

    def cancel_job(self, job_id: str) -> JobOut: ...
    def wait_job(self, job_id: str, timeout: float) -> JobOut: ...
    def jobs(self, listing: Listing) -> Page[JobOut]: ...
    def job(self, job_id: str) -> JobOut: ...
    def events(self, job_id: str | None, limit: int) -> list[EventOut]: ...

    # -- VMs -------------------------------------------------------------------------------------
    def vms(self, listing: Listing) -> Page[VMOut]: ...
    def vm(self, name: str) -> VMDetail: ...
    def create_vm(self, new: NewVM) -> VMDetail: ...
    def start_vm(self, name: str, paused: bool) -> StartedVM: ...
    def power(self, name: str, action: PowerAction) -> VMDetail: ...
    def stop_vm(self, name: str, timeout: float, force: bool) -> StoppedVM: ...
    def resize_vm(self, name: str, vcpus: int | None, memory_mib: int | None) -> VMDetail: ...
    def grow_disk(self, name: str, disk: str, size: int) -> int: ...
    def set_ha(self, name: str, enabled: bool, max_restarts: int, window_seconds: int) -> VMDetail: ...
    def set_compute_pool(self, name: str, pool: str | None) -> VMDetail: ...
    def clone_progress(self, name: str) -> dict[str, float]: ...
    def delete_vm(self, name: str, dry_run: bool) -> Impact: ...

    # -- a stopped VM's disks and NICs (each answers the VM as it is now) -------------------------
    def add_disk(self, name: str, disk: NewDisk) -> VMDetail: ...
    def remove_disk(self, name: str, disk: str, delete_file: bool) -> VMDetail: ...
    def add_nic(self, name: str, nic: NewNic) -> VMDetail: ...
    def remove_nic(self, name: str, mac: str) -> VMDetail: ...

    # -- the image library -----------------------------------------------------------------------
    def images(self) -> list[dict[str, Any]]: ...
    def import_image(self, name: str, file: Path, kind: str | None,
                     progress: Callable[[int], None]) -> dict[str, Any]:
        """Copy a file of this machine into the library (uploaded, through the API), saying how
        many of its bytes are in."""
        ...

    def image_from_vm(self, vm: str, name: str, disk: str | None) -> dict[str, Any]: ...
    def verify_image(self, name: str) -> dict[str, Any]: ...
    def delete_image(self, name: str) -> None: ...

    # -- backups, snapshots, restores, the store -------------------------------------------------
    def backups(self, vm: str | None, listing: Listing) -> Page[BackupOut]: ...
    def backup(self, backup_id: str) -> BackupOut: ...
    def protect_backup(self, backup_id: str, protected: bool) -> BackupOut:
        """Protect the backup from pruning and deletion (or, False, no longer): the backup as it is now."""
        ...

    def snapshot_tree(self, vm: str) -> dict[str, Any]: ...
    def check_snapshots(self, vm: str, repair: bool) -> dict[str, Any]: ...
    def boot_test(self, backup_id: str, timeout: float, marker: str) -> BootTestOut: ...
    def instant_restore(self, vm: str) -> InstantRestoreOut: ...
    def instant_speed(self, vm: str, speed: int) -> InstantRestoreOut: ...
    def instant_resume(self, vm: str, speed: int | None) -> InstantRestoreOut: ...
    def store_stats(self) -> StoreStats: ...

    # -- policies --------------------------------------------------------------------------------
    def policies(self) -> list[PolicyOut]: ...
    def create_policy(self, policy: Policy) -> PolicyOut: ...
    def preview_policy(self, name: str, count: int) -> PolicyPreview: ...
    def delete_policy(self, name: str, dry_run: bool) -> Impact: ...
