"""VM definitions beyond disks: OS profiles, NICs, cdrom, boot order, VNC; what QEMU gets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmm import Accel, DiskSpec, NicSpec, VMSpec, VMSpecError
from vmm.cmdline import build_command
from vmm.rundir import RunDir

RUNDIR = RunDir(Path("/run/cairn/vm1"))


def command(spec: VMSpec) -> list[str]:
    spec.validate()
    return build_command("qemu-system-x86_64", spec, Accel("tcg", "test"), RUNDIR)


def args_of(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]


def full_spec(**changes) -> VMSpec:
    base = {"name": "vm1", "disks": [DiskSpec("vda", "/img/a.qcow2"), DiskSpec("vdb", "/img/b.qcow2")],
            "nics": [NicSpec("net0", mac="52:54:00:00:00:01"),
                     NicSpec("net1", "bridge", "52:54:00:00:00:02", bridge="br0")],
            "cdrom": "/iso/install.iso", "boot": ["cdrom", "disk", "network"], "vnc": True}
    return VMSpec(**{**base, **changes})


def test_modern_profile_uses_virtio_and_boot_order_marks_first_devices():
    cmd = command(full_spec())
    devices = args_of(cmd, "-device")
    assert "virtio-blk-pci,drive=vda,id=vda-dev,share-rw=on,bootindex=2" in devices
    assert "virtio-blk-pci,drive=vdb,id=vdb-dev,share-rw=on" in devices
    assert "ide-cd,drive=cdrom,id=cdrom-dev,bus=ide.0,bootindex=1" in devices
    assert "virtio-net-pci,netdev=net0-nd,id=net0,mac=52:54:00:00:00:01,bootindex=3" in devices
    assert "virtio-net-pci,netdev=net1-nd,id=net1,mac=52:54:00:00:00:02" in devices
    assert args_of(cmd, "-netdev") == ["user,id=net0-nd", "bridge,id=net1-nd,br=br0"]
    cdrom = [json.loads(b) for b in args_of(cmd, "-blockdev") if "cdrom" in b]
    assert all(node["read-only"] for node in cdrom)
    assert args_of(cmd, "-vnc") == ["unix:/run/cairn/vm1/vnc.sock,password=on"]
    assert not any("password" in a and "=on" not in a for a in cmd)     # never on the command line


def test_legacy_profile_uses_ide_and_e1000_with_explicit_addresses():
    cmd = command(full_spec(profile="legacy", nics=[NicSpec("net0", "tap", "52:54:00:00:00:03", tap="tap7")]))
    devices = args_of(cmd, "-device")
    assert "ide-hd,drive=vda,id=vda-dev,share-rw=on,bus=ide.0,bootindex=2" in devices
    assert "ide-hd,drive=vdb,id=vdb-dev,share-rw=on,bus=ide.1" in devices
    assert "ide-cd,drive=cdrom,id=cdrom-dev,bus=ide.2,bootindex=1" in devices
    assert "e1000,netdev=net0-nd,id=net0,mac=52:54:00:00:00:03,bootindex=3" in devices
    assert args_of(cmd, "-netdev") == ["tap,id=net0-nd,ifname=tap7,script=no,downscript=no"]
    pc = command(full_spec(profile="legacy", machine="pc", nics=[], boot=["cdrom"]))
    assert "ide-cd,drive=cdrom,id=cdrom-dev,bus=ide.1,unit=0,bootindex=1" in args_of(pc, "-device")


def test_round_trip_and_clear_errors():
    spec = full_spec()
    assert VMSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert VMSpec.from_dict({"name": "old", "disks": [{"name": "vda", "path": "/a"}]}).profile == "modern"

    def invalid(message: str, **changes):
        with pytest.raises(VMSpecError, match=message):
            VMSpec.from_dict({**spec.to_dict(), **changes})

    invalid("unknown OS profile 'win95'", profile="win95")
    invalid("invalid NIC name", nics=[{"name": "eth0"}])
    invalid("mode 'macvtap'", nics=[{"name": "net0", "mode": "macvtap"}])
    invalid("needs bridge=", nics=[{"name": "net0", "mode": "bridge"}])
    invalid("tap is only for mode tap", nics=[{"name": "net0", "tap": "tap0"}])
    invalid("locally administered", nics=[{"name": "net0", "mac": "00:16:3e:00:00:01"}])
    invalid("duplicate MAC", nics=[{"name": "net0", "mac": "52:54:00:00:00:01"},
                                   {"name": "net1", "mac": "52:54:00:00:00:01"}])
    invalid("boot device 'floppy'", boot=["floppy"])
    invalid("without repeats", boot=["disk", "disk"])
    invalid("boot from cdrom, but the VM has none", cdrom=None)
    invalid("cdrom: path '.*' must be absolute", cdrom="install.iso", boot=[])
    invalid("room for 4 IDE devices", profile="legacy", machine="pc",
            disks=[{"name": f"vd{c}", "path": f"/{c}"} for c in "abcd"])
    invalid("vnc must be true or false", vnc="yes")
