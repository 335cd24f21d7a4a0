"""What an export hands out: one disk at one instant, and how its change tracking stands."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class DiskPoint:
    disk: str
    size: int
    uri: str
    # The checkpoint bitmap the export publishes; None means the disk must be read in full.
    since: str | None
    # The bitmap that starts recording at this instant; None where the format cannot keep one.
    checkpoint: str | None = None
    # Why an incremental was asked for but a full read is needed (recorded on the backup).
    fallback_reason: str | None = None
    # Where the new checkpoint lives: the disk's active layer file and, in a running VM, its node.
    checkpoint_file: str | None = None
    checkpoint_node: str | None = None
    # A raw image the point's data may be read from directly, which nothing writes to while the
    # export runs (a stopped VM's: the export holds QEMU's lock on it). None: read the export.
    raw_file: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint bitmap as the catalog's ledger knows it: its name and the image file
    (the disk's active layer then) it was created on."""

    bitmap: str
    file: str


def backing_files(image: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
    """The disk's chain of image files, top first, from QEMU's ImageInfo: query-block's nested
    `image`, or the list `qemu-img info --backing-chain --output=json` prints."""
    infos = list(image) if isinstance(image, list) else [image]
    while "backing-image" in infos[-1]:
        infos.append(infos[-1]["backing-image"])
    return [os.path.realpath(i["filename"]) for i in infos]


def bitmap_problem(bitmaps: dict[str, dict], name: str, persistent: bool = True) -> str | None:
    """Why bitmap `name` cannot serve as the base of an incremental, or None if it can.

    `bitmaps` maps names to {"recording": bool, "inconsistent": bool, "busy": bool, "persistent": bool}.
    Cairn's bitmaps are persistent, except on images that cannot store one (raw: `persistent`
    False), where QEMU keeps them in memory while it runs.
    """
    info = bitmaps.get(name)
    if info is None:
        return f"checkpoint bitmap {name} is missing"
    if info.get("inconsistent"):
        return f"checkpoint bitmap {name} is inconsistent (QEMU did not close the image cleanly)"
    if info.get("busy"):
        return f"checkpoint bitmap {name} is in use by another operation"
    if not info.get("recording", True):
        return f"checkpoint bitmap {name} is not recording"
    if persistent and not info.get("persistent", True):
        return f"checkpoint bitmap {name} is not persistent (not one Cairn made)"
    return None


def chain_problem(chain: list[str], checkpoint: Checkpoint) -> str | None:
    """Why the active layer's bitmap may not continue `checkpoint`, given the disk's chain of
    files (top first).

    Snapshots carry the bitmap up to each new active layer, so the layer the checkpoint was
    made on is the active one or below it. If it left the chain, a commit or pull merged it
    away (deleting its file; the bitmap was carried), unless its file is still there: then
    the disk moved to another branch or image, and a bitmap of the same name there says
    nothing about the writes since the checkpoint.
    """
    created_on = os.path.realpath(checkpoint.file)
    if created_on in chain or not os.path.exists(created_on):
        return None
    return (f"checkpoint {checkpoint.bitmap} was made on {created_on}, which the disk no longer uses "
            "(reverted or replaced)")


def checkpoint_problem(bitmaps: dict[str, dict], chain: list[str], checkpoint: Checkpoint,
                       persistent: bool = True) -> str | None:
    """Why the active layer (its `bitmaps`, its `chain` of files) cannot serve an incremental
    from `checkpoint`, or None if it can."""
    return bitmap_problem(bitmaps, checkpoint.bitmap, persistent) or chain_problem(chain, checkpoint)


CHECKPOINT_PREFIX = "cairn-"
# Dirty bitmaps Cairn creates track 4 KiB granules, a page, so scattered small writes cost an
# incremental what they changed (QEMU's default for qcow2 is the 64 KiB cluster: a 4 KiB write
# would be read and stored 16 times over). A bitmap costs one bit per granule, in QEMU's memory
# while the VM runs and in the qcow2 file: 4 KiB granules are 32 MiB per TiB. Beyond
# BITMAP_BYTES_CAP per bitmap the granule doubles (a 1 TiB disk: 8 KiB granules, 16 MiB;
# 4 TiB: 32 KiB) so a backup's two bitmaps (the frozen and the recording one) stay small.
MIN_GRANULARITY = 4 << 10
BITMAP_BYTES_CAP = 16 << 20


def bitmap_granularity(disk_size: int) -> int:
    """The granularity of every dirty bitmap Cairn creates on a disk of that size."""
    granularity = MIN_GRANULARITY
    while disk_size > granularity * BITMAP_BYTES_CAP * 8:
        granularity *= 2
    return granularity


@dataclass
class BitmapRepair:
    """What to do with the checkpoint bitmaps an interrupted backup left on a disk."""

    merge: list[str]          # orphans to fold into the base bitmap
    remove: list[str]         # orphans to drop (after merging)
    enable_base: bool         # the interrupted backup froze the base; merged, it is whole again

    @property
    def needed(self) -> bool:
        return bool(self.remove or self.enable_base)

    def describe(self, disk: str, base: str | None) -> str:
        if self.merge:
            return f"{disk}: folded checkpoint bitmaps of an interrupted backup ({', '.join(self.merge)}) into {base}"
        return f"{disk}: removed orphan checkpoint bitmaps ({', '.join(self.remove)})"


def plan_bitmap_repair(bitmaps: dict[str, dict], base: str | None) -> BitmapRepair:
    """Every Cairn bitmap on the active layer other than `base` is an orphan: an interrupted
    backup's (it froze `base` and started its own in one transaction) or one the ledger no
    longer trusts.

    The union of `base` and an interrupted backup's bitmap covers every write since `base` was
    made, so folding orphans back in makes `base` whole (merging more only makes the next read
    larger, never wrong); an inconsistent bitmap cannot be merged and is only removed. Without
    a usable base nothing is merged, and the next read is full anyway.
    """
    orphans = sorted(n for n in bitmaps if n.startswith(CHECKPOINT_PREFIX) and n != base)
    base_info = bitmaps.get(base) if base else None
    base_usable = base_info is not None and not base_info.get("inconsistent")
    merge = [n for n in orphans if base_usable and not bitmaps[n].get("inconsistent")]
    enable = bool(merge) and base_info is not None and not base_info.get("recording", True)
    return BitmapRepair(merge, orphans, enable)
