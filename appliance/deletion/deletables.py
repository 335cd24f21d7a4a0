"""The resources deletion protection covers: backups, policies and VMs, and what deleting each takes."""
from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError

from appliance.backups.records import BackupRecord, BackupStatus
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.records import ACTIVE_STATES, JobRecord
from appliance.policies.service import Clock, PolicyService, policy_of
from appliance.pools.records import AddressLeaseRecord
from appliance.snapshots.records import SnapshotIntentRecord, SnapshotTreeRecord
from appliance.units import human
from appliance.vms.records import VMOptionsRecord, VMRecord, VMTagRecord
from appliance.vms.service import VM_RECORDS, VMService
from chain import VMTree
from dedup import BackupNotFoundError, check_deletable, is_protected, store_stats
from dedup.prune import delete_backup
from vmm import VMSpec
from vmm.errors import ImageError
from vmm.images import backing_chain
from vmm.network_disks import RbdDisk, network_disk

from .protection import DeletionRule, DeletionService

if TYPE_CHECKING:
    from appliance.context import Appliance

WEEK = 7 * 24 * 3600
DEFAULT_RULES = {"backup": DeletionRule(mode="delayed", delay_seconds=WEEK),
                 "policy": DeletionRule(mode="immediate"),
                 "vm": DeletionRule(mode="delayed", delay_seconds=WEEK)}
RECYCLED = BackupStatus.RECYCLED   # a backup's catalog status while it waits in the recycle bin
RECYCLE_DIR = "recycle"            # <data dir>/recycle/vms/<token>/<vm>: a recycled VM's folder
POOL_RECYCLE_DIR = ".cairn-recycle"  # the same next to a storage pool's folder on another filesystem


def deletion_service(app: Appliance, clock: Clock = utcnow) -> DeletionService:
    return DeletionService(app.catalog, [BackupDeletable(app), PolicyDeletable(PolicyService(app.catalog, clock)),
                                         VMDeletable(app)],
                           DEFAULT_RULES, clock)


class BackupDeletable:
    """A recycled backup stays in the store (restorable, its chunks kept) but is no parent for new ones."""
    kind = "backup"

    def __init__(self, app: Appliance):
        self.app = app

    def impact(self, name: str) -> tuple[str, list[str], int | None]:
        rec = self.app.backups.get(name)
        if rec.status == BackupStatus.RUNNING:
            raise ConflictError(f"backup {name} is running: cancel its job instead")
        if rec.status == RECYCLED:
            raise ConflictError(f"backup {name} is already in the recycle bin")
        takes = [f"backup {rec.id} of VM {rec.vm_name} ({rec.kind}, {rec.status}, {human(rec.size)} of disks)"]
        try:
            manifest = self.app.store.get_backup(name)
        except BackupNotFoundError:
            return rec.id, [*takes, "(its data is not in the store: only the catalog entry goes)"], 0
        if is_protected(self.app.store, manifest):
            raise ConflictError(f"backup {name} is protected in the store: unprotect it first")
        check_deletable(self.app.store, manifest)   # a retention lock refuses it until its date
        with self.app.catalog() as s:
            children = list(s.scalars(select(BackupRecord.id).where(BackupRecord.parent == rec.id)))
            newest = s.scalars(select(BackupRecord.id).where(BackupRecord.vm_name == rec.vm_name,
                                                             BackupRecord.status == BackupStatus.OK)
                               .order_by(BackupRecord.started_at.desc())).first()
        if children:
            takes.append(f"nothing of the {len(children)} later backup(s) made from it: each restores alone")
        if newest == rec.id:
            takes.append(f"the next backup of {rec.vm_name} cannot be incremental on it: it reads the disks in full")
        usage = {u.backup_id: u for u in store_stats(self.app.store).per_backup}
        frees = usage[rec.id].unique_stored_bytes if rec.id in usage else None
        return rec.id, takes, frees

    def set_aside(self, name: str) -> dict[str, Any]:
        with self.app.catalog.begin() as s:
            rec = s.get_one(BackupRecord, name)
            payload = {"id": rec.id, "vm": rec.vm_name, "status": rec.status}
            rec.status = RECYCLED
        return payload

    def put_back(self, payload: dict[str, Any]) -> None:
        with self.app.catalog.begin() as s:
            s.get_one(BackupRecord, payload["id"]).status = payload["status"]

    def purge(self, payload: dict[str, Any]) -> None:
        try:
            manifest = self.app.store.get_backup(payload["id"])
        except BackupNotFoundError:
            manifest = None
        if manifest is not None and not delete_backup(self.app.store, manifest):
            raise ConflictError(f"backup {payload['id']} was protected in the store meanwhile: it stays")
        with self.app.catalog.begin() as s:
            s.execute(delete(BackupRecord).where(BackupRecord.id == payload["id"]))


class PolicyDeletable:
    kind = "policy"

    def __init__(self, policies: PolicyService):
        self.policies = policies

    def impact(self, name: str) -> tuple[str, list[str], int | None]:
        rec = self.policies.get(name)
        policy = policy_of(rec)
        vms = self.policies.selected_vms(policy)
        takes = [f"{policy.kind} policy {rec.name} (schedule '{policy.schedule}'): no more runs from it",
                 f"it selects {len(vms)} VM(s) today" + (f": {', '.join(vms)}" if vms else "")]
        with self.policies.catalog() as s:
            active = s.scalars(select(JobRecord.id).where(JobRecord.policy_id == rec.id,
                                                          JobRecord.state.in_(ACTIVE_STATES))).all()
        if active:
            takes.append(f"not its {len(active)} queued or running job(s): they finish")
        return rec.name, takes, None

    def set_aside(self, name: str) -> dict[str, Any]:
        rec = self.policies.delete(name)
        return {"id": rec.id, "name": rec.name, "kind": rec.kind, "enabled": rec.enabled, "spec": rec.spec,
                "created_at": _iso(rec.created_at), "scheduled_until": _iso(rec.scheduled_until)}

    def put_back(self, payload: dict[str, Any]) -> None:
        self.policies.restore(payload)

    def purge(self, payload: dict[str, Any]) -> None:
        """Nothing left to remove: set_aside took the policy out of the catalog."""


class VMDeletable:
    """A recycled VM is out of the catalog (not listed, its name free, its addresses released)
    and its folders are moved aside whole, to the same paths they come back to; the payload
    keeps its catalog rows. Its backups are not touched. The RBD images a storage pool of kind rbd
    made for it are renamed aside in their pool (.cairn-recycle-<token>-<image>), and back."""
    kind = "vm"

    def __init__(self, app: Appliance):
        self.app = app

    def impact(self, name: str) -> tuple[str, list[str], int | None]:
        vms = self.app.vms
        spec = self._deletable(name)
        folders = vms.folders(spec)
        takes = [f"VM {name}: its definition ({spec.vcpus} vCPU(s), {spec.memory_mib} MiB memory)"]
        images = vms.pools.vm_images(spec)
        takes += [self._disk(vms, disk.name, disk.path, folders, images) for disk in spec.disks]
        with self.app.catalog() as s:
            tree = s.get(SnapshotTreeRecord, name)
            intent = s.get(SnapshotIntentRecord, name)
            opts = s.get(VMOptionsRecord, name)
            tags = list(s.scalars(select(VMTagRecord.tag).where(VMTagRecord.vm_name == name)
                                  .order_by(VMTagRecord.tag)))
            backups = s.scalars(select(BackupRecord.id).where(BackupRecord.vm_name == name,
                                                              BackupRecord.status != RECYCLED)).all()
        snapshots = list(VMTree.from_dict(tree.tree).snapshots.values()) if tree else []
        if snapshots:
            takes.append(f"its snapshot tree: {len(snapshots)} snapshot(s): "
                         + ", ".join(snap.name for snap in sorted(snapshots, key=lambda snap: snap.created)))
        takes += [f"the memory state of snapshot {snap.name} ({human(_allocated(Path(snap.memory)))}, "
                  f"{snap.memory})" for snap in snapshots if snap.memory]
        if intent:
            takes.append("its unfinished snapshot operation (the record to finish or undo it)")
        if opts and opts.ha_enabled:
            takes.append(f"its HA protection (at most {opts.ha_max_restarts} restarts in "
                         f"{opts.ha_window_seconds}s)")
        if opts and opts.linked_to:
            takes.append(f"its link to {opts.linked_to}, the VM it is an instant clone of")
        if tags:
            takes.append(f"its tags: {', '.join(tags)}")
        takes += [f"its address {a.address} on network {a.network} ({a.nic}, {a.mac})"
                  for a in vms.networks.attachments(vm=name)]
        takes.append(f"not its {len(backups)} backup(s): they stay in the store, restorable"
                     if backups else "no backups: it has none")
        return name, takes, sum(_allocated(folder) for folder in folders)

    @staticmethod
    def _recycled_image(token: str, image: RbdDisk) -> str:
        return f".cairn-recycle-{token}-{image.image}"

    def set_aside(self, name: str) -> dict[str, Any]:
        vms = self.app.vms
        spec = self._deletable(name)   # again: it may have started since the preview
        leases = [lease.to_dict() for lease in vms.pools.leases(owner=name) if lease.nic is not None]
        token = uuid.uuid4().hex[:16]
        moved: list[tuple[str, str]] = []
        images: list[tuple[RbdDisk, RbdDisk]] = []
        try:
            for folder in vms.folders(spec):
                target = self._recycle_root(folder) / token / folder.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(folder, target)
                moved.append((str(folder), str(target)))
            for image in vms.pools.vm_images(spec):
                images.append((image, image.renamed(self._recycled_image(token, image))))
            rows = vms.take_out(name)
        except BaseException:
            for original, recycled in reversed(moved):
                os.rename(recycled, original)
                _remove_empty(Path(recycled).parent)
            for original_image, recycled_image in reversed(images):
                recycled_image.renamed(original_image.image)
            raise
        return {"name": name, "folders": [list(m) for m in moved], "leases": leases,
                "images": [[original.filename, recycled.filename] for original, recycled in images],
                "rows": {table: [_jsonable(row) for row in found] for table, found in rows.items()}}

    def put_back(self, payload: dict[str, Any]) -> None:
        name = payload["name"]
        vms = self.app.vms
        with self.app.catalog() as s:
            if s.get(VMRecord, name) is not None:
                raise ConflictError(f"VM {name} cannot come back: a VM of that name exists now "
                                    "(delete or rename that one first)")
        for nic in VMSpec.from_dict(payload["rows"]["vms"][0]["spec"]).nics:
            if (owner := vms.hardware.mac_owner(nic.mac)) is not None:
                raise ConflictError(f"VM {name} cannot come back: its NIC {nic.name}'s MAC {nic.mac} is VM "
                                    f"{owner}'s now (remove that NIC or give it another MAC first)")
        for original, recycled in payload["folders"]:
            if not Path(recycled).is_dir():
                raise ConflictError(f"VM {name} cannot come back: its files are gone from {recycled}")
            if Path(original).exists():
                raise ConflictError(f"VM {name} cannot come back: {original} exists now")
        for pool in sorted({lease["pool"] for lease in payload["leases"]}):
            try:
                vms.pools.address_pool(pool)
            except NotFoundError:
                raise ConflictError(f"VM {name} cannot come back: address pool {pool} of its network is "
                                    "gone (create the pool and the network again first)") from None
        images = [(_rbd(original), _rbd(recycled)) for original, recycled in payload.get("images", [])]
        for original_image, recycled_image in images:
            if not recycled_image.exists():
                raise ConflictError(f"VM {name} cannot come back: its {recycled_image.describe()} is gone")
            if original_image.exists():
                raise ConflictError(f"VM {name} cannot come back: {original_image.describe()} exists now")
        returned: list[tuple[str, str]] = []
        images_returned: list[tuple[RbdDisk, RbdDisk]] = []
        try:
            for original, recycled in payload["folders"]:
                _move_back(Path(recycled), Path(original))
                returned.append((original, recycled))
            for original_image, recycled_image in images:
                recycled_image.renamed(original_image.image)
                images_returned.append((original_image, recycled_image))
            spec = VMSpec.from_dict(payload["rows"]["vms"][0]["spec"])
            for disk in spec.disks:
                try:
                    backing_chain(disk.path)
                except ImageError as e:
                    raise ConflictError(f"VM {name} cannot come back: its disk {disk.name} does not open "
                                        f"(a file it reads from is gone?): {e}") from None
            with self.app.catalog.begin() as s:
                for record in VM_RECORDS:
                    for row in payload["rows"].get(record.__tablename__, []):
                        s.add(record(**_from_json(record, row)))
                s.flush()
                for lease in payload["leases"]:
                    self._lease_again(s, lease)
        except BaseException as e:
            self._undo_put_back(returned)
            for original_image, recycled_image in reversed(images_returned):
                original_image.renamed(recycled_image.image)
            if isinstance(e, IntegrityError):
                raise ConflictError(f"VM {name} cannot come back: the catalog changed meanwhile (a VM of "
                                    "that name created?); try again") from None
            raise
        vms.networks.refresh(name)
        for _, recycled in payload["folders"]:
            _remove_empty(Path(recycled).parent)

    def purge(self, payload: dict[str, Any]) -> None:
        recycled = [Path(r) for _, r in payload["folders"]]
        self.app.vms.remove_folders(recycled)
        for _, image in payload.get("images", []):
            _rbd(image).remove()
        for folder in recycled:
            _remove_empty(folder.parent)

    def _deletable(self, name: str) -> VMSpec:
        spec = self.app.vms.check_deletable(name).spec
        with self.app.catalog() as s:
            active = s.scalars(select(JobRecord.id).where(JobRecord.resource == f"vm:{name}",
                                                          JobRecord.state.in_(ACTIVE_STATES))).all()
        if active:
            raise ConflictError(f"VM {name} has {len(active)} queued or running job(s): wait for them or "
                                "cancel them first")
        return spec

    @staticmethod
    def _disk(vms: VMService, disk: str, path: str, folders: list[Path], images: list[RbdDisk]) -> str:
        if (remote := network_disk(path)) is not None:
            return (f"disk {disk} ({remote.describe()}" + (")" if remote in images else
                                                         ", which stays: no storage pool of Cairn's made it)"))
        if not Path(path).exists():
            return f"disk {disk} (its file {path} is missing)"
        chain = backing_chain(path)
        own = [Path(f) for f in chain if any(Path(f).is_relative_to(folder) for folder in folders)]
        line = f"disk {disk} ({human(sum(_allocated(f) for f in own))} allocated in {len(own)} file(s), {path})"
        base = next((vms.images.name_of(f) for f in chain[1:] if vms.images.name_of(f)), None)
        return line + (f"; not library image {base}, which it reads from: that stays" if base else "")

    def _recycle_root(self, folder: Path) -> Path:
        """<data dir>/recycle/vms, if on the folder's filesystem (a rename, no copy); otherwise
        a recycle folder next to it (a storage pool elsewhere, e.g. on NFS)."""
        data_dir = self.app.settings.data_dir
        if os.stat(folder).st_dev == os.stat(data_dir).st_dev:
            return data_dir / RECYCLE_DIR / "vms"
        return folder.parent / POOL_RECYCLE_DIR

    def _lease_again(self, s: Any, lease: dict[str, Any]) -> None:
        """The same address if it is still free, else the pool's next free one."""
        if s.get(AddressLeaseRecord, (lease["pool"], lease["address"])) is None:
            s.add(AddressLeaseRecord(pool=lease["pool"], address=lease["address"], owner=lease["owner"],
                                     nic=lease["nic"], mac=lease["mac"]))
            s.flush()
        else:
            self.app.vms.pools.allocate(lease["pool"], lease["owner"], nic=lease["nic"], mac=lease["mac"],
                                        session=s)

    @staticmethod
    def _undo_put_back(returned: list[tuple[str, str]]) -> None:
        for original, recycled in reversed(returned):
            _move_back(Path(original), Path(recycled))


def _rbd(path: str) -> RbdDisk:
    image = network_disk(path)
    assert isinstance(image, RbdDisk), path
    return image


def _allocated(path: Path) -> int:
    """Bytes a file, or every file under a folder, takes on disk."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _move_back(source: Path, target: Path) -> None:
    """Claim `target` as a new folder (as creating a VM does: a concurrent create of the same
    name fails, not this), then move `source`'s entries into it and remove `source`."""
    try:
        target.mkdir(parents=True)
    except FileExistsError:
        raise ConflictError(f"{target} exists now") from None
    for entry in source.iterdir():
        os.rename(entry, target / entry.name)
    source.rmdir()


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _from_json(record: type[Any], row: dict[str, Any]) -> dict[str, Any]:
    """A row's columns as stored in a payload, back to what the record takes (timestamps)."""
    types = {a.key: a.columns[0].type.python_type for a in sa_inspect(record).column_attrs}
    return {k: datetime.fromisoformat(v) if types.get(k) is datetime and isinstance(v, str) else v
            for k, v in row.items()}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None
