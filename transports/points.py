"""What an export hands out: one disk at one instant, and how its change tracking stands."""
from __future__ import annotations

from dataclasses import dataclass


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


def bitmap_problem(bitmaps: dict[str, dict], name: str) -> str | None:
    """Why bitmap `name` cannot serve as the base of an incremental, or None if it can.

    `bitmaps` maps names to {"recording": bool, "inconsistent": bool, "busy": bool}.
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
    return None


CHECKPOINT_PREFIX = "cairn-"


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
        return f"{disk}: removed checkpoint bitmaps of an interrupted backup ({', '.join(self.remove)})"


def plan_bitmap_repair(bitmaps: dict[str, dict], base: str | None) -> BitmapRepair:
    """An interrupted backup froze `base` and started its own bitmap in one transaction.

    Their union covers every write since `base` was made, so folding the orphan back in makes
    `base` whole; an inconsistent bitmap cannot be merged and is only removed. Without a usable
    base nothing is merged, and the next read is full anyway.
    """
    orphans = sorted(n for n in bitmaps if n.startswith(CHECKPOINT_PREFIX) and n != base)
    base_info = bitmaps.get(base) if base else None
    base_usable = base_info is not None and not base_info.get("inconsistent")
    merge = [n for n in orphans if base_usable and not bitmaps[n].get("inconsistent")]
    enable = bool(merge) and base_info is not None and not base_info.get("recording", True)
    return BitmapRepair(merge, orphans, enable)
