"""Who sees which VM (Nano's per-user/group resource visibility), and everything that follows it.

The rule, in one place:
  - an admin sees every VM;
  - anyone else sees a VM they own, a VM shared with one of their groups, and a VM with no
    owner (made by the local CLI, or before this rule existed: shared with everyone);
  - what derives from a VM follows it: its routes (/api/v1/vms/{name}/...), its backups (by
    vm_name: they keep the VM's access row after it is deleted), and the jobs and events whose
    resource is `vm:NAME`.
An invisible VM, backup or job answers 404, like a missing one.

The API applies it to every request (api/app.py's `visibility_guard`, an app-wide dependency after
authorization): requests naming a VM, a backup or a job in their path are checked before their
route runs.
What lists VMs or names them is narrowed where it is queried: SQL lists with `vm_visible`
(jobs, events) or `recycled_visible`, the services' lists with a `Seen` (seen.py: scheduling groups,
address leases and network attachments, policy previews, store stats), which also keeps a
caller from naming a VM they do not see in what they write (a scheduling group).
A VM's owner is a user: deleting the user leaves their VMs to admins and the VM's group, under
an owner name no user can take (users.deleted_owner), never to a new user given the same name.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, literal, or_, select, true
from sqlalchemy.orm import Session, sessionmaker

from appliance.backups.records import BackupRecord
from appliance.deletion.records import RecycledRecord
from appliance.errors import CairnError, ConflictError, NotFoundError
from appliance.jobs.records import JobRecord
from appliance.names import ACCOUNT
from appliance.vms.records import VMRecord

from .records import UserRecord, VMAccessRecord
from .roles import Role
from .seen import ALL, Seen

if TYPE_CHECKING:
    from .auth import Principal

VM_RESOURCE = "vm:"


def _hidden_condition(who: Principal) -> ColumnElement[bool]:
    """vm_access rows of VMs `who` may not see: owned by someone else, not shared with their groups."""
    others = and_(VMAccessRecord.owner.is_not(None), VMAccessRecord.owner != who.name)
    if not who.groups:
        return others
    return and_(others, or_(VMAccessRecord.group.is_(None), VMAccessRecord.group.not_in(who.groups)))


def hidden_vms(session: Session, who: Principal) -> set[str]:
    """Names of the VMs (existing or deleted, with their backups) that `who` may not see."""
    if who.role == Role.ADMIN:
        return set()
    return set(session.scalars(select(VMAccessRecord.vm_name).where(_hidden_condition(who))))


def visible_vms(session: Session, who: Principal) -> list[str]:
    """Names of the catalog's VMs that `who` sees."""
    hidden = hidden_vms(session, who)
    return [n for n in session.scalars(select(VMRecord.name).order_by(VMRecord.name)) if n not in hidden]


def vm_visible(column: Any, who: Principal, resource: bool = False) -> ColumnElement[bool]:
    """A SQL condition on `column` (a VM name, or with resource=True a job or event resource
    like "vm:web1"): true for the rows `who` may see."""
    if who.role == Role.ADMIN:
        return true()
    name = (literal(VM_RESOURCE) + VMAccessRecord.vm_name) if resource else VMAccessRecord.vm_name
    hidden = select(name).where(_hidden_condition(who))
    return or_(column.is_(None), column.not_in(hidden)) if resource else column.not_in(hidden)


def recycled_visible(who: Principal) -> ColumnElement[bool]:
    """A SQL condition on the recycle bin: a VM, or a backup, follows its VM; the rest is seen."""
    if who.role == Role.ADMIN:
        return true()
    hidden = select(VMAccessRecord.vm_name).where(_hidden_condition(who))
    vm_of_backup = RecycledRecord.payload["vm"].as_string()
    return or_(and_(RecycledRecord.kind == "vm", RecycledRecord.name.not_in(hidden)),
               and_(RecycledRecord.kind == "backup", or_(vm_of_backup.is_(None), vm_of_backup.not_in(hidden))),
               RecycledRecord.kind.not_in(("vm", "backup")))


class Visibility:
    """The checks, on one appliance's catalog."""

    def __init__(self, catalog: sessionmaker[Session], backup_vm: Callable[[str], str | None] | None = None):
        self.catalog = catalog
        # The VM of a backup the catalog does not know (found in the store alone), or None.
        self.backup_vm = backup_vm

    def hidden(self, who: Principal) -> set[str]:
        with self.catalog() as s:
            return hidden_vms(s, who)

    def seen(self, who: Principal) -> Seen:
        return ALL if who.role == Role.ADMIN else Seen(frozenset(self.hidden(who)))

    def sees_vm(self, who: Principal, name: str) -> bool:
        if who.role == Role.ADMIN:
            return True
        with self.catalog() as s:
            access = s.get(VMAccessRecord, name)
        return (access is None or access.owner is None or access.owner == who.name
                or (access.group is not None and access.group in who.groups))

    def sees_resource(self, who: Principal, resource: str | None) -> bool:
        """For a job's or event's resource: a `vm:NAME` one follows the VM; any other is seen."""
        if not resource or not resource.startswith(VM_RESOURCE):
            return True
        return self.sees_vm(who, resource[len(VM_RESOURCE):])

    def check_vm(self, who: Principal, name: str) -> None:
        if not self.sees_vm(who, name):
            raise NotFoundError(f"no VM named {name}")

    def check_backup(self, who: Principal, backup_id: str) -> None:
        if who.role == Role.ADMIN:
            return
        with self.catalog() as s:
            rec = s.get(BackupRecord, backup_id)
        vm = rec.vm_name if rec is not None else self.backup_vm(backup_id) if self.backup_vm else None
        if vm is not None and not self.sees_vm(who, vm):
            raise NotFoundError(f"no backup {backup_id}")

    def check_job(self, who: Principal, job_id: str) -> None:
        if who.role == Role.ADMIN:
            return
        with self.catalog() as s:
            rec = s.get(JobRecord, job_id)
        if rec is not None and not self.sees_resource(who, rec.resource):
            raise NotFoundError(f"no job {job_id}")

    # -- ownership ------------------------------------------------------------------------------

    def get(self, name: str) -> VMAccessRecord:
        with self.catalog() as s:
            return s.get(VMAccessRecord, name) or VMAccessRecord(vm_name=name, owner=None, group=None)

    def set(self, name: str, owner: str | None, group: str | None) -> VMAccessRecord:
        """The VM's owner and group; both None: shared with everyone."""
        if group is not None:
            ACCOUNT.check("group", group, CairnError)
        with self.catalog.begin() as s:
            if s.get(VMRecord, name) is None:
                raise NotFoundError(f"no VM named {name}")
            if owner is not None and s.scalar(select(UserRecord.id).where(UserRecord.name == owner)) is None:
                raise NotFoundError(f"no user named {owner}")
            access = s.get(VMAccessRecord, name) or VMAccessRecord(vm_name=name)
            access.owner, access.group = owner, group
            s.add(access)
        return access

    def claim(self, who: Principal, name: str) -> None:
        """Before `who` creates VM `name` through the API: refuse a name whose (deleted VM's)
        backups they may not see, since a new VM would inherit them."""
        if not self.sees_vm(who, name):
            raise ConflictError(f"the VM name {name} is taken")

    def own(self, who: Principal, name: str) -> None:
        """`who` made VM `name` through the API: they own it, shared with no group yet."""
        with self.catalog.begin() as s:
            access = s.get(VMAccessRecord, name) or VMAccessRecord(vm_name=name)
            access.owner, access.group = who.name, None
            s.add(access)


def visibility(appliance: Any) -> Visibility:
    def backup_vm(backup_id: str) -> str | None:
        from dedup import StoreError

        try:
            return appliance.store.get_backup(backup_id).vm
        except (StoreError, OSError, ValueError):   # not in the store either: the route answers for itself
            return None
    return Visibility(appliance.catalog, backup_vm)
