#!/usr/bin/env python3
"""The chunk store against this machine's ceilings, measured in one run.

Printed:
  ingest        MB/s of plaintext into a new store with 64, 16 and 4 MiB chunks (half compressible
                binaries, half random), against the lower of two ceilings measured on the same
                data: BLAKE3 + zstd on all cores without writing, and writing + fsyncing the
                same stored bytes to the same disk
  1% changed    bytes an incremental stores after 1% of a random disk is rewritten, scattered
                (4 KiB blocks at random offsets) or clustered (one run), at each chunk size, and
                that as a multiple of the bytes changed (the write amplification of chunking)
  GC, verify    seconds for a store of >= 100k chunks (4 KiB chunks, on tmpfs so the figures are
                the store's own cost, not the disk's), against a bare walk + stat (GC) and a bare
                read of every chunk file (verify)

  --sftp URL    the ingest also into a store on an SFTP server, as MB/s and as a ratio to the local one

Run: .venv/bin/python bench/store.py [--dir DIR] [--ingest-mib N] [--disk-mib N] [--chunks N] [--sftp URL]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from appliance.settings import Settings
from dedup import (
    BackupManifest,
    LocalBackend,
    Store,
    collect_garbage,
    open_backend,
    verify_store,
)
from dedup.codec import ChunkCodec
from dedup.config import StoreConfig
from dedup.store import BackupDir

MB = 1_000_000
MiB = 1 << 20
CHUNK_SIZES = (64 * MiB, 16 * MiB, 4 * MiB)
BLOCK = 4096
WORKERS = os.cpu_count() or 1


def timed(work: Callable[[], object]) -> tuple[float, object]:
    started = time.monotonic()
    result = work()
    return time.monotonic() - started, result


def corpus(size: int) -> bytes:
    """Compressible bytes: the machine's own binaries and libraries."""
    data = bytearray()
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/bin"):
        for f in sorted(Path(folder).rglob("*")):
            if len(data) >= size:
                return bytes(data[:size])
            if f.is_file() and not f.is_symlink():
                try:
                    data += f.read_bytes()
                except OSError:
                    pass
    return bytes(data.ljust(size, b"\0"))


def back_up(store: Store, vm: str, image: bytes | bytearray, parent: BackupManifest | None = None,
            dirty: set[int] | None = None) -> BackupManifest:
    """A backup of an in-memory disk; with a parent, only the chunks in `dirty` are put, the rest reused."""
    view = memoryview(image)
    kind = "incremental" if parent else "full"
    with store.begin_backup(vm, kind=kind, parent=parent, workers=WORKERS) as session:
        writer = session.disk("vda", len(image))
        for n in range(writer.chunk_count):
            if parent is not None and n not in (dirty or set()) and writer.reuse(n):
                continue
            start = n * writer.chunk_size
            writer.put(n, view[start:start + writer.chunk_size])
        return session.commit()


def stored_bytes(manifest: BackupManifest) -> int:
    return sum(d.stats.bytes_stored for d in manifest.disks)


# --- ingest -----------------------------------------------------------------------------------------

def cpu_ceiling(image: bytes, chunk_size: int) -> float:
    """Seconds to hash and compress every chunk on all cores, writing nothing."""
    codec = ChunkCodec(3, chunk_size)
    view = memoryview(image)

    def one(start: int) -> None:
        chunk = view[start:start + chunk_size]
        codec.chunk_id(chunk)
        codec.encode_into(_Null(), chunk, b"")

    with ThreadPoolExecutor(WORKERS) as pool:
        seconds, _ = timed(lambda: list(pool.map(one, range(0, len(image), chunk_size))))
    return seconds


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def write_ceiling(directory: Path, total: int, file_size: int) -> float:
    """Seconds to write and fsync `total` bytes as files of `file_size` on the store's disk."""
    directory.mkdir()
    block = os.urandom(file_size)
    started = time.monotonic()
    for n in range(-(-total // file_size)):
        with open(directory / str(n), "wb") as f:
            f.write(block[:min(file_size, total - n * file_size)])
            os.fsync(f.fileno())
    seconds = time.monotonic() - started
    shutil.rmtree(directory)
    return seconds


def bench_ingest(work: Path, size: int, sftp: str | None) -> None:
    half = size // 2
    image = corpus(half) + os.urandom(size - half)
    print(f"\ningest: {size // MiB} MiB (half binaries, half random), {WORKERS} workers, store in {work}"
          + (f"; and over SFTP to {sftp}" if sftp else ""))
    print(f"{'chunk':>7} {'MB/s':>8} {'stored MiB':>11} {'cpu ceil':>9} {'disk ceil':>10} {'ratio':>6}"
          + (f" {'sftp MB/s':>10} {'ratio':>6}" if sftp else ""))
    for chunk_size in CHUNK_SIZES:
        path = work / f"ingest-{chunk_size // MiB}"
        store = Store.init(path, chunk_size=chunk_size)
        seconds, manifest = timed(lambda store=store: back_up(store, "vm", image))
        stored = stored_bytes(manifest)
        shutil.rmtree(path)
        cpu = size / MB / cpu_ceiling(image, chunk_size)
        disk = size / MB / write_ceiling(work / "ceiling", stored, chunk_size)
        speed = size / MB / seconds
        line = (f"{chunk_size // MiB:>5}Mi {speed:>8.0f} {stored / MiB:>11.0f} {cpu:>9.0f} {disk:>10.0f} "
                f"{speed / min(cpu, disk):>6.2f}")
        if sftp:
            remote = sftp_ingest_speed(f"{sftp}/ingest-{chunk_size // MiB}", chunk_size, image)
            line += f" {remote:>10.0f} {remote / speed:>6.2f}"
        print(line)


def sftp_ingest_speed(url: str, chunk_size: int, image: bytes) -> float:
    """MB/s of the same backup into a new store on an SFTP server, which is removed afterwards."""
    ssh = Settings.resolve().store_access(url).ssh
    with Store.init(open_backend(url, ssh), chunk_size=chunk_size) as store:
        seconds, _ = timed(lambda: back_up(store, "vm", image))
        store.backend.remove_tree("")
    return len(image) / MB / seconds


# --- 1% changed ---------------------------------------------------------------------------------------

def bench_changes(work: Path, size: int) -> None:
    rng = random.Random(2)
    base = os.urandom(size)
    changed = size // 100
    scattered = sorted(rng.sample(range(size // BLOCK), changed // BLOCK))
    run_start = rng.randrange(0, (size - changed) // BLOCK) * BLOCK
    print(f"\n1% changed: {size // MiB} MiB random disk, {changed / MiB:.1f} MiB rewritten; "
          "bytes the incremental stores (x = multiple of the bytes changed)")
    print(f"{'chunk':>7} {'scattered 4K':>16} {'clustered':>16}")
    for chunk_size in CHUNK_SIZES:
        path = work / f"changes-{chunk_size // MiB}"
        store = Store.init(path, chunk_size=chunk_size, zstd_level=1)
        full = back_up(store, "vm", base)
        figures = []
        for offsets in ([b * BLOCK for b in scattered], list(range(run_start, run_start + changed, BLOCK))):
            image = bytearray(base)
            for offset in offsets:
                image[offset:offset + BLOCK] = rng.randbytes(BLOCK)
            dirty = {offset // chunk_size for offset in offsets}
            stored = stored_bytes(back_up(store, "vm", image, parent=full, dirty=dirty))
            figures.append(f"{stored / MiB:>8.1f} MiB {stored / changed:>4.0f}x")
        shutil.rmtree(path)
        print(f"{chunk_size // MiB:>5}Mi {figures[0]:>16} {figures[1]:>16}")


# --- GC and verify at scale ------------------------------------------------------------------------------

def small_chunk_store(path: Path, chunk_size: int) -> Store:
    """A store with chunks far below the 1 MiB minimum of real stores: only so that 100k chunk files
    fit in a benchmark. Built directly: Store.init refuses such a chunk size."""
    config = StoreConfig(chunk_size, 1, "00000000-0000-4000-8000-000000000000", datetime.now(UTC))
    store = Store.init(path, chunk_size=MiB, zstd_level=1)
    config.save(store.backend)
    return Store(LocalBackend(path), config)


def bare_walk(root: Path) -> int:
    files = 0
    for directory, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(directory, name))
            files += 1
    return files


def bare_read(root: Path) -> None:
    paths = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda p: Path(p).read_bytes(), paths))


def bench_gc_verify(work: Path, chunks: int) -> None:
    chunk_size = BLOCK
    path = work / "many"
    store = small_chunk_store(path, chunk_size)
    rng = random.Random(3)
    first = bytearray(os.urandom(chunks * chunk_size))
    old = back_up(store, "vm", first)
    second = bytearray(first)
    replaced = rng.sample(range(chunks), chunks // 10)
    for n in replaced:
        second[n * chunk_size:(n + 1) * chunk_size] = rng.randbytes(chunk_size)
    new = back_up(store, "vm", second, parent=old, dirty=set(replaced))
    store.backend.remove(BackupDir("vm", old.backup_id).file("manifest.json"))  # prune the first
    when = time.time() - 7200
    for directory, _, names in os.walk(path / "chunks"):
        for name in names:
            os.utime(os.path.join(directory, name), (when, when))
    files = bare_walk(path / "chunks")
    walk_seconds, _ = timed(lambda: bare_walk(path / "chunks"))
    gc_seconds, report = timed(lambda: collect_garbage(store, grace=timedelta(hours=1)))
    read_seconds, _ = timed(lambda: bare_read(path / "chunks"))
    verify_seconds, checked = timed(lambda: verify_store(store))
    print(f"\nGC and verify: {files} chunk files of {chunk_size} bytes on tmpfs, "
          f"1 backup of {chunks} chunks left after pruning the other")
    print(f"  gc      {gc_seconds:6.1f} s  removed {report.chunks_removed}, kept {report.chunks_kept}; "
          f"{files / gc_seconds:,.0f} chunks/s; bare walk+stat {walk_seconds:.1f} s, ratio {gc_seconds / walk_seconds:.1f}")
    print(f"  verify  {verify_seconds:6.1f} s  {checked.chunks_checked} chunks, ok={checked.ok}; "
          f"{checked.chunks_checked / verify_seconds:,.0f} chunks/s; bare read {read_seconds:.1f} s, "
          f"ratio {verify_seconds / read_seconds:.1f}")
    assert report.chunks_removed == len(replaced) and checked.ok and new.backup_id
    shutil.rmtree(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where the ingest stores go (default: a temp dir)")
    parser.add_argument("--ingest-mib", type=int, default=768)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--sftp", default=None, help="also ingest into sftp://user@host[:port]/dir (SSH key and "
                        "known_hosts from $CAIRN_STORE_SSH_KEY and $CAIRN_STORE_KNOWN_HOSTS, else ~/.ssh)")
    args = parser.parse_args()
    disk_dir = Path(tempfile.mkdtemp(prefix="cairn-bench-", dir=args.dir))
    memory_dir = Path(tempfile.mkdtemp(prefix="cairn-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        bench_ingest(disk_dir, args.ingest_mib * MiB, args.sftp)
        bench_changes(memory_dir, args.disk_mib * MiB)
        bench_gc_verify(memory_dir, args.chunks)
    finally:
        shutil.rmtree(disk_dir, ignore_errors=True)
        shutil.rmtree(memory_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
