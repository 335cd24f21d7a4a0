#!/usr/bin/env python3
"""The store's choices measured: block size, zstd level, what 1% changed costs, GC and verify at
scale, and a 1 TiB sparse disk's metadata and memory. One run prints everything.

  blocks × level  the bench disk's data (bench/disk.py: 1.3 GiB of system files and random data)
                  backed up from memory into a new store, then restored to a sparse raw file:
                  seconds and CPU seconds of each, bytes stored, distinct blocks, map bytes, and
                  the block index's size in memory (~200 bytes a block)
  1% changed      a 1 GiB random disk, 1% rewritten as scattered 4 KiB writes, scattered 64 KiB
                  writes (4 KiB-aligned) or one run: bytes the incremental stores, and that as a
                  multiple of the bytes changed
  GC, verify      a store of >= 100k blocks (16 KiB blocks, on tmpfs, so the figures are the
                  store's own cost, not the disk's), half of them unreferenced after a prune:
                  seconds against a bare read of every pack
  1 TiB sparse    a 1 TiB qcow2 holding 1 GiB in 1024 runs of 1 MiB at random places, backed up
                  through qemu-nbd like a stopped VM, then again after 10 MiB of 4 KiB writes
                  (incremental through the image's bitmap): metadata each backup added (map
                  pages, index file, manifest) and the backup process's peak RSS

  repeated        four full backups in one process (as a running appliance takes them), each of a
                  fresh copy of the bench disk's image into a store of its own, all kept: seconds, CPU and
                  system CPU seconds of each (packs written around the page cache stay flat; through
                  it, the later ones paid for fresh page-cache memory, dedup/fsutil.py)

  --sftp URL      also the 1 MiB, level 3 ingest into a store on an SFTP server, as a ratio

Run: .venv/bin/python bench/store.py [--dir DIR] [--skip-sparse] [--sftp URL]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from disk import bench_disk

from dedup import BackupManifest, Store, collect_garbage, open_backend, verify_store

MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
BLOCK_SIZES = (256 << 10, MiB, 2 * MiB, 4 * MiB)
LEVELS = (1, 3)
INDEX_BYTES_PER_BLOCK = 200


def timed(work: Callable[[], object]) -> tuple[float, float, object]:
    """(seconds, CPU seconds of this process, result)."""
    cpu, started = time.process_time(), time.perf_counter()
    result = work()
    return time.perf_counter() - started, time.process_time() - cpu, result


def back_up(store: Store, image: bytes | bytearray, parent: BackupManifest | None = None,
            changes: list[tuple[int, int]] | None = None) -> BackupManifest:
    """A backup of an in-memory disk; with a parent, only `changes` (offset, length) are given."""
    view = memoryview(image)
    with store.begin_backup("vm", kind="incremental" if parent else "full", parent=parent) as session:
        writer = session.disk("vda", len(image))
        for offset, length in changes if parent else [(o, MiB) for o in range(0, len(image), MiB)]:
            writer.put(offset, view[offset:offset + length])
        return session.commit()


def restore_seconds(store: Store, manifest: BackupManifest, target: Path) -> tuple[float, float]:
    from restore import restore_disk

    seconds, cpu, _ = timed(lambda: restore_disk(store, manifest.backup_id, "vda", target))
    target.unlink()
    return seconds, cpu


# --- block size × zstd level ----------------------------------------------------------------

def bench_blocks(work: Path, sftp: str | None) -> None:
    disk = bench_disk(ROOT / ".cache")
    image = disk.raw.read_bytes()
    print(f"\nblock size × zstd level: the bench disk ({len(image) // MiB} MiB, {disk.data_bytes // MiB} MiB of "
          f"data) from memory; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'block':>6} {'lvl':>3} {'backup s':>9} {'cpu s':>6} {'stored MiB':>11} {'blocks':>7} {'unique MiB':>11} "
          f"{'maps KiB':>9} {'index MiB':>10} {'restore s':>10} {'cpu s':>6}")
    combos = [(b, lvl) for b in BLOCK_SIZES for lvl in LEVELS] + [(MiB, 2)]
    for block_size, level in combos:
        path = work / f"blocks-{block_size}-{level}"
        store = Store.init(path, block_size=block_size, zstd_level=level)
        seconds, cpu, manifest = timed(lambda store=store: back_up(store, image))
        stats = manifest.disk("vda").stats
        records = [r for p in store.blocks.ensure_loaded().packs.values() for r in p.records]
        unique = sum(r.plain_length for r in records if r.kind == 0)
        r_seconds, r_cpu = restore_seconds(store, manifest, work / "restored.raw")
        print(f"{block_size >> 10:>5}K {level:>3} {seconds:>9.2f} {cpu:>6.2f} {stats.bytes_stored / MiB:>11.1f} "
              f"{stats.blocks_written:>7} {unique / MiB:>11.1f} {stats.metadata_stored / 1024:>9.1f} "
              f"{len(records) * INDEX_BYTES_PER_BLOCK / MiB:>10.2f} {r_seconds:>10.2f} {r_cpu:>6.2f}")
        shutil.rmtree(path)
    if sftp:
        from appliance.settings import Settings

        local, _, _ = timed(lambda: back_up(Store.init(work / "local"), image))
        with Store.init(open_backend(sftp, Settings.resolve().store_access(sftp).ssh)) as remote:
            seconds, _, _ = timed(lambda: back_up(remote, image))
            remote.backend.remove_tree("")
        print(f"over SFTP ({sftp}): {seconds:.2f} s, {local / seconds:.2f}× the local store's speed")


def bench_repeated(work: Path) -> None:
    from store_helpers import ingest_images

    disk = bench_disk(ROOT / ".cache")
    print(f"\nrepeated full backups in one process: the bench disk's image ({disk.data_bytes // MiB} MiB of data), "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'backup':>7} {'seconds':>8} {'cpu s':>6} {'system s':>9}")
    for n in range(1, 5):
        store = Store.init(work / f"repeated-{n}")
        image = work / f"repeated-{n}.raw"
        subprocess.run(["cp", "--sparse=always", str(disk.raw), str(image)], check=True)
        os.sync()
        system = os.times().system
        seconds, cpu, _ = timed(lambda store=store, image=image: ingest_images(store, "bench", {"vda": image}))
        print(f"{n:>7} {seconds:>8.2f} {cpu:>6.2f} {os.times().system - system:>9.2f}")
        store.close()
    for n in range(1, 5):
        shutil.rmtree(work / f"repeated-{n}")
        (work / f"repeated-{n}.raw").unlink()


# --- 1% changed ---------------------------------------------------------------------------------

def bench_changes(work: Path) -> None:
    size = GiB
    rng = random.Random(2)
    base = b"".join(rng.randbytes(MiB) for _ in range(size // MiB))
    changed = size // 100
    runs = {
        "scattered 4K": [(o * 4096, 4096) for o in sorted(rng.sample(range(size // 4096), changed // 4096))],
        "scattered 64K": _apart(rng, size, 65536, changed // 65536),
        "one run": [(rng.randrange(0, (size - changed) // 4096) * 4096, changed)],
    }
    print(f"\n1% changed: a {size // MiB} MiB random disk, {changed / MiB:.1f} MiB rewritten; bytes the "
          "incremental stores (blocks + map pages; x = multiple of the bytes changed)")
    print(f"{'block':>6} " + " ".join(f"{name:>22}" for name in runs))
    for block_size in BLOCK_SIZES:
        path = work / f"changes-{block_size}"
        store = Store.init(path, block_size=block_size, zstd_level=1)
        full = back_up(store, base)
        figures = []
        for changes in runs.values():
            image = bytearray(base)
            for offset, length in changes:
                image[offset:offset + length] = rng.randbytes(length)
            stats = back_up(store, image, parent=full, changes=changes).disk("vda").stats
            stored = stats.bytes_stored + stats.metadata_stored
            figures.append(f"{stored / MiB:>8.2f} MiB {stored / changed:>6.3f}x")
        shutil.rmtree(path)
        print(f"{block_size >> 10:>5}K " + " ".join(f"{f:>22}" for f in figures))


def _apart(rng: random.Random, size: int, length: int, count: int) -> list[tuple[int, int]]:
    """count writes of length at random 4 KiB-aligned places, not overlapping, sorted."""
    starts: list[int] = []
    while len(starts) < count:
        offset = rng.randrange(0, (size - length) // 4096) * 4096
        if all(offset + length <= s or s + length <= offset for s in starts):
            starts.append(offset)
    return [(s, length) for s in sorted(starts)]


# --- GC and verify at scale ------------------------------------------------------------------------

def bench_gc_verify(work: Path, blocks: int) -> None:
    block_size = 16 << 10
    path = work / "many"
    store = Store.init(path, block_size=block_size, pack_size=64 * MiB, zstd_level=1)
    rng = random.Random(3)
    filler = b"cairn packs blocks " * (block_size // 19 + 1)

    def image(seed: int) -> bytes:
        # Unique, compressible blocks: a random head, text after it.
        r = random.Random(seed)
        return b"".join(r.randbytes(512) + filler[:block_size - 512] for _ in range(blocks // 2))
    old = back_up(store, image(1))
    new = back_up(store, image(2))
    store.backend.remove(f"backups/vm/{old.backup_id}/manifest.json")  # pruned
    when = time.time() - 7200
    for pack in (path / "packs").rglob("*"):
        os.utime(pack, (when, when))
    packs = [p for p in (path / "packs").rglob("*") if p.is_file()]
    read_seconds, _, _ = timed(lambda: _bare_read(packs))
    verify_seconds, _, checked = timed(lambda: verify_store(Store.open(path)))
    gc_seconds, _, report = timed(lambda: collect_garbage(Store.open(path), grace=timedelta(hours=1)))
    print(f"\nGC and verify: {blocks} blocks of {block_size >> 10} KiB in {len(packs)} packs on tmpfs, half of them "
          "unreferenced after a prune")
    print(f"  verify {verify_seconds:6.1f} s  {checked.chunks_checked} blocks, ok={checked.ok}; "
          f"{checked.chunks_checked / verify_seconds:,.0f} blocks/s; bare read of the packs {read_seconds:.1f} s")
    print(f"  gc     {gc_seconds:6.1f} s  dropped {report.chunks_removed} blocks, removed {report.packs_removed} packs "
          f"({report.bytes_removed / MiB:.0f} MiB), repacked {report.packs_repacked}; "
          f"{(report.chunks_removed + report.chunks_kept) / gc_seconds:,.0f} blocks/s")
    assert checked.ok and new.backup_id and rng
    shutil.rmtree(path)


def _bare_read(paths: list[Path]) -> None:
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda p: p.read_bytes(), paths))


# --- 1 TiB sparse ---------------------------------------------------------------------------------

def bench_sparse(work: Path) -> None:
    image = work / "sparse.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(TiB)], check=True)
    rng = random.Random(4)
    runs = sorted(rng.sample(range(TiB // 4096 - MiB // 4096), 1024))
    _qemu_io(image, [(r * 4096, rng.randbytes(MiB)) for r in runs], work)
    store = work / "sparse-store"
    Store.init(store).close()
    print("\n1 TiB sparse disk holding 1 GiB (1024 runs of 1 MiB): what each backup added, and its peak RSS")
    full = _child_backup(store, image, None)
    writes = sorted(rng.sample(range(TiB // 4096), 10 * MiB // 4096))
    _qemu_io(image, [(w * 4096, rng.randbytes(4096)) for w in writes], work)
    incremental = _child_backup(store, image, full["checkpoint"])
    for name, figures in (("full", full), ("incremental after 10 MiB of 4 KiB writes", incremental)):
        print(f"  {name}: {figures['seconds']:.1f} s, read {figures['bytes_read'] / MiB:.0f} MiB, stored "
              f"{figures['bytes_stored'] / MiB:.1f} MiB of blocks; metadata {figures['metadata'] / MiB:.2f} MiB "
              f"(map pages {figures['pages'] / MiB:.2f} MiB, index file {figures['index'] / 1024:.0f} KiB, "
              f"manifest {figures['manifest'] / 1024:.1f} KiB); peak RSS {figures['rss'] / MiB:.0f} MiB")


def _qemu_io(image: Path, writes: list[tuple[int, bytes]], scratch: Path) -> None:
    """Each (offset, data) written with qemu-io, 256 writes a run."""
    for start in range(0, len(writes), 256):
        args = []
        for n, (offset, data) in enumerate(writes[start:start + 256]):
            source = scratch / f"write-{n}.bin"
            source.write_bytes(data)
            args += ["-c", f"write -s {source} {offset} {len(data)}"]
        subprocess.run(["qemu-io", "-f", "qcow2", *args, str(image)], check=True, capture_output=True)
    for source in scratch.glob("write-*.bin"):
        source.unlink()


def _child_backup(store: Path, image: Path, since: str | None) -> dict:
    """One backup in a process of its own, so its peak RSS is its own."""
    done = subprocess.run([sys.executable, __file__, "--one-backup", str(store), str(image), since or ""],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def one_backup(store_path: str, image: str, since: str) -> None:
    """The child's side of _child_backup: an offline backup of `image`, stats as JSON on stdout."""
    from appliance.backups.ingest import ingest_point
    from transports.offline import OfflineExport
    from transports.points import Checkpoint

    store = Store.open(store_path)
    checkpoint = f"cairn-bench-{time.time_ns()}"
    parent = store.list_backups("sparse")[-1] if since else None
    export = OfflineExport({"vda": image}, checkpoint, {"vda": Checkpoint(since, image) if since else None})
    index_before = {p.name for p in (Path(store_path) / "index").iterdir()}
    started = time.perf_counter()
    points = export.open()
    try:
        with store.begin_backup("sparse", kind="incremental" if parent else "full", parent=parent,
                                checkpoint=checkpoint) as session:
            for point in points:
                ingest_point(session, point)
            manifest = session.commit()
    except BaseException:
        export.close(success=False)
        raise
    export.close(success=True)
    stats = manifest.disk("vda").stats
    index = sum(p.stat().st_size for p in (Path(store_path) / "index").iterdir() if p.name not in index_before)
    manifest_bytes = (Path(store_path) / "backups" / "sparse" / manifest.backup_id / "manifest.json").stat().st_size
    print(json.dumps({"seconds": time.perf_counter() - started, "checkpoint": checkpoint,
                      "bytes_read": stats.bytes_read, "bytes_stored": stats.bytes_stored,
                      "pages": stats.metadata_stored, "index": index, "manifest": manifest_bytes,
                      "metadata": stats.metadata_stored + index + manifest_bytes,
                      "rss": _peak_rss()}))


def _peak_rss() -> int:
    """This process's peak resident set since its exec (ru_maxrss would count the forking parent's)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--one-backup":
        one_backup(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where the stores on disk go (default: a temp dir)")
    parser.add_argument("--blocks", type=int, default=100_000, help="blocks of the GC and verify store")
    parser.add_argument("--skip-sparse", action="store_true", help="leave out the 1 TiB sparse disk")
    parser.add_argument("--sftp", default=None, help="also ingest into sftp://user@host[:port]/dir (SSH key and "
                        "known_hosts from $CAIRN_STORE_SSH_KEY and $CAIRN_STORE_KNOWN_HOSTS, else ~/.ssh)")
    args = parser.parse_args()
    disk_dir = Path(tempfile.mkdtemp(prefix="cairn-bench-", dir=args.dir or ROOT / ".cache"))
    memory_dir = Path(tempfile.mkdtemp(prefix="cairn-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        bench_blocks(disk_dir, args.sftp)
        bench_repeated(disk_dir)
        bench_changes(memory_dir)
        bench_gc_verify(memory_dir, args.blocks)
        if not args.skip_sparse:
            bench_sparse(disk_dir)
    finally:
        shutil.rmtree(disk_dir, ignore_errors=True)
        shutil.rmtree(memory_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
