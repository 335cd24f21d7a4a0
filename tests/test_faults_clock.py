"""Clock jumps. `cairn` runs under libfaketime (the `faketime` package): its wall clock, and
that of every process it starts, is stepped back or ahead, while the kernel's, which stamps
the store's files, is not, as when a host's clock is wrong or is set right."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from backup_helpers import MiB, image_to_raw, same_content
from store_helpers import CHUNK, backup_image, disk_image, new_store, read_back
from test_store_maintenance import forget

from appliance.backups.retention import RetentionRules, apply_retention
from appliance.context import Appliance
from dedup import Store, verify_store
from restore import restore_disk

CAIRN = str(Path(sys.executable).with_name("cairn"))
TIMEOUT = 300


def cairn(data_dir: Path, *args: str, clock: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run `cairn args` with its clock stepped by `clock` (faketime's "-1h", "+2d"), if given."""
    command = (["faketime", "-f", clock] if clock else []) + [CAIRN, *args]
    done = subprocess.run(command, env={**os.environ, "CAIRN_DATA_DIR": str(data_dir), "COLUMNS": "400", **(env or {})},
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def qemu_io(disk: str, pattern: int, offset: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {MiB}", disk],
                   check=True, capture_output=True)


def backed_up(data_dir: Path, vm: str, clock: str | None = None) -> dict:
    return json.loads(cairn(data_dir, "backup", "create", vm, "--json", clock=clock))


def test_backups_after_the_clock_stepped_back_are_whole(appliance: Appliance, appliance_data_dir: Path,
                                                         tmp_path: Path):
    """The clock steps back an hour between two backups: the later backups sort before the
    earlier one by time and id, yet each restores to what the disk held when it was taken, and
    the next incremental still sees every write (if the ledger's checkpoint and the newest
    backup by time disagree, it reads in full)."""
    disk = appliance.vms.create("tick", [8 * MiB]).disks[0].path
    taken = []
    for n, clock in enumerate([None, "-1h", "-1h"]):
        qemu_io(disk, 0x60 + n, n * MiB)
        taken.append((backed_up(appliance_data_dir, "tick", clock), image_to_raw(disk, tmp_path / f"{n}.raw")))
    assert taken[1][0]["backup_id"] < taken[0][0]["backup_id"]
    for result, ref in taken:
        out = tmp_path / f"{result['backup_id']}.raw"
        restore_disk(appliance.store, result["backup_id"], "vda", out)
        assert same_content(ref, out), result
    listed = json.loads(cairn(appliance_data_dir, "backup", "list", "--vm", "tick", "--json"))
    assert sorted(b["id"] for b in listed if b["status"] == "ok") == sorted(r["backup_id"] for r, _ in taken)


def test_a_gc_whose_clock_jumped_ahead_leaves_what_a_running_backup_relies_on(tmp_path: Path):
    """A backup running with the right clock deduplicates against blocks no backup references
    any more, and inherits its parent's, which is forgotten meanwhile; a GC runs with its clock
    two days ahead and a day's grace (its touch of the GC lock says it is two days later; the
    files' times are read as they are). By its clock every unreferenced pack is a day past the
    grace, but the running backup's writer lease bounds the cutoff: nothing it relies on goes,
    and it commits a backup that restores and verifies."""
    store = new_store(tmp_path / "store")
    parent_data = disk_image("rrr", seed=1)
    parent = backup_image(store, "web", {"vda": parent_data})
    orphan_data = disk_image("rr", seed=2)
    forget(store, backup_image(store, "old", {"vda": orphan_data}))
    session = store.begin_backup("web", kind="incremental", parent=parent)
    writer = session.disk("vda", 4 * CHUNK)
    writer.put(2 * CHUNK, orphan_data)
    session._pipeline.drain()
    forget(store, parent)

    cairn(tmp_path / "data", "store", "gc", "--store", str(store.location), "--grace", "24h", clock="+2d",
          env={"NO_FAKE_STAT": "1"})
    manifest = session.commit()
    assert read_back(Store.open(store.location), manifest, "vda") == parent_data[:2 * CHUNK] + orphan_data
    # With no backup running, the same GC takes the blocks no backup needs, seconds old as they are.
    again = json.loads(cairn(tmp_path / "data", "store", "gc", "--store", str(store.location), "--grace", "24h",
                             "--json", clock="+2d", env={"NO_FAKE_STAT": "1"}))
    assert again["chunks_removed"] > 0
    assert read_back(Store.open(store.location), manifest, "vda") == parent_data[:2 * CHUNK] + orphan_data
    assert verify_store(Store.open(store.location)).ok


def test_retention_keeps_the_backup_taken_last_after_the_clock_stepped_back(appliance: Appliance,
                                                                           appliance_data_dir: Path):
    disk = appliance.vms.create("tock", [4 * MiB]).disks[0].path
    backed_up(appliance_data_dir, "tock")
    qemu_io(disk, 0x70, 0)
    last = backed_up(appliance_data_dir, "tock", clock="-1h")
    apply_retention(appliance.store, appliance.catalog, "tock", RetentionRules(keep_last=1))
    assert [m.backup_id for m in appliance.store.list_backups("tock")] == [last["backup_id"]]
