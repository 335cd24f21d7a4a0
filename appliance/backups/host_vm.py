"""Backing up a VM of a registered host, whichever kind the host is."""
from __future__ import annotations

from appliance.context import Appliance

from .host import HostBackups
from .libvirt import LibvirtBackupService
from .options import Progress
from .service import BackupResult
from .ssh import RemoteBackupService


def back_up_host_vm(appliance: Appliance, host: str, vm: str, full: bool = False,
                    progress: Progress | None = None) -> BackupResult:
    """Incremental from the VM's last backup unless `full`; recorded as `<vm>@<host>`."""
    backups = HostBackups(appliance.settings, appliance.catalog, appliance.store)
    kind = appliance.hosts.get(host).kind
    service = (LibvirtBackupService if kind == "libvirt" else RemoteBackupService)(backups, appliance.hosts)
    return service.create(host, vm, full, progress)
