"""Who else reads a file: the one question every operation asks before it changes or removes one.

A VM's disk is a chain of qcow2 files, and the files low in a chain may belong to someone else:

  - an instant clone reads its source VM's disk files until its background stream has copied
    them (vmm/clone.py, "linked"; the catalog's clone link, VMOptionsRecord.linked_to, says
    whose clone it is);
  - a VM made on a library image, and a batch clone on an image cache, read that image for good;
  - a layer of a VM's snapshot tree keeps the backing file it had when it was frozen, even after
    the active layer above it stopped reading that file (a clone's stream copies only into its
    active layer), so every layer counts, not just the chain the VM opens next;
  - a VM in the recycle bin must open again when it is put back, so what it reads counts too.

An operation that would rewrite, resize, move or remove a file another VM reads is refused with
the remedy (VMService.require_unread): rewriting a base under a clone makes the clone read data
it never had, removing it makes the clone unopenable. The answer comes from the real chains
(vmm.images.backing_chain: the qcow2 headers, or `qemu-img info --backing-chain` for a chain
that is not plain; both also work while a VM runs), read every time: the clone link alone would
miss a VM made on any other image file, and it outlives the end of a stream until someone looks.
Reading the chains costs a few header reads per distinct chain start, so an answer takes longer
the more VMs and snapshot layers the appliance has (every start asks it): a price paid only by
operations that change files, never by a backup or a listing.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmm import ImageError, image_info
from vmm.images import backing_chain


@dataclass(frozen=True)
class ReadingVM:
    """A VM as a possible reader: the files its disks start from (active layers first, then
    every layer of its snapshot tree, then its CD-ROM) and the VM it is an instant clone of."""
    label: str                         # its name; a recycled one says so
    tops: list[tuple[str, str]]        # (disk, file)
    clone_of: str | None = None
    recycled: bool = False


@dataclass(frozen=True)
class Reader:
    """VM `vm`'s disk `disk` reads `file`, one of the files asked about."""
    vm: str
    disk: str
    file: str
    clone_of: str | None = None
    recycled: bool = False

    def remedy(self) -> str:
        if self.recycled:
            return f"purge {self.vm} from the recycle bin"
        if self.clone_of:
            return (f"wait for its stream to finish (it streams while it runs: `cairn vm start {self.vm}`; "
                    f"`cairn vm show {self.vm}` tells the progress) or delete {self.vm}")
        return f"delete {self.vm}"

    def describe(self) -> str:
        who = (f"VM {self.clone_of}'s instant clone {self.vm}" if self.clone_of
               else f"VM {self.vm}")
        return f"{who} still reads {self.file} (its {self.disk}): {self.remedy()}"


def find_readers(files: Iterable[str | os.PathLike[str]], vms: Iterable[ReadingVM]) -> list[Reader]:
    """Which of `vms` read any of `files`, one Reader per (VM, file)."""
    wanted = {os.path.realpath(f) for f in files}
    found: list[Reader] = []
    for vm in vms:
        reads = _files_read(vm.tops)
        for file in sorted(wanted & set(reads)):
            found.append(Reader(vm.label, reads[file], file, vm.clone_of, vm.recycled))
    return found


def refusal(doing: str, readers: Sequence[Reader], hint: str | None = None) -> str:
    """The error for an operation other VMs' reads forbid: who reads what, and what to do."""
    remedies = "; ".join([*(r.describe() for r in readers), *([hint] if hint else [])])
    return f"{doing} would change files other VMs read: {remedies}. Nothing was changed"


def _files_read(tops: list[tuple[str, str]]) -> dict[str, str]:
    """Every file the chains starting at `tops` read (real paths), each with the first disk
    found reading it. A chain read once covers every file below its start, so a layer already
    seen in an earlier chain is not read again."""
    reads: dict[str, str] = {}
    for disk, top in tops:
        if os.path.realpath(top) in reads or not os.path.exists(top):
            continue
        for file in _chain(top):
            reads.setdefault(os.path.realpath(file), disk)
    return reads


def _chain(top: str) -> list[str]:
    """The files a chain reads, top first. A chain broken further down (a file gone) still
    reads every file above the break, which must stay for it to be repaired."""
    try:
        return backing_chain(top)
    except ImageError:
        files: list[str] = []
        file: str | None = top
        while file and os.path.exists(file) and file not in files:
            files.append(file)
            try:
                file = image_info(file).get("full-backing-filename")
            except ImageError:
                break
        return files
