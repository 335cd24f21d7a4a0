"""A store that runs out of space: the backup fails clearly, keeps the checkpoint, and the
next one, with room again, is complete."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from backup_helpers import same_content

from appliance.context import Appliance
from dedup import Store
from restore import restore_disk

MiB = 1 << 20


@pytest.fixture
def small_store(appliance_data_dir: Path):
    """The appliance's store on a 16 MiB tmpfs (needs root, as the suite does)."""
    mount = appliance_data_dir / "store"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def bitmaps(image: str) -> list[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", image], capture_output=True,
                                     text=True, check=True).stdout)
    return [b["name"] for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]


def test_backup_into_a_full_store_fails_cleanly_and_keeps_the_checkpoint(appliance_data_dir: Path, small_store: Path,
                                                                       tmp_path: Path):
    Store.init(small_store)
    appliance = Appliance.open(str(appliance_data_dir))
    appliance.vms.create("big", [64 * MiB])
    disk = appliance.vms.spec("big").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", disk], check=True, capture_output=True)
    first = asyncio.run(appliance.backups.create(appliance.vms.spec("big"))).manifest
    assert bitmaps(disk) == [first.checkpoint]

    noise = tmp_path / "noise.raw"                 # incompressible: it cannot fit in 16 MiB
    noise.write_bytes(os.urandom(40 * MiB))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {noise} 8M 40M", disk], check=True, capture_output=True)
    with pytest.raises(Exception, match="No space left"):
        asyncio.run(appliance.backups.create(appliance.vms.spec("big")))

    assert [m.backup_id for m in appliance.store.list_backups("big")] == [first.backup_id]
    failed = [b for b in appliance.backups.list("big") if b.status == "failed"]
    assert len(failed) == 1 and "No space left" in failed[0].error
    assert bitmaps(disk) == [first.checkpoint]      # the base of the next incremental is intact

    subprocess.run(["mount", "-o", "remount,size=128M", str(small_store)], check=True)
    again = asyncio.run(appliance.backups.create(appliance.vms.spec("big"))).manifest
    assert again.kind == "incremental" and again.parent == first.backup_id
    ref, out = tmp_path / "ref.raw", tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", disk, str(ref)], check=True)
    restore_disk(appliance.store, again.backup_id, None, out)
    assert same_content(ref, out)
