"""Verify, GC, repair, prune, protect and stats on real format-2 stores, and backups running beside them."""

import os
import random
import shutil
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import (
    BLOCK,
    CHUNK,
    backup_changes,
    backup_image,
    backup_path,
    backups_beside_gc,
    block_ids,
    block_pack,
    disk_image,
    flip_byte,
    new_store,
    pack_files,
    read_back,
)

from dedup import (
    GcUnsafeError,
    RetentionPolicy,
    RetentionRuleError,
    Store,
    StoreBusyError,
    collect_garbage,
    is_protected,
    protect,
    prune,
    rebuild_index,
    store_stats,
    unprotect,
    verify_store,
)
from dedup.gc import GC_LOCK
from dedup.locks import FileLock

HOUR_AGO = time.time() - 3600


def age(paths, when=HOUR_AGO):
    for path in paths:
        os.utime(path, (when, when))


def forget(store, manifest):
    """Remove a backup's manifest: its blocks are unreferenced from now on."""
    backup_path(store, manifest.vm, manifest.backup_id).joinpath("manifest.json").unlink()


# --- verify ---------------------------------------------------------------


def test_verify_names_every_backup_that_uses_a_bad_block(tmp_path):
    store = new_store(tmp_path)
    shared = disk_image("rr", seed=1)
    a = backup_image(store, "web", {"vda": shared + disk_image("r", seed=2)})
    b = backup_image(store, "db", {"vdb": disk_image("r", seed=3) + shared})
    c = backup_image(store, "web", {"vda": disk_image("rz", seed=4)})
    assert verify_store(store).ok
    bad = block_ids(store, a, "vda")[17]  # shared: a's bytes 17 * 64 KiB on, b's a MiB later
    _, record = store.blocks.locate(bad)
    flip_byte(block_pack(store, bad), offset=record.offset + 100)
    gone = block_pack(store, block_ids(store, c, "vda")[0])
    lost = {r.block_id for r in store.blocks.index.packs[gone.name].records}
    gone.unlink()

    report = verify_store(store, workers=2)
    assert not report.ok and report.chunks_checked == report.chunks_referenced == 5 * 16
    corrupt = [x for x in report.bad_chunks if x.problem == "corrupt"]
    missing = [x for x in report.bad_chunks if x.problem == "missing"]
    assert [x.chunk_id for x in corrupt] == [bad.hex()]
    assert {(u.vm, u.backup_id, u.disk, u.offset, u.length) for u in corrupt[0].used_by} == {
        ("web", a.backup_id, "vda", 17 * BLOCK, BLOCK),
        ("db", b.backup_id, "vdb", CHUNK + 17 * BLOCK, BLOCK),
    }
    assert {bytes.fromhex(x.chunk_id) for x in missing} == lost & set(block_ids(store, c, "vda"))
    assert all(u.backup_id == c.backup_id for x in missing for u in x.used_by)
    assert all(f"pack {gone.name}" in x.detail for x in missing)
    assert sorted(report.damaged_backups()) == sorted([a.backup_id, b.backup_id, c.backup_id])


def test_a_truncated_pack_loses_only_the_blocks_it_no_longer_holds(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rr", seed=11)
    damaged = backup_image(store, "web", {"vda": data})
    other = backup_image(store, "db", {"vda": disk_image("rt", seed=12)})
    pack = block_pack(store, block_ids(store, damaged, "vda")[0])
    records = sorted(store.blocks.index.packs[pack.name].records, key=lambda r: r.offset)
    cut = records[5].offset + 1000  # inside the sixth record
    pack.write_bytes(pack.read_bytes()[:cut])

    report = verify_store(Store.open(tmp_path))
    assert report.index_rebuilt and any(pack.name in p for p in report.index_problems)
    lost = {r.block_id.hex() for r in records[5:]}
    assert {x.chunk_id for x in report.bad_chunks} == lost
    assert all(x.problem == "missing" and pack.name in x.detail for x in report.bad_chunks)
    assert set(report.damaged_backups()) == {damaged.backup_id}
    # The five records before the damage read again; the other backup is whole.
    reopened = Store.open(tmp_path)
    for r in records[:5]:
        reopened.blocks.read(r.block_id)
    assert read_back(reopened, other, "vda") == disk_image("rt", seed=12)


def test_verify_sample_checks_the_asked_share(tmp_path):
    store = new_store(tmp_path)
    backup_image(store, "web", {"vda": disk_image("rrrrr", seed=5)})
    report = verify_store(store, sample_percent=30, rng=random.Random(1))
    assert (report.chunks_referenced, report.chunks_checked, report.bytes_checked) == (80, 24, 24 * BLOCK)
    with pytest.raises(ValueError):
        verify_store(store, sample_percent=0)


def test_a_lost_or_damaged_block_index_is_rebuilt(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rtr", seed=6)
    manifest = backup_image(store, "web", {"vda": data})
    index_files = list((tmp_path / "index").iterdir())
    flip_byte(index_files[0], offset=60)
    report = verify_store(Store.open(tmp_path))
    assert report.ok and report.index_rebuilt
    assert any("checksum does not match" in p for p in report.index_problems)
    assert not Store.open(tmp_path).blocks.ensure_loaded().load_report.unindexed

    for path in (tmp_path / "index").iterdir():
        path.unlink()
    repaired = rebuild_index(Store.open(tmp_path))
    assert (repaired.packs, repaired.index_files_replaced, repaired.problems) == (len(pack_files(store)), 0, ())
    assert len(list((tmp_path / "index").iterdir())) == 1
    assert read_back(Store.open(tmp_path), manifest, "vda") == data
    held = FileLock.try_acquire(tmp_path / "locks" / GC_LOCK)
    try:
        with pytest.raises(StoreBusyError, match="repair cannot run"):
            rebuild_index(store)
    finally:
        held.release()


# --- GC -------------------------------------------------------------------


def test_gc_removes_dead_packs_repacks_mostly_dead_ones_and_keeps_the_rest(tmp_path):
    store = new_store(tmp_path)
    kept = backup_image(store, "web", {"vda": disk_image("rr", seed=1)})
    doomed = backup_image(store, "tmp", {"vda": disk_image("rr", seed=2)})
    # An incremental that rewrites the first half of every pack's worth of its parent: once the
    # parent goes, its packs are about half dead.
    base = disk_image("rrrr", seed=3)
    parent = backup_image(store, "db", {"vda": base})
    new_half = disk_image("rr", seed=4)
    child = backup_changes(store, parent, {"vda": [(o, new_half[o // 2:o // 2 + CHUNK // 2])
                                                   for o in range(0, len(base), CHUNK)]})
    expected = bytearray(base)
    for o in range(0, len(base), CHUNK):
        expected[o:o + CHUNK // 2] = new_half[o // 2:o // 2 + CHUNK // 2]
    forget(store, doomed)
    forget(store, parent)
    age(pack_files(store))
    young = backup_image(store, "new", {"vda": disk_image("r", seed=5)})
    forget(store, young)
    before = sum(p.stat().st_size for p in pack_files(store))

    dry = collect_garbage(store, grace=timedelta(minutes=10), dry_run=True)
    assert sum(p.stat().st_size for p in pack_files(store)) == before
    report = collect_garbage(store, grace=timedelta(minutes=10))
    assert (report.bytes_removed, report.packs_removed, report.packs_repacked) == (
        dry.bytes_removed, dry.packs_removed, dry.packs_repacked)
    assert report.packs_repacked >= 3 and report.packs_written >= 1
    assert report.packs_removed > report.packs_repacked  # the doomed backup's packs go whole
    # Kept unreferenced: the young one's blocks and map page (their packs are too new), and any
    # the repack threshold left in mostly live packs.
    assert report.chunks_within_grace >= 17
    assert sorted(report.abandoned_backups_removed) == sorted(
        [f"tmp/{doomed.backup_id}", f"db/{parent.backup_id}", f"new/{young.backup_id}"])
    assert sum(p.stat().st_size for p in pack_files(store)) < before - 4 * CHUNK
    assert read_back(store, kept, "vda") == disk_image("rr", seed=1)
    assert read_back(Store.open(tmp_path), child, "vda") == bytes(expected)
    assert verify_store(store).ok
    age(pack_files(store))
    assert collect_garbage(store, grace=timedelta(0)).chunks_removed >= 17


def test_gc_follows_leftover_trash_and_stale_temp_files(tmp_path):
    store = new_store(tmp_path)
    m = backup_image(store, "web", {"vda": disk_image("rr", seed=1)})
    used = block_pack(store, block_ids(store, m, "vda")[0])
    leftover = used.with_name(f".{used.name}.gc")  # a crashed GC had moved a pack still needed
    used.rename(leftover)
    assert read_back(Store.open(tmp_path), m, "vda") == disk_image("rr", seed=1)  # readers follow it
    stale = used.with_name(f".{used.name}.1234abcd.tmp")
    fresh = used.with_name(f".{used.name}.5678abcd.tmp")
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    age([stale, leftover])
    report = collect_garbage(Store.open(tmp_path), grace=timedelta(minutes=10))
    assert report.temp_files_removed == 1 and not stale.exists() and fresh.exists()
    assert used.exists() and not leftover.exists()
    assert read_back(store, m, "vda") == disk_image("rr", seed=1)


def test_only_one_gc_at_a_time(tmp_path):
    store = new_store(tmp_path)
    held = FileLock.try_acquire(tmp_path / "locks" / GC_LOCK)
    try:
        with pytest.raises(StoreBusyError, match="GC cannot run"):
            collect_garbage(store)
    finally:
        held.release()
    collect_garbage(store)


def test_gc_refuses_to_remove_anything_when_a_backup_is_unreadable(tmp_path):
    store = new_store(tmp_path)
    m = backup_image(store, "web", {"vda": disk_image("r", seed=1)})
    doomed = backup_image(store, "web", {"vda": disk_image("r", seed=2)})
    forget(store, doomed)
    backup_path(store, "web", m.backup_id).joinpath("manifest.json").write_text("{")
    age(pack_files(store))
    packs = pack_files(store)
    with pytest.raises(GcUnsafeError, match=m.backup_id):
        collect_garbage(store, grace=timedelta(0))
    assert pack_files(store) == packs


def test_gc_during_a_backup_never_loses_a_block_it_reuses(tmp_path):
    """Blocks that exist unreferenced are deduplicated against and the parent's are inherited
    by a running backup; its parent goes and a GC with no grace runs in the middle; all survive."""
    store = new_store(tmp_path)
    parent_data = disk_image("rrr", seed=1)
    parent = backup_image(store, "web", {"vda": parent_data})
    orphan_data = disk_image("rr", seed=2)
    orphan = backup_image(store, "old", {"vda": orphan_data})
    forget(store, orphan)
    age(pack_files(store))

    session = store.begin_backup("web", kind="incremental", parent=parent)
    writer = session.disk("vda", 4 * CHUNK)
    assert writer.must_read() == [(3 * CHUNK, CHUNK)]
    writer.put(2 * CHUNK, orphan_data)  # unreferenced blocks, now deduplicated against
    session._pipeline.drain()
    forget(store, parent)  # the parent goes while the backup still relies on its blocks

    report = collect_garbage(store, grace=timedelta(0))
    # Only the orphan's map page goes: every pack the backup relies on was touched by it.
    assert report.live_writers == (session.backup_id,) and report.chunks_removed == 1
    manifest = session.commit()
    assert manifest.disk("vda").stats.blocks_deduplicated == 32
    assert read_back(store, manifest, "vda") == parent_data[: 2 * CHUNK] + orphan_data
    assert verify_store(store).ok
    age(pack_files(store))
    report = collect_garbage(store, grace=timedelta(0))
    # Dead now: the parent's third MiB, overwritten, and its map page (some may wait in packs
    # that are mostly live: the workers filled packs in no particular order).
    assert report.chunks_removed + report.chunks_within_grace == 17 and report.chunks_removed
    assert read_back(Store.open(tmp_path), manifest, "vda") == parent_data[: 2 * CHUNK] + orphan_data


def test_two_backups_and_gc_at_once(tmp_path):
    store = new_store(tmp_path)
    common = disk_image("rrrr", seed=9)
    images = {vm: common + disk_image("rr", seed=n) for n, vm in enumerate(["a", "b"])}
    manifests = backups_beside_gc(dict.fromkeys(images, store), images, store)
    for vm, data in images.items():
        assert read_back(store, manifests[vm], "vda") == data
    assert verify_store(store).ok


class Crash(BaseException):
    """The process dies here."""


class CrashingBackend:
    """The store's backend, dying at the n-th change it makes to the store."""

    def __init__(self, backend, at: int):
        self._backend = backend
        self._left = at
        self.location = backend.location
        self.clock_error_ns = backend.clock_error_ns

    def _step(self):
        self._left -= 1
        if self._left == 0:
            raise Crash()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def rename(self, source, target):
        self._step()
        self._backend.rename(source, target)

    def remove(self, name):
        self._step()
        self._backend.remove(name)

    def remove_tree(self, name):
        self._step()
        self._backend.remove_tree(name)

    @contextmanager
    def atomic_writer(self, name):
        self._step()
        with self._backend.atomic_writer(name) as f:
            yield f


def test_a_crash_at_any_step_of_a_gc_loses_nothing(tmp_path):
    pristine = tmp_path / "pristine"
    store = new_store(pristine)
    kept = {"web": disk_image("rr", seed=1)}
    base = disk_image("rrrr", seed=3)
    parent = backup_image(store, "db", {"vda": base})
    new_half = disk_image("rr", seed=4)
    changes = [(o, new_half[o // 2:o // 2 + CHUNK // 2]) for o in range(0, len(base), CHUNK)]
    child = backup_changes(store, parent, {"vda": changes})
    expected = {child.backup_id: bytearray(base)}
    for o, piece in changes:
        expected[child.backup_id][o:o + len(piece)] = piece
    web = backup_image(store, "web", {"vda": kept["web"]})
    expected[web.backup_id] = kept["web"]
    forget(store, parent)
    forget(store, backup_image(store, "tmp", {"vda": disk_image("rr", seed=2)}))
    age(pack_files(store))
    backups = {child.backup_id: child, web.backup_id: web}

    step = 0
    while True:
        step += 1
        copy = tmp_path / f"crash-{step}"
        shutil.copytree(pristine, copy)
        crashing = Store.open(CrashingBackend(Store.open(copy).backend, at=step))
        try:
            collect_garbage(crashing, grace=timedelta(minutes=10))
            finished = True
        except Crash:
            finished = False
        survivor = Store.open(copy)
        for backup_id, manifest in backups.items():
            assert read_back(survivor, manifest, "vda") == bytes(expected[backup_id]), (step, backup_id)
        report = collect_garbage(survivor, grace=timedelta(minutes=10))
        assert not report.problems, (step, report.problems)
        assert verify_store(Store.open(copy)).ok, step
        shutil.rmtree(copy)
        if finished:
            break
    assert step > 10  # every rename, removal and write of the GC was a crash point


# --- prune and protect ----------------------------------------------------


def synthetic_backups(store, times):
    return [backup_image(store, "web", {"vda": disk_image("z")}, created=t) for t in times]


def test_prune_rules_and_reasons(tmp_path):
    store = new_store(tmp_path)
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
    times = [t0 + timedelta(days=d, hours=h) for d in range(10) for h in (0, 5)]
    backups = {m.created: m.backup_id for m in synthetic_backups(store, times)}
    policy = RetentionPolicy(keep_last=2, keep_daily=3, keep_weekly=2, keep_monthly=1)

    dry = prune(store, "web", policy, dry_run=True)
    kept = {d.created: d.reasons for d in dry.decisions if d.keep}
    last = t0 + timedelta(days=9, hours=5)
    assert kept == {
        last: ("keep-last 1", "keep-daily 2026-03-11", "keep-weekly 2026-W11", "keep-monthly 2026-03"),
        last - timedelta(hours=5): ("keep-last 2",),
        last - timedelta(days=1): ("keep-daily 2026-03-10",),
        last - timedelta(days=2): ("keep-daily 2026-03-09",),
        t0 + timedelta(days=6, hours=5): ("keep-weekly 2026-W10",),  # Sunday 2026-03-08
    }
    assert len(store.list_backups("web")) == 20

    report = prune(store, "web", policy)
    assert sorted(m.backup_id for m in store.list_backups("web")) == sorted(backups[t] for t in kept)
    assert len(report.removed) == 15
    assert not any(backup_path(store, "web", r).exists() for r in report.removed)


def test_protected_backups_are_never_pruned_and_ignored_by_rules(tmp_path):
    store = new_store(tmp_path)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    old, middle, new = synthetic_backups(store, [t0, t0 + timedelta(days=1), t0 + timedelta(days=2)])
    protect(store, new.backup_id)
    protect(store, old.backup_id)
    unprotect(store, old.backup_id)
    assert is_protected(store, new) and not is_protected(store, old)
    decisions = {d.backup_id: d for d in prune(store, "web", RetentionPolicy(keep_last=1)).decisions}
    assert decisions[new.backup_id].reasons == ("protected",)
    assert decisions[middle.backup_id].reasons == ("keep-last 1",)
    assert not decisions[old.backup_id].keep
    assert [m.backup_id for m in store.list_backups()] == [middle.backup_id, new.backup_id]
    with pytest.raises(RetentionRuleError):
        RetentionPolicy()
    with pytest.raises(RetentionRuleError):
        RetentionPolicy(keep_daily=-1)


def test_pruning_a_parent_keeps_its_incremental_restorable(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rrr", seed=3)
    parent = backup_image(store, "web", {"vda": data}, created=datetime(2026, 1, 1, tzinfo=UTC))
    child = backup_changes(store, parent, {"vda": [(4096, b"\1" * 4096)]})
    assert prune(store, "web", RetentionPolicy(keep_last=1)).removed == (parent.backup_id,)
    age(pack_files(store))
    collect_garbage(store, grace=timedelta(0))
    assert read_back(Store.open(tmp_path), child, "vda") == data[:4096] + b"\1" * 4096 + data[8192:]


# --- stats ----------------------------------------------------------------


def test_stats_numbers(tmp_path):
    store = new_store(tmp_path)
    a = backup_image(store, "web", {"vda": disk_image("rrz", seed=1)})
    b = backup_image(store, "web", {"vda": disk_image("rr", seed=1) + disk_image("t", seed=2)})
    stats = store_stats(store)
    assert (stats.backups, stats.logical_bytes, stats.zero_bytes) == (2, 6 * CHUNK, CHUNK)
    assert (stats.chunks, stats.unique_bytes) == (48, 3 * CHUNK)
    records = {r.block_id: r for p in store.blocks.index.packs.values() for r in p.records}
    text = set(block_ids(store, b, "vda")[32:])
    assert stats.stored_bytes == sum(48 + r.stored_length for i, r in records.items() if i not in stats_pages(store))
    assert stats.dedup_ratio == pytest.approx(5 / 3)
    usage = {u.backup_id: u for u in stats.per_backup}
    assert (usage[a.backup_id].unique_chunks, usage[a.backup_id].unique_stored_bytes) == (0, 0)
    assert usage[b.backup_id].unique_chunks == 16
    assert usage[b.backup_id].unique_stored_bytes == sum(48 + records[i].stored_length for i in text)
    assert stats.metadata_bytes > 0 and stats.packs == len(pack_files(store))


def stats_pages(store):
    return {bytes.fromhex(d.layout.root) for m in store.list_backups() for d in m.disks}
