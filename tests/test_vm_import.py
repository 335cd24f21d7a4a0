"""`cairn vm import`: a stopped libvirt domain, or a stopped QEMU's command line, becomes a Cairn
VM that runs from the same disks; what cannot be carried over is refused or noted."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest
from backup_helpers import run, wait_serial
from guest.harness import MiB
from libvirt_helpers import DiskDef, libvirt_guest
from libvirtd_server import libvirtd  # noqa: F401  (fixture)

from appliance.errors import ConflictError
from appliance.vms.imports import VMImports
from vmm import create_disk
from vmm.errors import DomainXMLError
from vmm.imports import ImportRefusedError, from_command_line, from_domain

HOST = "kvm1"
CAIRN = str(Path(sys.executable).with_name("cairn"))


def imports(appliance) -> VMImports:
    return VMImports(appliance.vms, appliance.hosts)


def boots(appliance, name: str) -> None:
    run(appliance.vms.start(name))
    try:
        wait_serial(appliance, name, "CAIRN: READY")
    finally:
        run(appliance.vms.stop(name, force=True))


@pytest.mark.slow
def test_a_libvirt_domain_runs_as_a_cairn_vm_from_its_disks(appliance, libvirtd, guest_kernel):  # noqa: F811
    appliance.hosts.add(HOST, libvirtd.uri, libvirt_dir=str(libvirtd.lib_dir))
    disks = (DiskDef("vda"), DiskDef("vdb", 64 * MiB, format="raw"), DiskDef("sda", 4 * MiB, format="raw",
                                                                             device="cdrom"))
    with libvirt_guest(libvirtd, "legacy", guest_kernel, disks=disks) as guest:
        with pytest.raises(ConflictError, match="shut it down"):
            imports(appliance).from_libvirt(HOST, "legacy")
        guest.dom.destroy()
        imported = imports(appliance).from_libvirt(HOST, "legacy", name="taken")
        spec = imported.spec
        assert [(d.name, d.path, d.format) for d in spec.disks] == [
            ("vda", str(guest.files["vda"]), "qcow2"), ("vdb", str(guest.files["vdb"]), "raw")]
        assert spec.cdrom == str(guest.files["sda"]) and spec.profile == "modern" and spec.memory_mib == 256
        assert any("stays defined in libvirt" in n for n in imported.notes), imported.notes
        with pytest.raises(ConflictError, match="already exists"):
            imports(appliance).from_libvirt(HOST, "legacy", name="taken")
        boots(appliance, "taken")
        # The disk is the domain's: what the guest wrote at boot under Cairn is in its image.
        pattern = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x43 0 1", str(guest.files["vda"])],
                                 capture_output=True, text=True)
        assert pattern.returncode == 0 and "1 bytes" in pattern.stdout, pattern.stdout + pattern.stderr

        # The CLI, and --undefine: libvirt forgets the domain, its disks stay.
        done = subprocess.run([CAIRN, "vm", "import", "--host", HOST, "--domain", "legacy", "--name", "again",
                               "--undefine"], env={**os.environ, "CAIRN_DATA_DIR": str(appliance.settings.data_dir)},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "VM again imported" in done.stdout and "was undefined in libvirt" in done.stdout
        with pytest.raises(libvirt.libvirtError):
            libvirt.open(libvirtd.uri).lookupByName("legacy")
        assert guest.files["vda"].exists()


def test_read_only_disks_and_uefi_are_refused(appliance, libvirtd, guest_kernel):  # noqa: F811
    appliance.hosts.add(HOST, libvirtd.uri)
    disks = (DiskDef("vda"), DiskDef("vdb", 64 * MiB, format="raw", readonly=True))
    with (libvirt_guest(libvirtd, "readonly", guest_kernel, disks=disks, start=False),
          pytest.raises(ImportRefusedError, match="vdb is read-only")):
        imports(appliance).from_libvirt(HOST, "readonly")
    assert appliance.vms.list() == []


def test_a_qemu_command_line_runs_as_a_cairn_vm(appliance, guest_kernel, tmp_path):
    vda, vdb = tmp_path / "a.qcow2", tmp_path / "b.img"
    create_disk(vda, 256 * MiB)
    with vdb.open("wb") as f:
        f.truncate(64 * MiB)
    command = (f"qemu-system-x86_64 -name guest=hand,debug-threads=on -machine q35,accel=kvm -enable-kvm -m 256M "
               f"-smp 1 -cpu host -kernel {guest_kernel.kernel} -initrd {guest_kernel.initrd} "
               f"-append 'console=ttyS0 quiet cairn.mode=idle' "
               f"-drive file={vda},format=qcow2,if=virtio -drive file={vdb},format=raw,if=virtio "
               "-netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=00:50:56:01:02:03 -serial stdio -frobnicate")
    imported = imports(appliance).from_command_line(command)
    spec = imported.spec
    assert (spec.name, spec.memory_mib, spec.machine) == ("hand", 256, "q35")
    assert [(d.name, d.path, d.format) for d in spec.disks] == [("vda", str(vda), "qcow2"), ("vdb", str(vdb), "raw")]
    assert spec.append == "console=ttyS0 quiet cairn.mode=idle" and len(spec.nics) == 1
    notes = "\n".join(imported.notes)
    assert "MAC 00:50:56:01:02:03 is not a locally administered one" in notes, notes
    assert "not understood, not carried over: -frobnicate" in notes and "-cpu" in notes, notes
    boots(appliance, "hand")

    # Its disks in use by a running QEMU: refused. A disk whose format is not the one given: refused.
    run(appliance.vms.start("hand"))
    try:
        with pytest.raises(ConflictError, match="in use by a running QEMU"):
            imports(appliance).from_command_line(command, name="twice")
    finally:
        run(appliance.vms.stop("hand", force=True))
    with pytest.raises(ConflictError, match="holds qcow2, not raw"):
        imports(appliance).from_command_line(command.replace("format=qcow2", "format=raw"), name="wrong")
    with pytest.raises(ImportRefusedError, match="-bios"):
        from_command_line(command + " -bios /usr/share/OVMF/OVMF_CODE.fd")
    assert [v.spec.name for v in appliance.vms.list()] == ["hand"]


def test_a_definition_missing_what_libvirt_always_writes_or_a_bad_size_is_refused_clearly():
    disk = "<disk type='file' device='disk'><driver type='qcow2'/><target dev='vda' bus='virtio'/>{}</disk>"
    domain = ("<domain type='kvm'><name>odd</name><memory unit='{}'>{}</memory>{}"
              "<devices>{}</devices></domain>")
    bios = "<os><type machine='q35'>hvm</type></os>"
    with pytest.raises(DomainXMLError, match="no os in its <domain>"):
        from_domain(domain.format("KiB", "524288", "", ""))
    with pytest.raises(DomainXMLError, match="no target in its <disk>"):
        from_domain(domain.format("KiB", "524288", bios, "<disk type='file'><source file='/i/a.qcow2'/></disk>"))
    with pytest.raises(ImportRefusedError, match="disk vda has no source"):
        from_domain(domain.format("KiB", "524288", bios, disk.format("")))
    with pytest.raises(ImportRefusedError, match="memory size 'lots' is not a whole number"):
        from_domain(domain.format("KiB", "lots", bios, disk.format("<source file='/i/a.qcow2'/>")))
    assert from_domain(domain.format("KiB", "524288", bios, disk.format("<source file='/i/a.qcow2'/>"))
                       ).spec.memory_mib == 512
    with pytest.raises(ImportRefusedError, match="-m lots: give the memory as a whole number"):
        from_command_line("qemu-system-x86_64 -name odd -m lots -drive file=/i/a.qcow2,format=qcow2")
