"""Fencing: proof that a VM no longer runs on a host before it starts on another one.

A VM whose host stops answering may still be running there (the network failed, not the
host). Starting it elsewhere then would have two QEMUs write one disk. So HA restarts it only
with one of these proofs (FenceProof):

  QEMU_GONE   the host answered, and the VM's QEMU there is gone;
  LOCKS_FREE  the host does not answer, and no process holds the write lock of any of the
              VM's disks.

The second rests on QEMU's image locking: every QEMU locks the images it opens (OFD locks on
bytes of the file, block/file-posix.c), a running VM holding its disks' "write" lock, and an
open that will not share "write" fails while any QEMU may write the image. `qemu-img info`
without -U is such an open, and it only reads the header. On shared storage the lock lives
where the disks live: the kernel, for a directory two hosts see; the NFS server, for NFSv4
(it releases a dead client's locks once its lease expires, ~90 s, and that client cannot
write again without them); a cluster filesystem's lock manager. Storage whose locks do not
span hosts (NFSv3 mounted with nolock) proves nothing, and fencing must not rely on it.

The probe and the restart are not one step, but the restart's QEMU takes the same locks
before it runs the guest: a QEMU that came back in between makes the restart fail, never run
twice.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from .errors import ImageError, VMError
from .spec import DiskSpec

# What qemu-img says when another process holds a lock it needs (block/file-posix.c).
_LOCK_REFUSAL = "Failed to get"


class FenceProof(Enum):
    QEMU_GONE = "qemu-gone"
    LOCKS_FREE = "locks-free"


@dataclass(frozen=True)
class Fenced:
    """Where the VM ran, and why it cannot be running there any more."""

    vm: str
    host: str
    proof: FenceProof

    def describe(self) -> str:
        if self.proof is FenceProof.QEMU_GONE:
            return f"its QEMU on {self.host} is gone (the host answered)"
        return f"host {self.host} does not answer and no process holds a write lock on its disks"


class FenceError(VMError):
    """No proof yet that the VM stopped on its host: it must not start elsewhere."""

    def __init__(self, vm: str, host: str, held: Sequence[str], reason: str = ""):
        why = reason or (f"a process still holds the write lock of {', '.join(held)} (its QEMU on "
                         f"{host} may still run)")
        super().__init__(f"VM {vm!r} cannot be fenced off host {host}, which does not answer: {why}; "
                         f"it is not started elsewhere until the lock is released (the host's QEMU "
                         f"ends or its storage lease expires) or the host answers again")
        self.vm = vm
        self.host = host
        self.held = tuple(held)


def held_disks(disks: Iterable[DiskSpec]) -> list[str]:
    """The images of `disks` whose write lock a process holds right now; ImageError if an
    image cannot be opened for another reason (missing, unreadable): that proves nothing."""
    held = []
    for disk in disks:
        try:
            done = subprocess.run(["qemu-img", "info", "-f", disk.format, "--output=json", disk.path],
                                  check=False, capture_output=True, text=True)
        except FileNotFoundError as err:
            raise ImageError("cannot probe image locks: qemu-img is not installed") from err
        if done.returncode == 0:
            continue
        if _LOCK_REFUSAL in done.stderr and "lock" in done.stderr:
            held.append(disk.path)
        else:
            raise ImageError(f"cannot probe the lock of {disk.path}", stderr=done.stderr)
    return held
