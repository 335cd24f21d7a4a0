"""Defining, running and removing VMs: the catalog keeps the definition, vmm runs it.

Disk files live in <data dir>/vms/<vm>/; images come from the image library
(<data dir>/images, vmm.images_library) and are checked against their SHA-256 whenever a VM is
created on them and again before the VM starts.

A VM runs on this machine, or on a host of its compute pool that placement picks at each start
(placement.py); its state is what that host says. Starting, stopping, HA and migration work on
every host; the rest (console, pause, snapshots, backups...) on VMs that run here.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from appliance.access.seen import ALL, Seen
from appliance.catalog.base import utcnow
from appliance.catalog.query import MAX_INTEGER, HasHeaders, ListQuery
from appliance.errors import ConflictError, NotFoundError
from appliance.names import LABEL
from appliance.pools.networks import NetworkService
from appliance.pools.service import PoolService
from appliance.settings import Settings
from appliance.snapshots.records import SnapshotIntentRecord, SnapshotTreeRecord
from procs import Holding
from vmm import DiskSpec, QemuDriver, StopMethod, VMSpec, VMStatus, create_disk, image_info
from vmm.clone import CloneMode, clone_disks, clone_spec
from vmm.ha import DOWN_AFTER, HASupervisor
from vmm.images import backing_chain, copy_into, resize_image
from vmm.images_library import ImageLibrary, ImageRecord
from vmm.network_disks import RbdDisk, network_disk
from vmm.placement import LOCAL_HOST, SchedulingGroup
from vmm.rundir import exclusive
from vmm.spec import NicSpec, validate_vm_name

from .devices import DISK_NAMES
from .listing import VMListing, VMView, status_in
from .placement import VMPlacement
from .readers import Reader, ReadingVM, find_readers, refusal
from .records import (
    HA_MAX_RESTARTS,
    HA_MAX_WINDOW_SECONDS,
    SchedulingGroupRecord,
    VMOptionsRecord,
    VMRecord,
    VMTagRecord,
)

if TYPE_CHECKING:
    from appliance.jobs.events import EventLog

    from .hardware import VMHardware

ACTIVE = ("running", "paused")
# States in which no QEMU of the VM runs anywhere ("unknown": its host does not answer).
DOWN = ("stopped", "crashed")
# A VM's rows in the catalog besides its backups: deleting the VM removes them all.
VM_RECORDS = (VMRecord, SnapshotTreeRecord, SnapshotIntentRecord, VMOptionsRecord, VMTagRecord)


class NewFolder(Holding):
    """A new VM's folder, recorded for the sweep until the VM's record is committed."""

    def __init__(self, folder: Path, purpose: str) -> None:
        super().__init__(purpose)
        self.folder = folder
        self.remove(folder)


@dataclass
class VMOptions:
    """What create() accepts beyond disks and direct boot (all optional)."""
    image: str | None = None          # library disk image: the first disk is a thin overlay on it
    iso: str | None = None            # library ISO in the cdrom, booted first
    profile: str = "modern"
    nics: list[NicSpec] = field(default_factory=list)
    boot: list[str] = field(default_factory=list)
    vnc: bool = False
    storage_pool: str | None = None   # disks go in this storage pool's folder, not the data dir
    compute_pool: str | None = None   # runs on a host of this compute pool, not only here


class VMService:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], driver: QemuDriver):
        self.settings = settings
        self.catalog = catalog
        self.driver = driver
        self.images = ImageLibrary(settings.data_dir / "images")
        self.pools = PoolService(catalog)
        self.networks = NetworkService(settings, catalog, self.pools, driver)
        self.placement = VMPlacement(catalog, self.pools, self.networks, self.groups)
        self.listing = VMListing(catalog, driver, lambda: self.placement.pool)

    # Built when first used: their modules import the jobs' and backups' tables, which
    # a listing of VMs does not need.
    @cached_property
    def events(self) -> EventLog:
        from appliance.jobs.events import EventLog

        return EventLog(self.catalog)

    @cached_property
    def hardware(self) -> VMHardware:
        """A stopped VM's disks and NICs, added and removed."""
        from .hardware import VMHardware

        return VMHardware(self)

    # -- definitions --------------------------------------------------------------------------

    def create(self, name: str, disk_sizes: list[int], memory_mib: int = 256, vcpus: int = 1,
               kernel: str | None = None, initrd: str | None = None, append: str | None = None,
               base_image: str | None = None, options: VMOptions | None = None) -> VMSpec:
        """A new VM with blank qcow2 disks; the first one is a thin overlay on `base_image` (a
        file) or on options.image (a library image) if given, and an ISO goes in its cdrom."""
        options = options or VMOptions()
        with self.catalog() as s:
            if s.get(VMRecord, name):
                raise ConflictError(f"VM {name} already exists")
        for path in (kernel, initrd, base_image):
            if path and not Path(path).is_file():
                raise NotFoundError(f"{path} does not exist")
        if base_image and options.image:
            raise ConflictError("give a base image file or a library image, not both")
        backing = (str(self.images.verified_path(options.image, "disk")) if options.image
                   else base_image and str(Path(base_image).resolve()))
        # A library image's format is its record's: an image from outside is never probed.
        backing_format = self.images.get(options.image).format if options.image else None
        cdrom = str(self.images.verified_path(options.iso, "iso")) if options.iso else None
        if not disk_sizes and not backing:
            raise ConflictError("a VM needs at least one disk (a disk size or an image)")
        if len(disk_sizes) > len(DISK_NAMES):
            raise ConflictError(f"a VM has at most {len(DISK_NAMES)} disks")
        pool = self.pools.storage_pool(options.storage_pool) if options.storage_pool else None
        count = max(len(disk_sizes), 1 if backing else 0)
        if pool is not None and pool.kind == "rbd":
            # Raw images, thin in Ceph; the VM's QEMU opens them with its rbd driver.
            disks = [DiskSpec(DISK_NAMES[i], pool.rbd.image(f"{name}-{DISK_NAMES[i]}").filename, "raw")
                     for i in range(count)]
        else:
            folder = (pool.path if pool else self.settings.images_dir) / name
            disks = [DiskSpec(DISK_NAMES[i], str(folder / f"{DISK_NAMES[i]}.qcow2")) for i in range(count)]
        boot = options.boot or (["cdrom", "disk"] if cdrom else [])
        spec = VMSpec(name=name, memory_mib=memory_mib, vcpus=vcpus, disks=disks,
                      kernel=kernel and str(Path(kernel).resolve()),
                      initrd=initrd and str(Path(initrd).resolve()), append=append,
                      profile=options.profile, nics=options.nics, cdrom=cdrom, boot=boot,
                      vnc=options.vnc)
        spec.validate()
        self._fits(spec, options.compute_pool)
        if pool is not None and pool.kind == "rbd":
            self._create_rbd_disks(spec, disk_sizes, backing, backing_format, options)
            return spec
        with self._new_folder(name, folder.parent) as until_recorded:
            for i, disk in enumerate(disks):
                size = disk_sizes[i] if i < len(disk_sizes) else None
                if i == 0 and backing:
                    # An overlay smaller than its image would hide the image's end.
                    size = size and max(size, int(image_info(backing, backing_format)["virtual-size"]))
                    create_disk(disk.path, size, backing=backing, backing_format=backing_format)
                else:
                    create_disk(disk.path, size)
            self._add(spec, options, until_recorded)
        return spec

    def _add(self, spec: VMSpec, options: VMOptions, until_recorded: Holding | None = None) -> None:
        """The new VM's rows, once its disks exist; the sweep's record of its new folder
        (`until_recorded`, _new_folder) closed in the same transaction, before its commit."""
        with self.catalog.begin() as s:
            s.add(VMRecord(name=spec.name, spec=spec.to_dict()))
            if options.compute_pool:
                s.add(VMOptionsRecord(vm_name=spec.name, compute_pool=options.compute_pool))
            if until_recorded is not None:
                until_recorded.close()

    def _create_rbd_disks(self, spec: VMSpec, disk_sizes: list[int], backing: str | None,
                          backing_format: str | None, options: VMOptions) -> None:
        """Each disk a new RBD image; the first gets a copy of the base image (an RBD image has no
        backing file: only its data is written, so it stays thin). All or none: a failure removes
        the images made."""
        made: list[RbdDisk] = []
        try:
            for i, disk in enumerate(spec.disks):
                image = network_disk(disk.path)
                assert isinstance(image, RbdDisk)
                size = disk_sizes[i] if i < len(disk_sizes) else 0
                if i == 0 and backing:
                    size = max(size, int(image_info(backing, backing_format)["virtual-size"]))
                image.create(size)
                made.append(image)
                if i == 0 and backing:
                    copy_into(backing, backing_format, image.filename)
            self._add(spec, options)
        except Exception:
            for image in made:
                image.remove()
            raise

    def spec(self, name: str) -> VMSpec:
        with self.catalog() as s:
            rec = s.get(VMRecord, name)
            if rec is None:
                raise NotFoundError(f"no VM named {name}")
            return VMSpec.from_dict(rec.spec)

    @staticmethod
    def point_disks(session: Session, name: str, paths: dict[str, str], formats: dict[str, str] | None = None) -> None:
        """From its next start the VM opens these files (snapshots move a disk's active layer), in
        these formats where given (an instant restore onto RBD moves a disk from a qcow2 overlay
        to a raw image)."""
        rec = session.get_one(VMRecord, name)
        spec = VMSpec.from_dict(rec.spec)
        for disk in spec.disks:
            disk.path = paths.get(disk.name, disk.path)
            disk.format = (formats or {}).get(disk.name, disk.format)
        spec.validate()
        rec.spec = spec.to_dict()

    def show(self, name: str, status: VMStatus | None = None) -> VMView:
        """The VM as it stands (`status`: its state, if the caller has just learnt it)."""
        spec = self.spec(name)
        host = self.placement.host_of(name)
        with self.catalog() as s:
            opts = s.get(VMOptionsRecord, name)
        return VMView.of(spec, opts, host, status or self._status_on(host, name))

    def status(self, name: str) -> VMStatus:
        """The VM's state where it runs or last ran: "unknown" if that host does not answer."""
        return self._status_on(self.placement.host_of(name), name)

    def _status_on(self, host: str, name: str) -> VMStatus:
        if host == LOCAL_HOST:
            return self.driver.status(name)
        return status_in(self.listing.statuses_on(host), name)

    def page(self, query: ListQuery, where: ColumnElement[bool] | None = None,
             response: HasHeaders | None = None) -> list[VMView]:
        """The VMs `query` asks for, among those `where` selects: listing.py's page()."""
        return self.listing.page(query, where, response)

    def resize(self, name: str, vcpus: int | None = None, memory_mib: int | None = None) -> VMSpec:
        """New CPU count and memory size, for a stopped VM (they apply at its next start)."""
        self.spec(name)
        self.require_stopped(name, "change its CPUs or memory")
        with self.catalog.begin() as s:
            rec = s.get_one(VMRecord, name)
            spec = VMSpec.from_dict(rec.spec)
            spec.vcpus = spec.vcpus if vcpus is None else vcpus
            spec.memory_mib = spec.memory_mib if memory_mib is None else memory_mib
            spec.validate()
            self._fits(spec)
            rec.spec = spec.to_dict()
        return spec

    async def grow_disk(self, name: str, disk: str, size_bytes: int) -> int:
        """Grow a disk to size_bytes: live (block_resize) if the VM runs, else qemu-img resize.
        Returns the new size; shrinking is refused."""
        spec = self.spec(name)
        target = next((d for d in spec.disks if d.name == disk), None)
        if target is None:
            raise NotFoundError(f"VM {name} has no disk {disk}")
        current = int(image_info(target.path)["virtual-size"])
        if size_bytes < current:
            raise ConflictError(f"disk {disk} of VM {name} is {current} bytes; shrinking it to "
                                f"{size_bytes} would cut off data")
        self.require_unread([target.path], f"growing disk {disk} of VM {name}", besides=name)
        if self._here(name, "grow its disks live").state in ACTIVE:
            await self.driver.grow_disk(name, disk, size_bytes)
        else:
            resize_image(target.path, size_bytes)
        return size_bytes

    # -- running ------------------------------------------------------------------------------

    async def start(self, name: str, paused: bool = False, fenced_off: Collection[str] = ()) -> VMView:
        """Start the VM on the host placement picks now, unless it runs somewhere already.
        `paused`: QEMU sets the machine up, its guest runs no code until resume() (QEMU -S).
        `fenced_off`: hosts that do not answer, and HA has proven the VM gone from (it starts
        on none of them, and they are not asked whether it runs there)."""
        # The checks read the catalog, other VMs' image headers and the VM's host: off the event
        # loop, which meanwhile serves other requests, the monitors of QEMUs starting beside
        # this one among them.
        spec = await asyncio.to_thread(self._startable, name, fenced_off)
        chosen = await self.placement.choose(spec, avoid=fenced_off, among=self._paused_here(name) if paused else None)
        # Recorded first: whatever happens next, the catalog never points away from its QEMU.
        self.placement.record(name, should_run=True, host=chosen.name)
        try:
            status = (await self._start_here(spec, paused) if chosen.name == LOCAL_HOST
                      else await self.placement.run(chosen, spec, paused))
        except BaseException:
            self.placement.record(name, should_run=False)
            raise
        return self.show(name, status)

    def _paused_here(self, name: str) -> list[str]:
        """The hosts a paused start may use: this machine, where Cairn resumes VMs."""
        hosts, _ = self.placement.candidates(name)
        if LOCAL_HOST not in hosts:
            raise ConflictError(f"VM {name} starts paused only on this machine ({LOCAL_HOST}: Cairn resumes VMs "
                                f"there), which is not in its compute pool ({', '.join(hosts)})")
        return [LOCAL_HOST]

    async def _start_here(self, spec: VMSpec, paused: bool) -> VMStatus:
        with self.networks.starting(spec):
            status = await self.driver.start(spec, paused=paused)
        with self.catalog() as s:
            opts = s.get(VMOptionsRecord, spec.name)
        if opts and opts.linked_to:
            await self.driver.stream_disks(spec.name, self._own_bottoms(spec.name, opts.linked_to))
        return status

    def _startable(self, name: str, fenced_off: Collection[str]) -> VMSpec:
        """The VM's definition, once it may start: no other VM reads the files it would write,
        its library images are intact, and it runs nowhere (on a host of `fenced_off` it cannot)."""
        spec = self.spec(name)
        # A running guest writes its active layers; the layers under them stay as they are.
        self.require_unread([d.path for d in spec.disks], f"starting VM {name}", besides=name,
                            hint=f"or take a snapshot of {name} first: its writes then go to new layers")
        self._verify_images(spec)
        if (host := self.placement.host_of(name)) not in fenced_off:
            current = self._status_on(host, name)
            if current.state == "unknown":
                raise _silent(name, host)
            if current.state in ACTIVE:
                raise ConflictError(f"VM {name} is already {current.state}{_on(host)}")
        return spec

    async def stop(self, name: str, timeout: float = 30.0, force: bool = False
                   ) -> tuple[VMView, StopMethod | Literal["unknown"]]:
        """The VM stopped, and how (QemuDriver.stop): whoever asked is told whether the guest shut
        down or was forced off; "unknown" for a VM on another host, whose agent does not say."""
        self.spec(name)
        # No longer meant to run: HA leaves it down even if its host dies meanwhile.
        self.placement.record(name, should_run=False)
        host = self.placement.host_of(name)
        if host == LOCAL_HOST:
            how = await self.driver.stop(name, timeout=timeout, force=force)
            return self.show(name), how
        return self.show(name, await self.placement.stop(host, name, timeout, force)), "unknown"

    async def reboot(self, name: str) -> VMView:
        self._here(name, "reset it")
        await self.driver.reboot(name)
        return self.show(name)

    async def pause(self, name: str) -> VMView:
        self._here(name, "pause it")
        await self.driver.pause(name)
        return self.show(name)

    async def resume(self, name: str) -> VMView:
        self._here(name, "resume it")
        await self.driver.resume(name)
        return self.show(name)

    def _here(self, name: str, doing: str) -> VMStatus:
        """The VM's state, if it is on this machine; ConflictError if it runs on another host."""
        self.spec(name)
        host = self.placement.host_of(name)
        if host != LOCAL_HOST:
            status = self._status_on(host, name)
            if status.state == "unknown":
                raise _silent(name, host)
            if status.state not in DOWN:
                raise ConflictError(f"VM {name} is {status.state} on host {host}: Cairn can {doing} only on "
                                    f"this machine (migrate it here first: cairn vm migrate {name} {LOCAL_HOST})")
        return self.driver.status(name)

    def delete(self, name: str) -> None:
        """Removes the VM and its disks at once; its backups stay in the store. (The API and
        the CLI delete under the deletion rules instead: appliance/deletion/deletables.py, VMDeletable.)"""
        spec = self.check_deletable(name).spec
        folders, images = self.folders(spec), self.pools.vm_images(spec)
        self.take_out(name)
        self.remove_folders(folders)
        for image in images:
            image.remove()

    def check_deletable(self, name: str) -> VMView:
        """The VM, if it may be deleted now: stopped, and no other VM reads a file of its folders."""
        view = self.show(name)
        self._require_down(name, view.host, "first", view.status)
        self.require_unread(self.own_files(view.spec), f"deleting VM {name}", besides=name)
        return view

    def own_files(self, spec: VMSpec) -> list[Path]:
        """Every file in the VM's own folders (disks, snapshot layers, memory states)."""
        return [f for folder in self.folders(spec) for f in folder.rglob("*") if f.is_file()]

    def folders(self, spec: VMSpec) -> list[Path]:
        """The folders holding the VM's own files: disks, snapshot layers, memory states."""
        return [f for f in (self.settings.images_dir / spec.name, *self.pools.vm_folders(spec)) if f.is_dir()]

    def take_out(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """Remove the VM from the catalog, leaving its folders to the caller: its addresses
        released, its rows (VM_RECORDS) deleted in one transaction, its run state forgotten.
        Returns the rows deleted, by table, as column -> value."""
        self.networks.release_vm(name)
        rows: dict[str, list[dict[str, Any]]] = {}
        with self.catalog.begin() as s:
            for record in VM_RECORDS:
                column = record.__table__.c["name" if record is VMRecord else "vm_name"]
                for row in s.scalars(select(record).where(column == name)):
                    rows.setdefault(record.__tablename__, []).append(
                        {a.key: getattr(row, a.key) for a in record.__mapper__.column_attrs})
                    s.delete(row)
        self.driver.forget(name)
        if (host := rows[VMRecord.__tablename__][0]["host"]) != LOCAL_HOST:
            self.placement.forget(host, name)
        return rows

    @staticmethod
    def remove_folders(folders: list[Path]) -> None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    # -- clones -------------------------------------------------------------------------------

    def clone(self, source: str, names: list[str], mode: str = "full") -> list[VMSpec]:
        """Clones of a stopped VM. "full": independent copies; "instant": linked clones that
        become independent by a background stream once started; several full clones at once
        share one image cache of the source's disks (stored once, in the image library)."""
        if mode not in ("full", "instant"):
            raise ConflictError(f"clone mode {mode!r} is not one of full, instant")
        if not names:
            raise ConflictError("name at least one clone")
        for name in names:
            validate_vm_name(name)   # before a folder is made of it
        self.spec(source)
        rundir = self.driver.paths(source)
        rundir.path.mkdir(parents=True, exist_ok=True)
        # The source's lock: no start, snapshot change or restore swaps its files meanwhile.
        with exclusive(rundir, source):
            return self._clone(source, names, mode)

    def _clone(self, source: str, names: list[str], mode: str) -> list[VMSpec]:
        src = self.spec(source)
        self.require_stopped(source, "clone it")
        with self.catalog() as s:
            taken = [n for n in names if s.get(VMRecord, n)]
        if taken or len(set(names)) != len(names):
            raise ConflictError(f"clone names must be new and distinct: {', '.join(taken) or names}")
        for name in names:
            self._fits(replace(src, name=name))
        disk_mode: CloneMode = "linked" if mode == "instant" else "full" if len(names) == 1 else "cached"
        caches = self._clone_caches(src) if disk_mode == "cached" else None
        made: list[VMSpec] = []
        try:
            for name in names:
                with self._new_folder(name) as until_recorded:
                    spec = clone_spec(src, name, clone_disks(src, until_recorded.folder, disk_mode, caches))
                    with self.catalog.begin() as s:
                        self.networks.adopt_clone(s, source, spec)
                        s.add(VMRecord(name=name, spec=spec.to_dict()))
                        if mode == "instant":
                            s.add(VMOptionsRecord(vm_name=name, linked_to=source))
                        until_recorded.close()
                made.append(spec)
                self.networks.refresh(spec.name)
        except BaseException:
            for spec in made:
                self.delete(spec.name)
            raise
        return made

    def _clone_caches(self, src: VMSpec) -> dict[str, str]:
        stamp = utcnow().strftime("%Y%m%dt%H%M%S")
        caches = {}
        for disk in src.disks:
            record = self.images.import_disk(f"cache-{src.name}-{disk.name}-{stamp}"[:63],
                                             disk.path, source=f"vm:{src.name}/{disk.name}")
            caches[disk.name] = str(self.images.verified_path(record.name, "disk"))
        return caches

    async def clone_progress(self, name: str) -> dict[str, float]:
        """An instant clone's streams: disk -> fraction copied; empty once it stands alone."""
        linked = self._linked_disks(name)
        streaming = (await self.driver.streaming_disks(name)
                     if linked and self.driver.status(name).state in ACTIVE else {})
        return {disk: streaming.get(disk, 0.0) for disk in linked}

    def _own_bottoms(self, name: str, source: str) -> dict[str, str]:
        """Per disk of an instant clone that reads its source's files: the lowest layer of the
        clone's own, which the stream fills with the source's data. Every layer above it, a
        snapshot's taken before the first start too, then stands without the source, and the
        chain stays as the snapshot tree knows it."""
        base = self.settings.images_dir / source
        bottoms = {}
        for disk in self.spec(name).disks:
            chain = backing_chain(disk.path)
            at = next((i for i, f in enumerate(chain) if i and Path(f).parent == base), None)
            if at is not None:
                bottoms[disk.name] = chain[at - 1]
        return bottoms

    def _linked_disks(self, name: str) -> list[str]:
        """The disks of an instant clone that still read from its source's files; when none
        does any more, the link is dropped (QEMU removed the backing files by itself)."""
        with self.catalog() as s:
            opts = s.get(VMOptionsRecord, name)
            source = opts.linked_to if opts else None
        if source is None:
            return []
        base = self.settings.images_dir / source
        linked = [d.name for d in self.spec(name).disks
                  if any(Path(f).parent == base for f in backing_chain(d.path)[1:])]
        if not linked:
            with self.catalog.begin() as s:
                s.get_one(VMOptionsRecord, name).linked_to = None
        return linked

    # -- who reads a file (readers.py) -------------------------------------------------------

    def readers(self, files: Iterable[str | Path], besides: str | None = None) -> Sequence[Reader]:
        """The VMs, besides VM `besides`, whose disks, snapshot layers or CD-ROM read any of
        `files`; those in the recycle bin too (they must open when put back)."""
        return find_readers(files, self._reading_vms(besides))

    def require_unread(self, files: Iterable[str | Path], doing: str, besides: str | None = None,
                       hint: str | None = None) -> None:
        """Refuse `doing` (it changes or removes `files`) while another VM reads one of them."""
        if readers := self.readers(files, besides):
            raise ConflictError(refusal(doing, readers, hint))

    def _reading_vms(self, besides: str | None) -> Iterator[ReadingVM]:
        from chain import VMTree  # here and below: listing VMs needs none of the snapshot chains' code

        with self.catalog() as s:
            specs = [VMSpec.from_dict(r.spec) for r in s.scalars(select(VMRecord)) if r.name != besides]
            trees = {r.vm_name: VMTree.from_dict(r.tree) for r in s.scalars(select(SnapshotTreeRecord))}
            links = {o.vm_name: o.linked_to for o in s.scalars(select(VMOptionsRecord))}
        for spec in specs:
            tree = trees.get(spec.name)
            yield ReadingVM(spec.name, _tops(spec, [(n.disk, n.file) for n in tree.nodes.values()] if tree else []),
                            clone_of=links.get(spec.name))
        for spec, label, payload in self._recycled_specs():
            yield ReadingVM(label, _tops(spec, _recycled_layers(payload)), recycled=True)

    # -- images, placement --------------------------------------------------------------------

    def image_from_vm(self, name: str, image: str, disk: str | None = None) -> ImageRecord:
        """A library image of a stopped VM's disk (its backing chain flattened)."""
        spec = self.spec(name)
        self.require_stopped(name, "make an image of it")
        chosen = next((d for d in spec.disks if disk in (None, d.name)), None)
        if chosen is None:
            raise NotFoundError(f"VM {name} has no disk {disk}")
        return self.images.import_disk(image, chosen.path, source=f"vm:{name}/{chosen.name}")

    def image_users(self, image: str) -> list[str]:
        """VMs whose disks, snapshot layers or CD-ROM read from a library image, those in the
        recycle bin included (they must still open when put back)."""
        return sorted({r.vm for r in self.readers([self.images.path(image)])})

    def _recycled_specs(self) -> Iterator[tuple[VMSpec, str, dict[str, Any]]]:
        """Each VM in the recycle bin, its disk paths pointing where the bin keeps them, with
        its recycle-bin payload."""
        # Only now: a listing of VMs needs no recycle bin.
        from appliance.deletion.records import RecycledRecord

        with self.catalog() as s:
            entries = [(r.payload, r.name) for r in s.scalars(select(RecycledRecord).where(RecycledRecord.kind == "vm"))]
        for payload, name in entries:
            spec = VMSpec.from_dict(payload["rows"]["vms"][0]["spec"])
            for disk in spec.disks:
                disk.path = _in_recycle_bin(payload, disk.path)
            yield spec, f"{name} (in the recycle bin)", payload

    def delete_image(self, image: str) -> None:
        """Remove a library image no VM reads from."""
        self.images.get(image)
        if users := self.image_users(image):
            raise ConflictError(f"image {image} is in use by VMs {', '.join(users)}: delete them first "
                                "(a VM in the recycle bin: purge it); nothing was changed")
        self.images.delete(image)

    def _verify_images(self, spec: VMSpec) -> None:
        """Every library image the VM reads must still match its checksum."""
        files = [f for d in spec.disks if Path(d.path).exists() for f in backing_chain(d.path)]
        files += [spec.cdrom] if spec.cdrom else []
        for path in files:
            if (image := self.images.name_of(path)) is not None:
                self.images.verify(image)

    def groups(self, seen: Seen = ALL) -> list[SchedulingGroup]:
        """The scheduling groups, each naming only the VMs `seen` shows (placement sees them all)."""
        with self.catalog() as s:
            return [SchedulingGroup(r.name, r.policy, r.enforcement,  # type: ignore[arg-type]
                                    frozenset(vm for vm in r.vms if seen.vm(vm)), frozenset(r.hosts))
                    for r in s.scalars(select(SchedulingGroupRecord).order_by(SchedulingGroupRecord.name))]

    def save_group(self, group: SchedulingGroup, seen: Seen = ALL) -> None:
        """Create or replace a group. A caller who does not see every VM may name only VMs that
        exist and that they see, and may not replace a group naming one they do not see: a
        mandatory rule keeps its VMs from starting."""
        LABEL.check("scheduling group", group.name)
        group.validate()
        with self.catalog.begin() as s:
            if not seen.everything:
                for vm in sorted(group.vms):
                    if s.get(VMRecord, vm) is None or not seen.vm(vm):
                        raise NotFoundError(f"no VM named {vm}")
                self._check_group_seen(s.get(SchedulingGroupRecord, group.name), seen)
            s.merge(SchedulingGroupRecord(name=group.name, policy=group.policy,
                                          enforcement=group.enforcement, vms=sorted(group.vms),
                                          hosts=sorted(group.hosts)))

    def delete_group(self, name: str, seen: Seen = ALL) -> None:
        with self.catalog.begin() as s:
            if (rec := s.get(SchedulingGroupRecord, name)) is None:
                raise NotFoundError(f"no scheduling group named {name}")
            self._check_group_seen(rec, seen)
            s.delete(rec)

    @staticmethod
    def _check_group_seen(rec: SchedulingGroupRecord | None, seen: Seen) -> None:
        if rec is not None and not all(seen.vm(vm) for vm in rec.vms):
            raise ConflictError(f"scheduling group {rec.name} also names VMs you do not see: "
                                "only an admin may change or delete it")

    def _fits(self, spec: VMSpec, pool: str | None = None) -> None:
        """Refuse a VM that fits on none of its hosts (of compute pool `pool`, default its
        own): not enough memory, or mandatory policies keep it off all of them."""
        self.placement.fits(spec, pool)

    @contextmanager
    def _new_folder(self, name: str, root: Path | None = None) -> Iterator[NewFolder]:
        """The VM's own disk folder (in `root`, default the data dir's), made now: a concurrent
        create of the same name fails here instead of later removing this one's files. It goes
        again if the body fails, and if the process dies first the next start's sweep removes it
        (procs/): the body closes that record in the transaction that adds the VM, before its
        commit. A crash between the two leaves the folder; the sweep never removes a VM's disks."""
        folder = (root or self.settings.images_dir) / name
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            raise ConflictError(f"VM {name} already exists (or is being created): {folder} "
                                "exists") from None
        until_recorded = NewFolder(folder, f"the folder of new VM {name}")
        try:
            yield until_recorded
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            until_recorded.close()

    def require_stopped(self, name: str, doing: str) -> None:
        self._require_down(name, self.placement.host_of(name), f"to {doing}")

    def _require_down(self, name: str, host: str, purpose: str, status: VMStatus | None = None) -> None:
        """ConflictError unless no QEMU of the VM runs: it is stopped or crashed on `host`."""
        state = (status or self._status_on(host, name)).state
        if state == "unknown":
            raise _silent(name, host)
        if state not in DOWN:
            raise ConflictError(f"VM {name} is {state}{_on(host)}; stop it {purpose}")

    # -- high availability ----------------------------------------------------------------------

    def set_ha(self, name: str, enabled: bool, max_restarts: int = 3, window_seconds: int = 600) -> None:
        self.spec(name)
        if not (1 <= max_restarts <= HA_MAX_RESTARTS and 1 <= window_seconds <= HA_MAX_WINDOW_SECONDS):
            raise ConflictError(f"HA needs max_restarts from 1 to {HA_MAX_RESTARTS} and window_seconds "
                                f"from 1 to {HA_MAX_WINDOW_SECONDS} (30 days)")
        with self.catalog.begin() as s:
            opts = s.get(VMOptionsRecord, name) or VMOptionsRecord(vm_name=name)
            opts.ha_enabled, opts.ha_gave_up_at = enabled, None
            opts.ha_max_restarts, opts.ha_window_seconds = max_restarts, window_seconds
            s.merge(opts)

    def ha_supervisor(self, interval: float = 1.0, down_after: float = DOWN_AFTER) -> HASupervisor:
        from .ha import VMHighAvailability

        return HASupervisor(VMHighAvailability(self).hooks(), interval, down_after)

    @contextmanager
    def supervised(self, interval: float = 1.0, down_after: float = DOWN_AFTER) -> Iterator[HASupervisor]:
        supervisor = self.ha_supervisor(interval, down_after)
        supervisor.start()
        try:
            yield supervisor
        finally:
            supervisor.stop()

    # Last in the class: the name would shadow the built-in `list` in the annotations after it.
    def list(self) -> list[VMView]:
        """Every VM, by name (a listing to show: page())."""
        return self.page(ListQuery(limit=MAX_INTEGER))


def _on(host: str) -> str:
    return "" if host == LOCAL_HOST else f" on host {host}"


def _silent(name: str, host: str) -> ConflictError:
    return ConflictError(f"host {host} does not answer, so VM {name} may still run there: it stays as it is "
                         "until the host answers again (HA restarts an HA VM elsewhere once it is fenced)")


def _tops(spec: VMSpec, layers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Where a VM's reads start: its active layers, its snapshot layers, its CD-ROM."""
    return [*((d.name, d.path) for d in spec.disks), *layers, *([("cdrom", spec.cdrom)] if spec.cdrom else [])]


def _in_recycle_bin(payload: dict[str, Any], path: str) -> str:
    """Where a recycled VM's file is kept now (its folders were moved whole)."""
    for original, recycled in payload["folders"]:
        if path.startswith(original + os.sep):
            return recycled + path[len(original):]
    return path


def _recycled_layers(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The snapshot layers of a recycled VM, where the bin keeps them."""
    from chain import VMTree

    rows = payload["rows"].get(SnapshotTreeRecord.__tablename__, [])
    return [(n.disk, _in_recycle_bin(payload, n.file)) for row in rows
            for n in VMTree.from_dict(row["tree"]).nodes.values()]


__all__ = ["VMOptions", "VMService"]
