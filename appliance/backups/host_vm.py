"""Backing up a VM of a registered host, whichever kind the host is."""
from __future__ import annotations

from appliance.context import Appliance
from appliance.errors import ConflictError

from .host import HostBackups
from .libvirt import LibvirtBackupService
from .options import DEFAULT_FULL_EVERY, Progress
from .selection import DiskSelection
from .service import BackupResult
from .ssh import RemoteBackupService


def back_up_host_vm(appliance: Appliance, host: str, vm: str, full: bool = False,
                    progress: Progress | None = None, selection: DiskSelection | None = None,
                    full_every: int = DEFAULT_FULL_EVERY) -> BackupResult:
    """Incremental from the VM's last backup unless `full`; recorded as `<vm>@<host>`. Every
    disk that holds data is read unless `selection` says otherwise (libvirt hosts only)."""
    backups = HostBackups(appliance.settings, appliance.catalog, appliance.store)
    if appliance.hosts.get(host).kind == "libvirt":
        return LibvirtBackupService(backups, appliance.hosts).create(host, vm, full, progress, selection, full_every)
    if (selection and selection != DiskSelection()) or full_every != DEFAULT_FULL_EVERY:
        raise ConflictError(f"host {host} is an ssh host: its VMs are backed up whole, every disk, as the agent "
                            "runs them")
    return RemoteBackupService(backups, appliance.hosts).create(host, vm, full, progress)
