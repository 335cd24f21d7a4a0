"""Which disks a backup reads: the selection's rules, the disks never read, and where selections
are given (backup request, policy), without a VM."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance.backups.selection import DiskSelection
from appliance.errors import ConflictError
from appliance.jobs.params import BackupRequest
from appliance.policies.service import BackupPolicy
from vmm.hosts import HostDisk
from vmm.libvirt_xml import domain_disks

DOMAIN = """<domain type='qemu'><name>d</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/vda.qcow2'/>
    <backingStore type='file'><format type='qcow2'/><source file='/i/base.qcow2'/><backingStore/></backingStore>
    <target dev='vda' bus='virtio'/></disk>
  <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/data'/>
    <target dev='vdb' bus='virtio'/></disk>
  <disk type='network' device='disk'><driver name='qemu' type='raw'/>
    <source protocol='rbd' name='pool/img'><host name='mon1' port='6789'/></source><target dev='vdc' bus='virtio'/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/i/shared.raw'/>
    <target dev='vdd' bus='virtio'/><readonly/><shareable/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='/i/vde.qcow2'><dataStore type='file'><format type='raw'/><source file='/i/vde.raw'/></dataStore></source>
    <target dev='vde' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/i/x.iso'/><target dev='sda' bus='sata'/>
    <readonly/></disk>
  <disk type='file' device='floppy'><driver name='qemu' type='raw'/><target dev='fda' bus='fdc'/></disk>
  <disk type='block' device='lun'><driver name='qemu' type='raw'/><source dev='/dev/sdz'/><target dev='sdb' bus='scsi'/>
  </disk>
</devices></domain>"""


def test_disks_of_a_domain_as_they_are():
    disks = {d.target: d for d in domain_disks(DOMAIN)}
    assert disks["vda"] == HostDisk("vda", "/i/vda.qcow2", "qcow2", backing=("/i/base.qcow2",))
    assert (disks["vdb"].kind, disks["vdb"].path) == ("block", "/dev/vg/data")
    assert (disks["vdc"].kind, disks["vdc"].path) == ("network", "rbd://mon1:6789/pool/img")
    assert disks["vdd"].readonly and disks["vdd"].shareable
    assert disks["vde"].data_file == "/i/vde.raw" and "data-file" in disks["vde"].tags()
    assert [t for t, d in disks.items() if not d.holds_data] == ["sda", "fda"]   # a LUN holds data


def test_every_disk_that_holds_data_by_default_and_why_the_others_are_not():
    choice = DiskSelection().choose("domain d", domain_disks(DOMAIN))
    assert choice.names == ["vda", "vdb", "vdc", "vdd", "vde"]
    assert list(choice.left_out) == ["sda", "fda", "sdb"]
    assert choice.left_out["sda"].startswith("a cdrom") and choice.left_out["fda"].startswith("a floppy")
    assert "device='lun'" in choice.left_out["sdb"]


def test_include_then_exclude_by_name_pattern_or_kind():
    disks = domain_disks(DOMAIN)
    assert DiskSelection(include=("kind:qcow2",)).choose("d", disks).names == ["vda", "vde"]
    assert DiskSelection(exclude=("kind:network", "kind:readonly")).choose("d", disks).names == ["vda", "vdb", "vde"]
    chosen = DiskSelection(include=("vd[a-c]",), exclude=("kind:block",)).choose("d", disks)
    assert chosen.names == ["vda", "vdc"] and chosen.left_out["vdb"] == "excluded (kind:block)"
    assert chosen.left_out["vdd"] == "not included (include: vd[a-c])"
    # A selector that matches nothing is noted: in a policy over many VMs it is no mistake.
    assert DiskSelection(exclude=("vdz",)).choose("d", disks).notes[-1] == "exclude 'vdz' matches no disk of d"
    # A selection that leaves nothing to read is.
    with pytest.raises(ConflictError, match="d has no disk to back up"):
        DiskSelection(include=("sda",)).choose("d", disks)


def test_bad_selectors_are_refused_where_they_are_given():
    with pytest.raises(ValueError, match="the kinds are"):
        DiskSelection(include=("kind:tape",))
    with pytest.raises(ValidationError, match="the kinds are"):
        BackupRequest(exclude=["kind:tape"])
    with pytest.raises(ValidationError, match="name pattern or kind"):
        BackupPolicy(name="p", schedule="0 2 * * *", vms=["*"], include=[" "])
    request = BackupRequest(include=["vda"], exclude=["kind:raw"])
    assert request.options().disks == DiskSelection(("vda",), ("kind:raw",))
