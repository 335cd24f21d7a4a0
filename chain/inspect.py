"""Read layers from the image files: a disk's backing chain (qemu-img info --backing-chain),
and the sizes and bitmaps of the tree's nodes."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from vmm import ImageError, image_info

from .errors import ChainError
from .tree import Node


@dataclass
class Layer:
    path: str
    format: str
    virtual_size: int
    actual_size: int
    backing: str | None
    bitmaps: list[dict] = field(default_factory=list)   # name, granularity, flags ("auto", "in-use")

    def to_dict(self) -> dict:
        return asdict(self)


def backing_chain(path: str) -> list[Layer]:
    """Top layer first. -U: the image may be open in a running QEMU (sizes may then lag)."""
    proc = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChainError(f"cannot read the chain of {path}: {proc.stderr.strip()}")
    return [Layer(path=i["filename"], format=i["format"], virtual_size=i["virtual-size"],
                  actual_size=i.get("actual-size", 0), backing=i.get("full-backing-filename"),
                  bitmaps=i.get("format-specific", {}).get("data", {}).get("bitmaps", []))
            for i in json.loads(proc.stdout)]


def measure(nodes: Iterable[Node]) -> None:
    """Refresh each node's allocated size and bitmap names from its file (missing: 0, none)."""
    for node in nodes:
        try:
            node.size = os.stat(node.file).st_blocks * 512
            info = image_info(node.file)
        except (OSError, ImageError):
            node.size, node.bitmaps = 0, []
            continue
        node.bitmaps = [b["name"] for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]
