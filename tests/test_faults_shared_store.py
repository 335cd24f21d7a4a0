"""Two appliances on one store: each with its own catalog and VMs, writing into one store
directory at the same time, while the other prunes and collects garbage."""
from __future__ import annotations

import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from backup_helpers import MiB, image_to_raw, run, same_content

from appliance.backups.retention import RetentionRules, apply_retention
from appliance.context import Appliance
from dedup import Store, collect_garbage, verify_store
from restore import restore_disk

ROUNDS = 4


@pytest.fixture
def two_appliances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Appliance, Appliance]:
    """Appliances `a` and `b`, data dirs of their own, one store (as $CAIRN_STORE names it)."""
    store = tmp_path / "store"
    Store.init(store, block_size=64 << 10, pack_size=1 << 20)
    monkeypatch.setenv("CAIRN_STORE", str(store))
    return Appliance.open(str(tmp_path / "a")), Appliance.open(str(tmp_path / "b"))


def write(appliance: Appliance, vm: str, pattern: int, offset: int) -> None:
    disk = appliance.vms.spec(vm).disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {2 * MiB}", disk],
                   check=True, capture_output=True)


def test_two_appliances_back_up_prune_and_collect_garbage_on_one_store_at_once(two_appliances, tmp_path: Path):
    """Round after round, `a` backs up its VM while `b` backs up its own, prunes it to its last
    backup and runs GC without grace: each backup `a` made restores to what its disk held, and
    so does each backup `b` kept; the store verifies."""
    a, b = two_appliances
    a.vms.create("web", [16 * MiB])
    b.vms.create("db", [16 * MiB])
    kept: dict[str, tuple[Appliance, Path]] = {}
    for n in range(ROUNDS):
        write(a, "web", 0x10 + n, n * 2 * MiB)
        write(b, "db", 0x20 + n, (7 - n) * 2 * MiB)
        refs = {vm: image_to_raw(app.vms.spec(vm).disks[0].path, tmp_path / f"{vm}-{n}.raw")
                for app, vm in ((a, "web"), (b, "db"))}
        made: dict[str, str] = {}

        def back_up(app: Appliance, vm: str, made: dict[str, str] = made) -> None:
            made[vm] = run(app.backups.create(app.vms.spec(vm))).manifest.backup_id
        backing_up = threading.Thread(target=back_up, args=(a, "web"))
        backing_up.start()
        back_up(b, "db")
        apply_retention(b.store, b.catalog, "db", RetentionRules(keep_last=1))
        collect_garbage(b.store, grace=timedelta(0))
        backing_up.join()
        kept = {k: v for k, v in kept.items() if v[0] is a}
        kept[made["web"]], kept[made["db"]] = (a, refs["web"]), (b, refs["db"])
    for backup_id, (app, ref) in kept.items():
        out = tmp_path / f"{backup_id}.raw"
        restore_disk(app.store, backup_id, "vda", out)
        assert same_content(ref, out), backup_id
    assert len(kept) == ROUNDS + 1
    assert verify_store(Store.open(a.store.location)).ok


def test_retention_on_one_appliance_keeps_another_appliances_backups_of_a_vm_of_the_same_name(two_appliances):
    a, b = two_appliances
    for app in (a, b):
        app.vms.create("web", [4 * MiB])
    ours = run(a.backups.create(a.vms.spec("web"))).manifest.backup_id
    run(b.backups.create(b.vms.spec("web")))
    apply_retention(b.store, b.catalog, "web", RetentionRules(keep_last=1))
    assert ours in {m.backup_id for m in a.store.list_backups("web")}
