"""Backing up a VM of a registered host, whichever kind the host is."""
from __future__ import annotations

from .backups import BackupResult, Progress
from .context import Appliance
from .host_backups import HostBackups
from .libvirt_backups import LibvirtBackupService
from .remote_backups import RemoteBackupService


def back_up_host_vm(appliance: Appliance, host: str, vm: str, full: bool = False,
                    progress: Progress | None = None) -> BackupResult:
    """Incremental from the VM's last backup unless `full`; recorded as `<vm>@<host>`."""
    backups = HostBackups(appliance.settings, appliance.catalog, appliance.store)
    kind = appliance.hosts.get(host).kind
    service = (LibvirtBackupService if kind == "libvirt" else RemoteBackupService)(backups, appliance.hosts)
    return service.create(host, vm, full, progress)
