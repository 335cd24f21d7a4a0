"""The catalog's PostgreSQL killed (kill -9 of the server, as in a crash) while Cairn works.
Cairn's data is in the store and the image files; the catalog only records it. A backup whose
record cannot be written is no backup the catalog calls ok, nothing the catalog calls ok is
lost, and once PostgreSQL is back (it recovers by itself) Cairn goes on: the next backup is
whole."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from backup_helpers import MiB, image_to_raw, run, same_content
from fault_helpers import Pause, forked_process
from postgres_server import PostgresServer, postgres_server  # noqa: F401  (fixture)

from appliance.catalog.engine import catalog_engine, open_catalog
from appliance.context import Appliance
from restore import restore_disk


def write(disk: str, pattern: int, offset: int, length: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", disk],
                   check=True, capture_output=True)


def test_postgresql_killed_mid_backup_loses_no_backup_and_the_next_one_is_whole(
        postgres_server: PostgresServer, appliance_data_dir: Path, tmp_path: Path):  # noqa: F811
    appliance = Appliance.open(str(appliance_data_dir), postgres_server.url)
    disk = appliance.vms.create("pg", [32 * MiB]).disks[0].path
    write(disk, 0x31, 0, 8 * MiB)
    first = run(appliance.backups.create(appliance.vms.spec("pg"))).manifest
    write(disk, 0x32, 4 * MiB, 24 * MiB)

    def back_up(pause: Pause) -> None:     # a `cairn backup create` of its own, held mid-copy
        app = Appliance.open(str(appliance_data_dir), postgres_server.url)
        paused = []

        def report(name: str, done: int, total: int) -> None:
            if done > 0 and not paused:
                paused.append(done)
                pause(f"{name} {done}/{total}")
        run(app.backups.create(app.vms.spec("pg"), progress=report))
    at_the_backup = image_to_raw(disk, tmp_path / "at-the-backup.raw")
    backing_up = forked_process(back_up)
    try:
        backing_up.wait_paused()
        postgres_server.kill()
        backing_up.resume()                # it copies on, and cannot record what it did
        assert backing_up.wait() != 0
    finally:
        if backing_up.code is None:
            os.kill(backing_up.pid, signal.SIGKILL)
            backing_up.wait()
    postgres_server.start()

    assert ok_backups_restore(appliance, "pg", tmp_path) == [first.backup_id]
    # Its data was in the store before its record failed: a whole backup the catalog does not
    # call ok, listed from the store (`cairn restore list --store`) and restorable.
    [orphan] = [m.backup_id for m in appliance.store.list_backups("pg") if m.backup_id != first.backup_id]
    assert appliance.backups.get(orphan).status == "failed"
    restore_disk(appliance.store, orphan, "vda", tmp_path / "orphan.raw")
    assert same_content(at_the_backup, tmp_path / "orphan.raw")

    write(disk, 0x33, 30 * MiB, 1 * MiB)
    after = run(appliance.backups.create(appliance.vms.spec("pg"))).manifest
    out = tmp_path / "after.raw"
    restore_disk(appliance.store, after.backup_id, "vda", out)
    assert same_content(image_to_raw(disk, tmp_path / "disk.raw"), out)


def ok_backups_restore(appliance: Appliance, vm: str, tmp_path: Path) -> list[str]:
    ok = [b.id for b in appliance.backups.list(vm) if b.status == "ok"]
    for backup_id in ok:
        restore_disk(appliance.store, backup_id, "vda", tmp_path / f"{backup_id}.raw")
    return ok


def test_opening_the_catalog_again_keeps_the_locks_sqlite_holds_in_the_process(tmp_path: Path):
    """SQLite's locks are POSIX record locks, which a process loses on any close() of the file.
    Opening the catalog again in a process (every Appliance, every CLI helper opens its own)
    must not open and close the database's files, or another process writes beside this one's
    transaction, and the catalog ends up "database disk image is malformed"."""
    database = tmp_path / "catalog.db"
    open_catalog(f"sqlite:///{database}")
    writing = sqlite3.connect(database, isolation_level=None)
    try:
        writing.execute("BEGIN IMMEDIATE")                 # this process writes
        catalog_engine(f"sqlite:///{database}").dispose()   # and opens the catalog again
        other = subprocess.run([sys.executable, "-c", "import sqlite3, sys; "
                                "sqlite3.connect(sys.argv[1], timeout=0).execute('BEGIN IMMEDIATE')", str(database)],
                               capture_output=True, text=True, check=False)
        assert other.returncode != 0 and "database is locked" in other.stderr, other.stderr
    finally:
        writing.close()
