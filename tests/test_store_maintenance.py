"""Verify, GC, prune, protect and stats on real stores, and backups running beside them."""

import os
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from store_helpers import (
    CHUNK,
    backup_image,
    backup_path,
    backups_beside_gc,
    chunk_files,
    disk_image,
    flip_byte,
    new_store,
    read_back,
)

from dedup import (
    GcUnsafeError,
    RetentionPolicy,
    RetentionRuleError,
    StoreBusyError,
    collect_garbage,
    is_protected,
    protect,
    prune,
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


def chunk_path(store, manifest, disk, chunk_no):
    return store.chunks.path(store.read_index(manifest, disk).digest(chunk_no))


# --- verify ---------------------------------------------------------------


def test_verify_names_every_backup_that_uses_a_bad_chunk(tmp_path):
    store = new_store(tmp_path)
    shared = disk_image("rr", seed=1)
    a = backup_image(store, "web", {"vda": shared + disk_image("r", seed=2)})
    b = backup_image(store, "db", {"vdb": disk_image("r", seed=3) + shared})
    c = backup_image(store, "web", {"vda": disk_image("rz", seed=4)})
    assert verify_store(store).ok
    flip_byte(chunk_path(store, a, "vda", 1), offset=100)
    chunk_path(store, c, "vda", 0).unlink()

    report = verify_store(store, workers=2)
    assert not report.ok and report.chunks_checked == report.chunks_referenced == 5
    problems = {bad.problem: bad for bad in report.bad_chunks}
    corrupt, missing = problems["corrupt"], problems["missing"]
    assert {(u.vm, u.backup_id, u.disk, u.chunk_no) for u in corrupt.used_by} == {
        ("web", a.backup_id, "vda", 1),
        ("db", b.backup_id, "vdb", 2),
    }
    assert [(u.backup_id, u.chunk_no) for u in missing.used_by] == [(c.backup_id, 0)]
    assert sorted(report.damaged_backups()) == sorted([a.backup_id, b.backup_id, c.backup_id])


def test_verify_finds_a_truncated_chunk_and_a_bad_index(tmp_path):
    store = new_store(tmp_path)
    a = backup_image(store, "web", {"vda": disk_image("rt", seed=1)})
    b = backup_image(store, "web", {"vda": disk_image("r", seed=2)})
    path = chunk_path(store, a, "vda", 1)
    path.write_bytes(path.read_bytes()[:-50])
    index = backup_path(store, "web", b.backup_id) / "vda.index"
    index.write_bytes(index.read_bytes()[:-1] + b"\0")

    report = verify_store(store)
    assert [(bad.problem, [u.backup_id for u in bad.used_by]) for bad in report.bad_chunks] == [
        ("corrupt", [a.backup_id])
    ]
    assert [(u.backup_id, u.disk) for u in report.unreadable] == [(b.backup_id, "vda")]
    assert "digest" in report.damaged_backups()[b.backup_id][0]


def test_verify_sample_checks_the_asked_share(tmp_path):
    store = new_store(tmp_path)
    backup_image(store, "web", {"vda": disk_image("rrrrrrrrrr", seed=5)})
    report = verify_store(store, sample_percent=30, rng=random.Random(1))
    assert (report.chunks_referenced, report.chunks_checked, report.bytes_checked) == (10, 3, 3 * CHUNK)
    with pytest.raises(ValueError):
        verify_store(store, sample_percent=0)


# --- GC -------------------------------------------------------------------


def test_gc_removes_old_unreferenced_chunks_and_keeps_the_rest(tmp_path):
    store = new_store(tmp_path)
    kept = backup_image(store, "web", {"vda": disk_image("rr", seed=1)})
    doomed = backup_image(store, "web", {"vda": disk_image("rrr", seed=2)})
    backup_path(store, "web", doomed.backup_id).joinpath("manifest.json").unlink()
    age(chunk_files(store))
    young = backup_image(store, "tmp", {"vda": disk_image("r", seed=3)})
    backup_path(store, "tmp", young.backup_id).joinpath("manifest.json").unlink()

    dry = collect_garbage(store, grace=timedelta(minutes=10), dry_run=True)
    assert (dry.chunks_removed, dry.chunks_within_grace, len(chunk_files(store))) == (3, 1, 6)
    report = collect_garbage(store, grace=timedelta(minutes=10))
    assert (report.chunks_referenced, report.chunks_removed, report.chunks_kept) == (2, 3, 3)
    assert report.chunks_within_grace == 1 and report.bytes_removed > 3 * CHUNK
    assert sorted(report.abandoned_backups_removed) == sorted([f"web/{doomed.backup_id}", f"tmp/{young.backup_id}"])
    assert read_back(store, kept, "vda") == disk_image("rr", seed=1)
    assert verify_store(store).ok
    assert collect_garbage(store, grace=timedelta(0)).chunks_removed == 1


def test_gc_sweeps_stale_temp_files_and_leftover_trash(tmp_path):
    store = new_store(tmp_path)
    m = backup_image(store, "web", {"vda": disk_image("rr", seed=1)})
    used = chunk_path(store, m, "vda", 0)
    leftover = used.with_name(f".{used.name}.gc")  # a crashed GC had renamed a referenced chunk
    used.rename(leftover)
    stale = used.with_name(f".{used.name}.1234abcd.tmp")
    fresh = used.with_name(f".{used.name}.5678abcd.tmp")
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    age([stale, leftover])
    report = collect_garbage(store, grace=timedelta(minutes=10))
    assert report.temp_files_removed == 1 and not stale.exists() and fresh.exists()
    assert used.exists() and not leftover.exists()
    assert read_back(store, m, "vda") == disk_image("rr", seed=1)


def test_only_one_gc_at_a_time(tmp_path):
    store = new_store(tmp_path)
    held = FileLock.try_acquire(tmp_path / "locks" / GC_LOCK)
    try:
        with pytest.raises(StoreBusyError, match="another GC"):
            collect_garbage(store)
    finally:
        held.release()
    collect_garbage(store)


def test_gc_refuses_to_sweep_when_a_backup_is_unreadable(tmp_path):
    store = new_store(tmp_path)
    m = backup_image(store, "web", {"vda": disk_image("r", seed=1)})
    backup_image(store, "web", {"vda": disk_image("r", seed=2)})
    backup_path(store, "web", m.backup_id).joinpath("manifest.json").write_text("{")
    age(chunk_files(store))
    with pytest.raises(GcUnsafeError, match=m.backup_id):
        collect_garbage(store, grace=timedelta(0))
    assert len(chunk_files(store)) == 2


def test_gc_during_a_backup_never_loses_a_chunk_it_reuses(tmp_path):
    """Chunks that exist unreferenced are deduplicated against and reused by a
    running backup; a GC with no grace runs in the middle; all must survive."""
    store = new_store(tmp_path)
    parent_data = disk_image("rrr", seed=1)
    parent = backup_image(store, "web", {"vda": parent_data})
    orphan_data = disk_image("rr", seed=2)
    orphan = backup_image(store, "old", {"vda": orphan_data})
    backup_path(store, "old", orphan.backup_id).joinpath("manifest.json").unlink()
    age(chunk_files(store))

    session = store.begin_backup("web", kind="incremental", parent=parent)
    writer = session.disk("vda", 4 * CHUNK)
    assert writer.reuse(0) and writer.reuse(1)
    writer.put(2, orphan_data[:CHUNK])  # an unreferenced chunk, now deduplicated against
    writer.put(3, orphan_data[CHUNK:])
    session._pipeline.drain()
    # The parent goes away while the backup still relies on its chunks.
    backup_path(store, "web", parent.backup_id).joinpath("manifest.json").unlink()

    report = collect_garbage(store, grace=timedelta(0))
    assert report.live_writers == (session.backup_id,) and report.chunks_removed == 1
    manifest = session.commit()
    assert read_back(store, manifest, "vda") == parent_data[: 2 * CHUNK] + orphan_data
    assert verify_store(store).ok
    assert collect_garbage(store, grace=timedelta(0)).chunks_removed == 0


def test_two_backups_and_gc_at_once(tmp_path):
    store = new_store(tmp_path)
    common = disk_image("rrrr", seed=9)
    images = {vm: common + disk_image("rr", seed=n) for n, vm in enumerate(["a", "b"])}
    manifests = backups_beside_gc(dict.fromkeys(images, store), images, store)
    for vm, data in images.items():
        assert read_back(store, manifests[vm], "vda") == data
    assert verify_store(store).ok and len(chunk_files(store)) == 8


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
    with store.begin_backup("web", kind="incremental", parent=parent) as session:
        writer = session.disk("vda", len(data))
        for n in range(3):
            assert writer.reuse(n)
        child = session.commit()
    assert prune(store, "web", RetentionPolicy(keep_last=1)).removed == (parent.backup_id,)
    age(chunk_files(store))
    collect_garbage(store, grace=timedelta(0))
    assert read_back(store, child, "vda") == data


# --- stats ----------------------------------------------------------------


def test_stats_numbers(tmp_path):
    store = new_store(tmp_path)
    a = backup_image(store, "web", {"vda": disk_image("rrz", seed=1)})
    b = backup_image(store, "web", {"vda": disk_image("rr", seed=1) + disk_image("t", seed=2)})
    sizes = {p.name: p.stat().st_size for p in chunk_files(store)}
    stats = store_stats(store)
    assert (stats.backups, stats.logical_bytes, stats.zero_bytes) == (2, 6 * CHUNK, CHUNK)
    assert (stats.chunks, stats.unique_bytes, stats.stored_bytes) == (3, 3 * CHUNK, sum(sizes.values()))
    assert stats.dedup_ratio == pytest.approx(5 / 3)
    assert stats.compression_ratio == pytest.approx(3 * CHUNK / sum(sizes.values()))
    usage = {u.backup_id: u for u in stats.per_backup}
    text_chunk = chunk_path(store, b, "vda", 2).name
    assert (usage[a.backup_id].unique_chunks, usage[a.backup_id].unique_stored_bytes) == (0, 0)
    assert (usage[b.backup_id].unique_chunks, usage[b.backup_id].unique_stored_bytes) == (1, sizes[text_chunk])
