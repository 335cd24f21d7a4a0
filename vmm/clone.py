"""Clone a stopped VM's definition and disks (nSSV 4.1.4.1.2).

  full     each disk copied with its backing chain flattened: shares nothing with the source
  linked   each disk a thin qcow2 overlay on the source's disk; with a background block-stream
           (QemuDriver.stream_disks) this is the instant full clone: it boots at once and ends
           up as independent as a full clone
  cached   each disk a thin overlay on a shared, read-only image cache of the source's disk:
           batch clones store the source's data once and never depend on the source VM
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Literal

from .images import convert_image, create_disk
from .spec import DiskSpec, VMSpec, random_mac

CloneMode = Literal["full", "linked", "cached"]


def clone_disks(source: VMSpec, folder: Path, mode: CloneMode,
                caches: Mapping[str, str | os.PathLike[str]] | None = None) -> list[DiskSpec]:
    """Create the clone's disk files in `folder` (which must exist); `caches` maps each disk
    name to its image cache for mode "cached". On failure the files made so far are removed."""
    made: list[DiskSpec] = []
    try:
        for disk in source.disks:
            target = DiskSpec(disk.name, str(folder / f"{disk.name}.qcow2"))
            if mode == "full":
                convert_image(disk.path, target.path)
            elif mode == "linked":
                create_disk(target.path, None, backing=disk.path)
            else:
                create_disk(target.path, None, backing=(caches or {})[disk.name])
            made.append(target)
    except BaseException:
        for disk in made:
            Path(disk.path).unlink(missing_ok=True)
        raise
    return made


def clone_spec(source: VMSpec, name: str, disks: list[DiskSpec]) -> VMSpec:
    """The source's definition under a new name, with new disks and new MAC addresses (two
    cards with one MAC on a network would steal each other's traffic)."""
    nics = [replace(n, mac=random_mac()) for n in source.nics]
    spec = replace(source, name=name, disks=disks, nics=nics)
    spec.validate()
    return spec
