"""The store's writers killed at every change they make: a GC (marking, repacking, retiring
packs, consolidating the index) and a backup, each in a process of its own that dies with
os._exit (nothing else runs, as under kill -9) at its n-th change to the store, half-way
through writing the file when that change is a write. For every n: every backup restores,
the next GC finishes the job without a problem and leaves no temporary or trashed file, and
the store verifies. (test_store_maintenance.py raises an exception at the same points, so
`finally` blocks run; here none does.) And a damaged key file."""
from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from fault_helpers import DIED, DyingBackend, forked_process
from store_helpers import CHUNK, backup_changes, backup_image, disk_image, flip_byte, new_store, pack_files, read_back
from test_store_crypto import KEY_FILE, PASSPHRASE
from test_store_maintenance import age, forget

from dedup import KeyFileError, Store, WrongPassphraseError, collect_garbage, verify_store


def leftovers(path: Path) -> list[Path]:
    """Temporary files, trashed packs and backup directories without a manifest."""
    found = [p for p in path.rglob(".*") if p.name.endswith((".tmp", ".gc"))]
    return found + [d for d in path.glob("backups/*/*") if not (d / "manifest.json").exists()]


def whole(path: Path, expected: dict) -> None:
    store = Store.open(path)
    for manifest, data in expected.values():
        assert read_back(store, manifest, "vda") == data, manifest.backup_id


def test_a_gc_killed_at_any_change_to_the_store_loses_nothing(tmp_path: Path):
    pristine = tmp_path / "pristine"
    store = new_store(pristine)
    base = disk_image("rrrr", seed=3)
    parent = backup_image(store, "db", {"vda": base})
    new_half = disk_image("rr", seed=4)
    changes = [(o, new_half[o // 2:o // 2 + CHUNK // 2]) for o in range(0, len(base), CHUNK)]
    child = backup_changes(store, parent, {"vda": changes})
    expected_child = bytearray(base)
    for offset, piece in changes:
        expected_child[offset:offset + len(piece)] = piece
    web = backup_image(store, "web", {"vda": disk_image("rr", seed=1)})
    expected = {"child": (child, bytes(expected_child)), "web": (web, disk_image("rr", seed=1))}
    forget(store, parent)                                     # its packs are half dead: repacked
    forget(store, backup_image(store, "tmp", {"vda": disk_image("rr", seed=2)}))   # wholly dead: removed
    age(pack_files(store))

    step = 0
    while True:
        step += 1
        copy = tmp_path / f"killed-{step}"
        shutil.copytree(pristine, copy)
        dying = forked_process(lambda pause, copy=copy, step=step: collect_garbage(
            Store.open(DyingBackend(Store.open(copy).backend, at=step)), grace=timedelta(minutes=10)))
        code = dying.wait()
        assert code in (0, DIED), dying.output
        whole(copy, expected)
        report = collect_garbage(Store.open(copy), grace=timedelta(0))
        assert not report.problems, (step, report.problems)
        assert leftovers(copy) == [], step
        assert verify_store(Store.open(copy)).ok, step
        whole(copy, expected)
        shutil.rmtree(copy)
        if code == 0:
            break
    assert step > 10, "GC made fewer changes than a repack does"


def test_a_backup_killed_at_any_change_to_the_store_leaves_only_what_gc_removes(tmp_path: Path):
    """A backup dies while it writes packs, its map pages or its manifest: it is no backup (or
    a whole one, once its manifest is written); the next GC removes its directory, its lease and
    its half-written files; the backups before it and a new one of the same data are whole."""
    pristine = tmp_path / "pristine"
    store = new_store(pristine)
    first = backup_image(store, "web", {"vda": disk_image("rrt", seed=1)})
    data = disk_image("rtrz", seed=2)

    step = 0
    while True:
        step += 1
        copy = tmp_path / f"killed-{step}"
        shutil.copytree(pristine, copy)
        dying = forked_process(lambda pause, copy=copy, step=step: backup_image(
            Store.open(DyingBackend(Store.open(copy).backend, at=step)), "web", {"vda": data}, workers=2))
        code = dying.wait()
        assert code in (0, DIED), dying.output
        after = Store.open(copy)
        listed = after.list_backups("web")
        assert [m.backup_id for m in listed][:1] == [first.backup_id] and len(listed) == 1 + (code == 0), step
        collect_garbage(after, grace=timedelta(0))
        assert leftovers(copy) == [] and list((copy / "writers").iterdir()) == [], step
        again = backup_image(Store.open(copy), "web", {"vda": data})
        reopened = Store.open(copy)
        assert read_back(reopened, first, "vda") == disk_image("rrt", seed=1)
        assert read_back(reopened, again, "vda") == data
        assert verify_store(reopened).ok, step
        shutil.rmtree(copy)
        if code == 0:
            break
    assert step > 5, "the backup made fewer changes than its packs, pages and manifest take"


def test_a_damaged_key_file_is_refused_and_a_copy_of_it_opens_the_store(tmp_path: Path):
    """An encrypted store's key file damaged (a byte flipped anywhere, its sealed key altered,
    emptied): opening is refused, naming the key file, before a block is read or written; with
    a good copy of the key file every backup restores."""
    store = new_store(tmp_path / "store", passphrase=PASSPHRASE)
    manifest = backup_image(store, "web", {"vda": disk_image("rt", seed=1)})
    key = tmp_path / "store" / KEY_FILE
    good = tmp_path / "key-copy.json"
    shutil.copy(key, good)
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "store").rglob("*") if p.is_file())
    sealed = json.loads(key.read_text())["sealed_key"]
    damages = [lambda: flip_byte(key, offset=40), lambda: flip_byte(key, offset=-10), lambda: key.write_text(""),
               lambda: key.write_text(key.read_text().replace(sealed, sealed[:20] + ("A" if sealed[20] != "A" else "B")
                                                              + sealed[21:]))]
    for damage in damages:
        shutil.copy(good, key)
        damage()
        with pytest.raises((KeyFileError, WrongPassphraseError), match=str(key)):
            Store.open(tmp_path / "store", passphrase=PASSPHRASE)
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "store").rglob("*")
                  if p.is_file() and p != key) == [b for b in before if b[0] != key]
    reopened = Store.open(tmp_path / "store", passphrase=PASSPHRASE, key_file=good)
    assert read_back(reopened, manifest, "vda") == disk_image("rt", seed=1)
    assert verify_store(reopened).ok
