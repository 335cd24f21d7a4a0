"""`Client` on this machine: its services and job engine, in this process.

What the API's routes do with a request, this does with the same services, as root on the data
dir (no visibility filter, no role check: the local CLI is the appliance's administrator), and
answers with the same models. A job submitted here runs here (whoever submits a job runs it),
after any job another process runs on its resource.
"""
from __future__ import annotations

import queue
import time
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
    snapshot_tree,
)
from appliance.jobs.states import FINISHED_STATES

from .client import JobProgress, Listing, NewVM, Page, PowerAction

if TYPE_CHECKING:
    from pydantic import BaseModel

    from appliance.catalog.query import ListQuery
    from appliance.context import Appliance
    from appliance.deletion.protection import Impact
    from appliance.jobs.catalog import JobCatalog
    from appliance.policies.service import Policy, PolicyOut, PolicyService
    from appliance.vms.devices import NewDisk, NewNic
    from dedup.stats import StoreStats

T = TypeVar("T")
CHECK_INTERVAL = 0.5   # seconds between looks at a followed job's state (another process may end it)


def _query(listing: Listing) -> ListQuery:
    from appliance.catalog.query import ListQuery

    return ListQuery.parse(listing.limit, listing.offset, listing.sort, listing.filters)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """A service's coroutine run to its end (asyncio imported only by the commands that need it)."""
    import asyncio

    return asyncio.run(coroutine)


class LocalClient:
    def __init__(self, appliance: Appliance):
        self.appliance = appliance
        self.where = f"this machine ({appliance.settings.data_dir})"

    # -- jobs ------------------------------------------------------------------------------------

    def run(self, kind: str, params: BaseModel) -> Generator[JobOut | JobProgress, None, None]:
        jobs = self.appliance.jobs
        with jobs.events.listen() as feed:   # before submitting: no event of the job is missed
            job = jobs.submit(kind, params)
            yield JobOut.model_validate(job)
            checked = time.monotonic()
            while True:
                try:
                    event = feed.get(timeout=CHECK_INTERVAL)
                except queue.Empty:
                    event = None
                ours = event is not None and event.get("job_id") == job.id
                if ours and event is not None and event["kind"] == "job.progress":
                    yield JobProgress(event["data"]["progress"], event["data"]["step"], event["data"].get("detail"))
                ended = ours and event is not None and event["kind"] in {f"job.{s}" for s in FINISHED_STATES}
                if ended or time.monotonic() - checked >= CHECK_INTERVAL:
                    checked = time.monotonic()
                    current = JobOut.model_validate(jobs.get(job.id))
                    if current.state in FINISHED_STATES:
                        jobs.settle(job.id)   # the command may exit once its worker let go of the job
                        yield current
                        return
                    yield current

    def cancel_job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self.appliance.jobs.cancel(job_id))

    def wait_job(self, job_id: str, timeout: float) -> JobOut:
        return JobOut.model_validate(self.appliance.jobs.wait(job_id, timeout))

    def _job_catalog(self) -> JobCatalog:
        """Jobs as the catalog has them, without the engine that runs them (nor its imports)."""
        from appliance.jobs.catalog import JobCatalog

        return JobCatalog(self.appliance.catalog)

    def jobs(self, listing: Listing) -> Page[JobOut]:
        from sqlalchemy import true

        from appliance.catalog.query import Total

        total = Total()
        records = self._job_catalog().page(_query(listing), true(), total)   # root: every job
        return Page([JobOut.model_validate(r) for r in records], total.count)

    def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._job_catalog().get(job_id))

    def events(self, job_id: str | None, limit: int) -> list[EventOut]:
        from sqlalchemy import true

        filters = [f"job_id:eq:{job_id}"] if job_id else []
        query = _query(Listing(filters, "-id", limit))
        return [EventOut.model_validate(e) for e in self._job_catalog().page_events(query, true())]

    # -- VMs -------------------------------------------------------------------------------------

    def vms(self, listing: Listing) -> Page[VMOut]:
        """VMs as listing.py lists them, without the VM service (nor its imports) unless a listed
        VM sits on another host (its placement reaches the hosts)."""
        from appliance.catalog.query import Total
        from appliance.vms.listing import VMListing

        total = Total()
        vms = VMListing(self.appliance.catalog, self.appliance.driver, lambda: self.appliance.vms.placement.pool)
        views = vms.page(_query(listing), response=total)
        return Page([VMOut.of(v) for v in views], total.count)

    def vm(self, name: str) -> VMDetail:
        return VMDetail.of(self.appliance.vms.show(name))

    def create_vm(self, new: NewVM) -> VMDetail:
        from appliance.vms.service import VMOptions
        from vmm.spec import NicSpec

        vms = self.appliance.vms
        nics = [NicSpec(f"net{i}", **nic) for i, nic in enumerate(new.nics)]
        options = VMOptions(image=new.image, iso=new.iso, profile=new.profile, nics=nics, boot=new.boot,
                            vnc=new.console, storage_pool=new.storage_pool, compute_pool=new.compute_pool)
        vms.create(new.name, new.disks, memory_mib=new.memory_mib, vcpus=new.vcpus, kernel=new.kernel,
                   initrd=new.initrd, append=new.append, base_image=new.base_image, options=options)
        if new.ha:
            vms.set_ha(new.name, True)
        return self.vm(new.name)

    def start_vm(self, name: str, paused: bool) -> StartedVM:
        from appliance.jobs.params import VMStartParams

        job = self.appliance.jobs.run_to_end("vm.start", VMStartParams(vm=name, paused=paused))
        return StartedVM.after(self.appliance.vms.show(name), job)

    def power(self, name: str, action: PowerAction) -> VMDetail:
        return VMDetail.of(_run(getattr(self.appliance.vms, action)(name)))

    def stop_vm(self, name: str, timeout: float, force: bool) -> StoppedVM:
        from appliance.jobs.params import VMStopParams

        job = self.appliance.jobs.run_to_end("vm.stop", VMStopParams(vm=name, timeout=timeout, force=force))
        return StoppedVM.after(self.appliance.vms.show(name), job)

    def resize_vm(self, name: str, vcpus: int | None, memory_mib: int | None) -> VMDetail:
        self.appliance.vms.resize(name, vcpus=vcpus, memory_mib=memory_mib)
        return self.vm(name)

    def grow_disk(self, name: str, disk: str, size: int) -> int:
        return _run(self.appliance.vms.grow_disk(name, disk, size))

    def set_ha(self, name: str, enabled: bool, max_restarts: int, window_seconds: int) -> VMDetail:
        self.appliance.vms.set_ha(name, enabled, max_restarts, window_seconds)
        return self.vm(name)

    def set_compute_pool(self, name: str, pool: str | None) -> VMDetail:
        self.appliance.vms.placement.set_compute_pool(name, pool)
        return self.vm(name)

    def clone_progress(self, name: str) -> dict[str, float]:
        return _run(self.appliance.vms.clone_progress(name))

    def delete_vm(self, name: str, dry_run: bool) -> Impact:
        from appliance.deletion.deletables import deletion_service

        deletions = deletion_service(self.appliance)
        return deletions.preview("vm", name) if dry_run else deletions.delete("vm", name)

    # -- a stopped VM's disks and NICs -----------------------------------------------------------

    def add_disk(self, name: str, disk: NewDisk) -> VMDetail:
        self.appliance.vms.hardware.add_disk(name, disk)
        return self.vm(name)

    def remove_disk(self, name: str, disk: str, delete_file: bool) -> VMDetail:
        self.appliance.vms.hardware.remove_disk(name, disk, delete_file)
        return self.vm(name)

    def add_nic(self, name: str, nic: NewNic) -> VMDetail:
        self.appliance.vms.hardware.add_nic(name, nic)
        return self.vm(name)

    def remove_nic(self, name: str, mac: str) -> VMDetail:
        self.appliance.vms.hardware.remove_nic(name, mac)
        return self.vm(name)

    # -- the image library -----------------------------------------------------------------------

    def images(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.appliance.vms.images.list()]

    def import_image(self, name: str, file: Path, kind: str | None,
                     progress: Callable[[int], None]) -> dict[str, Any]:
        record = self.appliance.vms.images.import_file(name, file, kind)  # type: ignore[arg-type]
        progress(record.size)   # a copy on this machine: said done once done
        return record.to_dict()

    def image_from_vm(self, vm: str, name: str, disk: str | None) -> dict[str, Any]:
        return self.appliance.vms.image_from_vm(vm, name, disk).to_dict()

    def verify_image(self, name: str) -> dict[str, Any]:
        return self.appliance.vms.images.verify(name).to_dict()

    def delete_image(self, name: str) -> None:
        self.appliance.vms.delete_image(name)

    # -- backups, snapshots, restores, the store -------------------------------------------------

    def backups(self, vm: str | None, listing: Listing) -> Page[BackupOut]:
        from appliance.backups.catalog import BackupCatalog
        from appliance.catalog.query import Total

        total = Total()
        records = BackupCatalog(self.appliance.catalog).page(_query(listing), vm=vm, response=total)
        return Page([BackupOut.model_validate(r) for r in records], total.count)

    def backup(self, backup_id: str) -> BackupOut:
        from appliance.backups.catalog import BackupCatalog

        return BackupOut.model_validate(BackupCatalog(self.appliance.catalog).get(backup_id))

    def protect_backup(self, backup_id: str, protected: bool) -> BackupOut:
        from appliance.backups.protection import BackupProtection

        protection = BackupProtection(self.appliance.catalog, self.appliance.store)
        return BackupOut.model_validate(protection.protect(backup_id) if protected else protection.unprotect(backup_id))

    def snapshot_tree(self, vm: str) -> dict[str, Any]:
        return snapshot_tree(self.appliance.snapshots, vm)

    def check_snapshots(self, vm: str, repair: bool) -> dict[str, Any]:
        return vars(_run(self.appliance.snapshots.check(vm, fix=repair)))

    def boot_test(self, backup_id: str, timeout: float, marker: str) -> BootTestOut:
        tests = self.appliance.restores.boot_tests
        return BootTestOut.of(_run(tests.run(backup_id, timeout=timeout, marker=marker)))

    def instant_restore(self, vm: str) -> InstantRestoreOut:
        return InstantRestoreOut(**_run(self.appliance.restores.instant.poll(vm)).to_dict())

    def instant_speed(self, vm: str, speed: int) -> InstantRestoreOut:
        return InstantRestoreOut(**_run(self.appliance.restores.instant.set_speed(vm, speed)).to_dict())

    def instant_resume(self, vm: str, speed: int | None) -> InstantRestoreOut:
        return InstantRestoreOut(**_run(self.appliance.restores.instant.resume(vm, speed=speed)).to_dict())

    def store_stats(self) -> StoreStats:
        from dedup import store_stats

        return store_stats(self.appliance.store)

    # -- policies --------------------------------------------------------------------------------

    def _policies(self) -> PolicyService:
        from appliance.policies.service import PolicyService

        return PolicyService(self.appliance.catalog)

    def policies(self) -> list[PolicyOut]:
        from appliance.catalog.query import MAX_LIMIT
        from appliance.policies.service import policy_out

        return [policy_out(r) for r in self._policies().page(_query(Listing([], "name", MAX_LIMIT)))]

    def create_policy(self, policy: Policy) -> PolicyOut:
        from appliance.policies.service import policy_out

        return policy_out(self._policies().create(policy))

    def preview_policy(self, name: str, count: int) -> PolicyPreview:
        return PolicyPreview(**self._policies().preview(name, count))

    def delete_policy(self, name: str, dry_run: bool) -> Impact:
        from appliance.deletion.deletables import deletion_service

        deletions = deletion_service(self.appliance)
        return deletions.preview("policy", name) if dry_run else deletions.delete("policy", name)
