"""libvirt's checkpoints of a domain, kept in step with Cairn's ledger.

A libvirt checkpoint is two things: a persistent dirty bitmap named after it in each of its
disks' qcow2 images (QEMU keeps it recording), and libvirt's metadata saying which disks have
one. The bitmaps travel with the images; the metadata lives in libvirt's state directory, and
is lost when a domain is undefined and defined again from its XML, when libvirt's state is
lost, or when the domain moves to another host (virtnbdbackup's most reported trouble). It
falls out of step the other way when a disk's image is restored or replaced: the metadata
says "bitmap", the new image has none, and libvirt refuses any incremental from it.

So before a checkpoint is used, its bitmaps are proven, disk by disk:
- libvirt still has it: its SIZE description gives a size for each disk whose bitmap QEMU
  holds, intact, on the disk's chain; a disk without one has lost it;
- libvirt lost it: it is redefined from Cairn's ledger with REDEFINE_VALIDATE, which makes
  libvirt check every disk's bitmap (present, persistent, recording, not inconsistent); a disk
  that fails is left out of the redefinition and named in the error, so the others are tried
  again without it.
Either way the checkpoint is then redefined to cover exactly the disks that hold its bitmap,
so that deleting it later (which removes its bitmaps) does not fail on the missing ones.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime

import libvirt

from .points import CHECKPOINT_PREFIX

REDEFINE = libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
VALIDATE = libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
# "missing or broken bitmap 'cairn-...' for disk 'vdb'" (libvirt's qemu_checkpoint.c)
_BROKEN_DISK = re.compile(r"for disk '([^']+)'")


def names(dom: libvirt.virDomain) -> list[str]:
    return [c.getName() for c in dom.listAllCheckpoints(0)]


def cairns(dom: libvirt.virDomain) -> list[str]:
    return sorted(n for n in names(dom) if n.startswith(CHECKPOINT_PREFIX))


def checkpoint_xml(name: str, bitmap_disks: Iterable[str], other_disks: Iterable[str] = (),
                   created: int | None = None) -> str:
    """A <domaincheckpoint>: `bitmap_disks` get its bitmap, `other_disks` none. `created`
    (seconds since the epoch) makes it a definition for REDEFINE, which requires one."""
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    if created is not None:
        ET.SubElement(root, "creationTime").text = str(created)
    disks = ET.SubElement(root, "disks")
    for target in bitmap_disks:
        ET.SubElement(disks, "disk", name=target, checkpoint="bitmap", bitmap=name)
    for target in other_disks:
        ET.SubElement(disks, "disk", name=target, checkpoint="no")
    return ET.tostring(root, encoding="unicode")


def created_at(name: str) -> int:
    """When a checkpoint of Cairn's was made: its name carries the backup id, which begins with
    the backup's UTC start (cairn-YYYYMMDDTHHMMSSZ-xxxx)."""
    stamp = name.removeprefix(CHECKPOINT_PREFIX).split("-", 1)[0]
    try:
        return int(datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return int(datetime.now(UTC).timestamp())


def intact_disks(dom: libvirt.virDomain, name: str) -> tuple[set[str], set[str]]:
    """(disks whose bitmap of checkpoint `name` QEMU holds intact, disks libvirt says have one
    but which lost it). The SIZE description computes each disk's changes from its bitmap and
    leaves out the size of a disk without one."""
    desc = ET.fromstring(dom.checkpointLookupByName(name, 0).getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_SIZE))
    with_bitmap = {str(d.get("name")): d.get("size") is not None
                   for d in desc.iterfind("./disks/disk") if d.get("checkpoint") == "bitmap"}
    return {d for d, ok in with_bitmap.items() if ok}, {d for d, ok in with_bitmap.items() if not ok}


def redefine(dom: libvirt.virDomain, name: str, disks: Iterable[str]) -> tuple[set[str], dict[str, str]]:
    """(Re)define checkpoint `name` over those of `disks` whose bitmap libvirt proves intact.
    Returns (the disks it covers, disk -> why it was left out). Covers nothing, and defines
    nothing, if no disk's bitmap is intact."""
    remaining, failed = list(disks), dict[str, str]()
    while remaining:
        try:
            dom.checkpointCreateXML(checkpoint_xml(name, remaining, created=created_at(name)), REDEFINE | VALIDATE)
            return set(remaining), failed
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_CHECKPOINT_INCONSISTENT:
                raise
            found = _BROKEN_DISK.search(e.get_error_message() or "")
            broken = found.group(1) if found and found.group(1) in remaining else None
            if broken is None:   # libvirt did not say which: trust none
                failed.update(dict.fromkeys(remaining, e.get_error_message()))
                return set(), failed
            failed[broken] = e.get_error_message()
            remaining.remove(broken)
    return set(), failed


def delete(dom: libvirt.virDomain, name: str) -> str | None:
    """Delete the checkpoint and its bitmaps; a checkpoint that is already gone is fine.
    Returns a note if some of its bitmaps could not be found (then only they are skipped)."""
    try:
        checkpoint = dom.checkpointLookupByName(name, 0)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
            return None
        raise
    try:
        checkpoint.delete(0)
        return None
    except libvirt.libvirtError:
        # A disk lost its bitmap (its image was replaced) and libvirt refuses to delete what it
        # cannot find: narrow the checkpoint to the disks that still have theirs, then delete.
        intact, lost = intact_disks(dom, name)
        if not lost:
            raise
        if intact:
            dom.checkpointCreateXML(checkpoint_xml(name, sorted(intact), created=created_at(name)), REDEFINE)
            dom.checkpointLookupByName(name, 0).delete(0)
        else:
            dom.checkpointLookupByName(name, 0).delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        return f"checkpoint {name}: its bitmap was already gone from {', '.join(sorted(lost))}"
