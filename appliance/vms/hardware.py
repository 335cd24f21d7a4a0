"""Adding and removing a VM's disks and NICs: `cairn vm disk|nic add|remove`, POST and DELETE
/api/v1/vms/{name}/disks|nics.

A change applies to a stopped VM's definition and its guest sees it from the next start. A VM
that runs is refused, not hot-plugged: the q35 machine Cairn starts has its devices on the PCIe
root bus, which takes no hot-plugged device (each would need a pcie-root-port reserved at start),
and a device_del the guest never acknowledges stays pending for ever, which under TCG on a busy
host is common; a stop and a start is what a guest always survives.

Each change is made under the VM's lock (the one its start, snapshot changes and restores take),
and knows the rest of Cairn: the snapshot tree gets a root layer for a new disk, and a disk
that a snapshot holds a point in time of is not removed (its snapshots would no longer revert);
a removed disk's checkpoint is retired, so that a disk added later under its name is read in
full, as the backup ledger reads any disk new since the last backup.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.backups.catalog import fail_interrupted
from appliance.backups.records import BackupRecord, BackupStatus, CheckpointRecord, CheckpointState
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError, NotFoundError
from appliance.pools.networks import MAX_NICS
from appliance.snapshots.records import SnapshotIntentRecord, SnapshotTreeRecord
from vmm import DiskSpec, VMSpec, VMSpecError, create_disk, image_info
from vmm.images import copy_into
from vmm.network_disks import RbdDisk, network_disk
from vmm.rundir import exclusive
from vmm.spec import DISK_FORMATS, MAC_RE, NIC_MODELS, NicSpec, random_mac

from .devices import NewDisk, NewNic
from .records import VMRecord

if TYPE_CHECKING:
    from appliance.pools.service import StoragePool
    from chain import VMTree

    from .service import VMService

DISK_NAMES = [f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


class VMHardware:
    def __init__(self, vms: VMService):
        self.vms = vms
        self.catalog = vms.catalog

    # -- disks --------------------------------------------------------------------------------

    def add_disk(self, name: str, new: NewDisk) -> DiskSpec:
        """A new disk for the stopped VM, after its others (the guest's next vdX)."""
        # The request is checked before the VM's lock is taken: a refused one leaves nothing behind.
        if new.size is not None and new.size <= 0:
            raise VMSpecError(f"a disk's size must be positive, not {new.size}")
        if new.size is None and new.image is None:
            raise VMSpecError("give the new disk a size, or a library image to start from")
        if new.image is not None:
            self.vms.images.get(new.image)
        pool = self._pool_for(self.vms.spec(name), new.storage_pool)
        rbd = pool is not None and pool.kind == "rbd"
        if pool is not None and rbd and new.format == "qcow2":
            raise ConflictError(f"storage pool {pool.name} is a Ceph pool: its disks are raw images")
        if new.image is not None and new.format == "raw" and not rbd:
            raise ConflictError("a disk on a library image is a qcow2 layer over it, not raw")
        with self._stopped(name, "add a disk") as spec:
            backing = str(self.vms.images.verified_path(new.image, "disk")) if new.image else None
            backing_format = self.vms.images.get(new.image).format if new.image else None
            size = new.size
            if backing is not None:   # a layer smaller than its image would hide the image's end
                size = max(size or 0, int(image_info(backing, backing_format)["virtual-size"]))
            disk = self._new_disk_spec(spec, pool, new.format or ("raw" if rbd else "qcow2"))
            spec.disks.append(disk)
            spec.validate()
            with self.catalog() as s:
                self._tree(s, name, "add a disk")
            made = self._make(disk, size, backing, backing_format)
            try:
                with self.catalog.begin() as s:
                    self._record(s, spec)
                    if (tree := s.get(SnapshotTreeRecord, name)) is not None:
                        from chain.tree import Node, VMTree, new_id  # here: `cairn vm list` needs no chain code

                        snapshots = VMTree.from_dict(tree.tree)
                        root = Node(new_id(), disk.name, disk.path, None, utcnow())
                        snapshots.nodes[root.id] = root
                        tree.tree = snapshots.to_dict()
            except BaseException:
                made()
                raise
            return disk

    def remove_disk(self, name: str, disk: str, delete_file: bool = False) -> DiskSpec:
        """Take a disk out of the stopped VM; its file stays where it is unless `delete_file`
        (Cairn deletes only a file it made: in the VM's folders, or its RBD image)."""
        self._disk(self.vms.spec(name), disk)   # first: asking for a disk it never had leaves no lock file
        with self._stopped(name, "remove a disk") as spec:
            gone = self._disk(spec, disk)
            if gone is spec.disks[0]:
                raise ConflictError(f"disk {disk} is the boot disk of VM {name} (its first); it cannot be removed")
            with self.catalog() as s:
                tree = self._tree(s, name, f"remove disk {disk}")
                self._require_no_backup_running(s, name, f"remove disk {disk}")
            held = sorted({tree.snapshots[n.snapshot].name for n in tree.nodes.values()
                           if n.disk == disk and n.snapshot is not None}) if tree is not None else []
            if held:
                raise ConflictError(f"snapshots {', '.join(held)} of VM {name} hold disk {disk}: "
                                    "delete them first (they could no longer be reverted to); nothing was changed")
            remove_file = self._deleter(spec, gone) if delete_file else None
            spec.disks.remove(gone)
            spec.validate()
            with self.catalog.begin() as s:
                self._record(s, spec)
                if (row := s.get(SnapshotTreeRecord, name)) is not None:
                    from chain import VMTree

                    kept = VMTree.from_dict(row.tree)
                    kept.nodes = {i: n for i, n in kept.nodes.items() if n.disk != disk}
                    row.tree = kept.to_dict()
                for checkpoint in s.scalars(select(CheckpointRecord).where(
                        CheckpointRecord.vm_name == name, CheckpointRecord.disk == disk,
                        CheckpointRecord.state != CheckpointState.RETIRED)):
                    checkpoint.state, checkpoint.retired_at = CheckpointState.RETIRED, utcnow()
            if remove_file is not None:
                remove_file()
            return gone

    # -- NICs ---------------------------------------------------------------------------------

    def add_nic(self, name: str, new: NewNic) -> NicSpec:
        """A new NIC for the stopped VM, after its others."""
        # The request is checked before the VM's lock is taken: a refused one leaves nothing behind.
        mac = (new.mac or random_mac()).lower()
        if not MAC_RE.match(mac):
            raise VMSpecError(f"{new.mac!r} is not a locally administered unicast MAC (e.g. 52:54:00:12:34:56)")
        if new.network is not None:
            if new.mode != "user" or new.tap is not None or new.bridge is not None:
                raise ConflictError(f"a NIC on network {new.network} is a tap Cairn makes on its bridge: "
                                    "give it no mode, tap or bridge")
            if new.model is not None and new.model not in NIC_MODELS:
                raise VMSpecError(f"NIC model {new.model!r} is not one of {', '.join(NIC_MODELS)}")
            self.vms.networks.get(new.network)
        else:
            self._new_nic(self.vms.spec(name), new, mac).validate()
        with self._stopped(name, "add a NIC") as spec:
            self._require_unused_mac(mac)
            if new.network is not None:
                attached = self.vms.networks.attach(new.network, name, mac=mac, model=new.model)
                return next(n for n in self.vms.spec(name).nics if n.name == attached.nic)
            nic = self._new_nic(spec, new, mac)
            spec.nics.append(nic)
            spec.validate()
            with self.catalog.begin() as s:
                self._record(s, spec)
            return nic

    @staticmethod
    def _new_nic(spec: VMSpec, new: NewNic, mac: str) -> NicSpec:
        """The NIC `new` asks for, under the VM's first free NIC name."""
        used = {n.name for n in spec.nics}
        nic_name = next((f"net{i}" for i in range(MAX_NICS) if f"net{i}" not in used), None)
        if nic_name is None:
            raise ConflictError(f"VM {spec.name} has {MAX_NICS} NICs already")
        return NicSpec(nic_name, new.mode, mac, new.tap, new.bridge, new.model)

    def remove_nic(self, name: str, mac: str) -> NicSpec:
        """Take the NIC with this MAC out of the stopped VM; on a network, its address is released."""
        self._nic(self.vms.spec(name), mac)   # first: asking for a NIC it never had leaves no lock file
        with self._stopped(name, "remove a NIC") as spec:
            gone = self._nic(spec, mac)
            if any(a.nic == gone.name for a in self.vms.networks.attachments(vm=name)):
                self.vms.networks.detach_nic(name, gone.name)
                return gone
            spec.drop_nics({gone.name})
            with self.catalog.begin() as s:
                self._record(s, spec)
            return gone

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _disk(spec: VMSpec, disk: str) -> DiskSpec:
        found = next((d for d in spec.disks if d.name == disk), None)
        if found is None:
            raise NotFoundError(f"VM {spec.name} has no disk {disk}")
        return found

    @staticmethod
    def _nic(spec: VMSpec, mac: str) -> NicSpec:
        found = next((n for n in spec.nics if n.mac == mac.lower()), None)
        if found is None:
            raise NotFoundError(f"VM {spec.name} has no NIC with MAC {mac}")
        return found

    @contextmanager
    def _stopped(self, name: str, doing: str) -> Iterator[VMSpec]:
        """The VM's definition, under its lock, once it is known to run nowhere."""
        self.vms.spec(name)
        rundir = self.vms.driver.paths(name)
        rundir.path.mkdir(parents=True, exist_ok=True)
        with exclusive(rundir, name):
            self.vms.require_stopped(name, f"{doing} (Cairn does not hot-plug devices: it applies the change "
                                           "to the stopped VM, which sees it from its next start)")
            yield self.vms.spec(name)

    @staticmethod
    def _record(s: Session, spec: VMSpec) -> None:
        s.get_one(VMRecord, spec.name).spec = spec.to_dict()

    @staticmethod
    def _tree(s: Session, name: str, doing: str) -> VMTree | None:
        from chain import VMTree

        if s.get(SnapshotIntentRecord, name) is not None:
            raise ConflictError(f"a snapshot operation on VM {name} was interrupted: finish it first "
                                f"(cairn snapshot check {name}), then {doing}")
        row = s.get(SnapshotTreeRecord, name)
        return VMTree.from_dict(row.tree) if row is not None else None

    @staticmethod
    def _require_no_backup_running(s: Session, name: str, doing: str) -> None:
        fail_interrupted(s, name)
        running = s.scalars(select(BackupRecord).where(BackupRecord.vm_name == name,
                                                       BackupRecord.status == BackupStatus.RUNNING)).first()
        if running is not None:
            raise ConflictError(f"backup {running.id} of VM {name} is reading its disks: {doing} once it is done")

    def _require_unused_mac(self, mac: str) -> None:
        if (owner := self.mac_owner(mac)) is not None:
            raise ConflictError(f"MAC {mac} is already VM {owner}'s: give another, or none for a random one")

    def mac_owner(self, mac: str) -> str | None:
        """The VM in the catalog with a NIC of this MAC (lower case), if any."""
        with self.catalog() as s:
            for row in s.scalars(select(VMRecord)):
                if any(n["mac"] == mac for n in row.spec.get("nics", [])):
                    return row.name
        return None

    def _pool_for(self, spec: VMSpec, named: str | None) -> StoragePool | None:
        """The storage pool a new disk goes in: the one named, else the first disk's (None: the data dir)."""
        pools = self.vms.pools
        if named is not None:
            return pools.storage_pool(named)
        first = spec.disks[0].path if spec.disks else None
        held = next((p for p in pools.storage_pools() if first is not None and p.holds(first)), None)
        return pools.storage_pool(held.name) if held is not None else None

    def _new_disk_spec(self, spec: VMSpec, pool: StoragePool | None, fmt: str) -> DiskSpec:
        """The next disk name of the VM whose file is free (a removed disk's may have been kept)."""
        taken = {d.name for d in spec.disks}
        for disk_name in DISK_NAMES:
            if disk_name in taken:
                continue
            if pool is not None and pool.kind == "rbd":
                image = pool.rbd.image(f"{spec.name}-{disk_name}")
                if not image.exists():
                    return DiskSpec(disk_name, image.filename, "raw")
                continue
            folder = (pool.path if pool else self.vms.settings.images_dir) / spec.name
            if not any((folder / f"{disk_name}.{kept}").exists() for kept in DISK_FORMATS):
                return DiskSpec(disk_name, str(folder / f"{disk_name}.{fmt}"), fmt)
        raise ConflictError(f"VM {spec.name} has no free disk name left (at most {len(DISK_NAMES)} disks)")

    @staticmethod
    def _make(disk: DiskSpec, size: int | None, backing: str | None, backing_format: str | None
              ) -> Callable[[], None]:
        """Create the disk's file or RBD image; returns what removes it again."""
        if (image := network_disk(disk.path)) is not None:
            assert isinstance(image, RbdDisk)
            image.create(size or 0)
            try:
                if backing is not None:
                    copy_into(backing, backing_format, image.filename)
            except BaseException:
                image.remove()
                raise
            return image.remove
        path = Path(disk.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        create_disk(path, size, disk.format, backing=backing, backing_format=backing_format)
        return lambda: path.unlink(missing_ok=True)

    def _deleter(self, spec: VMSpec, disk: DiskSpec) -> Callable[[], None]:
        """What deletes the disk's file, once known to be Cairn's and read by no other VM."""
        if (image := network_disk(disk.path)) is not None:
            own = next((i for i in self.vms.pools.vm_images(spec) if i.filename == image.filename), None)
            if own is None:
                raise ConflictError(f"disk {disk.name} is {disk.path}, which Cairn did not create: it deletes only "
                                    "its own; remove the disk without deleting it")
            return own.remove
        path = Path(disk.path)
        if not any(path.parent == folder for folder in self.vms.folders(spec)):
            raise ConflictError(f"disk {disk.name} is {disk.path}, outside the VM's folders: Cairn deletes only "
                                "files it made; remove the disk without deleting it")
        self.vms.require_unread([path], f"deleting disk {disk.name} of VM {spec.name}", besides=spec.name)
        return lambda: path.unlink(missing_ok=True)
