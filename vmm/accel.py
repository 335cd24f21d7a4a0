"""Pick the accelerator: KVM when it can really run a guest, TCG otherwise."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import Literal

from .errors import AccelError

KVM_DEVICE = "/dev/kvm"
# kvm_pvm is a nested paravirtual KVM: /dev/kvm works, but a stock Linux kernel never boots
# under it (it stalls in the decompressor or dies on emulation failures), so it must not count.
KVM_PVM_MODULE = "/sys/module/kvm_pvm"
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12

AccelName = Literal["kvm", "tcg"]
ACCEL_NAMES: tuple[AccelName, ...] = ("kvm", "tcg")


@dataclass(frozen=True)
class Accel:
    name: AccelName
    reason: str

    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def detect_accel() -> Accel:
    """KVM if /dev/kvm answers the KVM API and is not kvm_pvm; CAIRN_ACCEL=tcg|kvm overrides."""
    forced = os.environ.get("CAIRN_ACCEL", "").strip()
    if forced:
        if forced not in ACCEL_NAMES:
            raise AccelError(f"CAIRN_ACCEL={forced!r}: expected 'kvm' or 'tcg'")
        return Accel(forced, f"forced by CAIRN_ACCEL={forced}")
    if os.path.exists(KVM_PVM_MODULE):
        return Accel("tcg", f"{KVM_DEVICE} is provided by kvm_pvm (nested paravirtual KVM, "
                            f"{KVM_PVM_MODULE} exists), which cannot boot a stock guest kernel")
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return Accel("tcg", f"{KVM_DEVICE} is not usable: {err.strerror}")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as err:
        return Accel("tcg", f"{KVM_DEVICE} does not answer KVM_GET_API_VERSION: {err.strerror}")
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return Accel("tcg", f"{KVM_DEVICE} reports KVM API version {version}, "
                            f"expected {KVM_API_VERSION}")
    return Accel("kvm", f"{KVM_DEVICE} is usable (KVM API version {version})")
