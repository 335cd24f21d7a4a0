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
