"""Defining a new VM like one that was backed up: same hardware, its own name, disks and MACs."""
from __future__ import annotations

from dataclasses import replace

from appliance.errors import ConflictError
from appliance.vms.service import VMOptions, VMService
from dedup import BackupManifest
from vmm import VMSpec
from vmm.spec import random_mac


def backed_up_spec(manifest: BackupManifest) -> VMSpec:
    """The VM definition a backup carries."""
    if not manifest.vm_definition:
        raise ConflictError(f"backup {manifest.backup_id} carries no VM definition; restore its disks instead")
    return VMSpec.from_dict(manifest.vm_definition)


def define_like(vms: VMService, name: str, manifest: BackupManifest,
                storage_pool: str | None = None) -> tuple[VMSpec, VMSpec]:
    """(the backed-up definition, the new VM `name` defined like it with blank disks of the
    backed-up sizes, in the same order, in `storage_pool` if given). New MACs, so both can run at
    once; no ISO. Disks the backup left out (its disk selection) are not in either."""
    backed_up = backed_up_spec(manifest)
    in_backup = {d.name for d in manifest.disks}
    backed_up = replace(backed_up, disks=[d for d in backed_up.disks if d.name in in_backup])
    options = VMOptions(profile=backed_up.profile, nics=[replace(n, mac=random_mac()) for n in backed_up.nics],
                        boot=[b for b in backed_up.boot if b != "cdrom"], vnc=backed_up.vnc,
                         storage_pool=storage_pool)
    spec = vms.create(name, [manifest.disk(d.name).size for d in backed_up.disks], memory_mib=backed_up.memory_mib,
                      vcpus=backed_up.vcpus, kernel=backed_up.kernel, initrd=backed_up.initrd,
                      append=backed_up.append, options=options)
    return backed_up, spec
