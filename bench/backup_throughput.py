#!/usr/bin/env python3
"""Backup and restore throughput against the ceilings of this machine, measured in one run.

A 2 GiB qcow2 disk of mixed data (1/3 compressible binaries, 1/3 random, 1/3 holes) is attached
to a running guest. Printed, all as MB/s of data bytes (allocated bytes; holes cost nothing):
  full backup           fleecing export → libnbd → blake3 + zstd → packs of blocks
  incremental           time for 1% of the disk dirtied in clustered 64 KiB writes
  restore               store → verified blocks → sparse raw file (fsync'd)
  ceilings              nbdcopy of the same export to null:; zstd of the same data on all cores
                        at the store's level; writing the same stored bytes to the store's disk
and the ratio of each backup figure to the lowest ceiling (target: full ≥ 0.8×).
Run: `make bench` (or .venv/bin/python bench/backup_throughput.py [--keep DIR]).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from backup_helpers import root_node
from guest.build import build_guest

from appliance.context import Appliance
from dedup import Store
from dedup.codec import BlockCodec
from restore import restore_disk

MB = 1_000_000
MiB = 1 << 20
DISK = 2 << 30
SEGMENT = 16 * MiB


def mixed_image(path: Path) -> int:
    """Write the mixed raw image; returns its data bytes."""
    corpus = bytearray()
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/bin"):
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file() and not f.is_symlink() and len(corpus) < 256 * MiB:
                try:
                    corpus += f.read_bytes()
                except OSError:
                    pass
    data = 0
    with open(path, "wb") as out:
        out.truncate(DISK)
        for n, off in enumerate(range(0, DISK, SEGMENT)):
            kind = n % 3
            if kind == 2:
                continue                       # hole
            start = (off * 7) % max(1, len(corpus) - SEGMENT)
            block = os.urandom(SEGMENT) if kind == 1 else bytes(corpus[start:start + SEGMENT])
            out.seek(off)
            out.write(block)
            data += len(block)
    return data


def wait_ready(serial: Path, timeout: float = 120) -> None:
    """The guest writes its boot pattern first; measuring before would count those writes as dirty."""
    deadline = time.monotonic() + timeout
    while "CAIRN: READY" not in (serial.read_text(errors="replace") if serial.exists() else ""):
        if time.monotonic() > deadline:
            raise SystemExit(f"the bench guest did not boot: {serial}")
        time.sleep(0.2)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


async def nbdcopy_ceiling(appliance: Appliance, vm: str, sock: Path) -> float:
    async with appliance.driver.session(vm) as s:
        node = await root_node(s, "vda")
        await s.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(sock)}}})
        await s.execute("block-export-add", {"type": "nbd", "id": "ceil", "node-name": node, "name": "vda",
                                             "writable": False})
    try:
        seconds, _ = timed(subprocess.run, ["nbdcopy", f"nbd+unix:///vda?socket={sock}", "null:"], check=True)
    finally:
        async with appliance.driver.session(vm) as s:
            await s.execute("block-export-del", {"id": "ceil"})
            while await s.execute("query-block-exports"):
                await asyncio.sleep(0.05)
            await s.execute("nbd-server-stop")
    return seconds


def zstd_ceiling(raw: Path, block: int, level: int) -> tuple[float, list[bytes]]:
    """Compress the image's data blocks on all cores with the store's own codec (one compressor
    per thread), without reading, hashing or writing."""
    with open(raw, "rb") as f:
        blocks = [c for c in iter(lambda: f.read(block), b"") if c.count(0) != len(c)]
    codec = BlockCodec(level, block)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        seconds, frames = timed(lambda: [stored for _, stored in pool.map(lambda b: codec.encode(b, b""), blocks)])
    return seconds, frames


def write_ceiling(frames: list[bytes], folder: Path) -> float:
    target = folder / "write-ceiling.tmp"

    def write() -> None:
        with open(target, "wb") as f:
            f.writelines(frames)
            os.fsync(f.fileno())
    seconds, _ = timed(write)
    target.unlink()
    return seconds


def bench_main(measure: Callable[[Path], object], description: str | None) -> None:
    """Run `measure` in a scratch directory under .cache (or --keep DIR, kept afterwards)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = ap.parse_args()
    (ROOT / ".cache").mkdir(exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="cairn-bench-", dir=ROOT / ".cache"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}  work: {work}")
    try:
        measure(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    bench_main(run, __doc__)


def run(work: Path) -> None:
    guest = build_guest()
    raw = work / "mixed.raw"
    data_bytes = mixed_image(raw)
    appliance = Appliance.open(str(work / "data"))
    disk = work / "data" / "vms" / "bench" / "vda.qcow2"
    appliance.vms.create("bench", [DISK], kernel=str(guest.kernel), initrd=str(guest.initrd),
                         append="console=ttyS0 quiet cairn.mode=idle")
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    asyncio.run(appliance.vms.start("bench"))
    wait_ready(appliance.settings.run_dir / "bench" / "serial.log")
    store = appliance.store
    try:
        print(f"disk: {DISK / MiB:.0f} MiB virtual, {data_bytes / MiB:.0f} MiB data; store blocks of "
              f"{store.config.block_size // MiB} MiB, zstd level {store.config.zstd_level}")
        t_copy = asyncio.run(nbdcopy_ceiling(appliance, "bench", work / "ceil.sock"))
        t_full, result = timed(lambda: asyncio.run(appliance.backups.create(appliance.vms.spec("bench"))))
        full = result.manifest
        stored = sum(d.stats.bytes_stored for d in full.disks)

        dirty = DISK // 100
        async def dirty_one_percent() -> None:
            async with appliance.driver.session("bench") as s:
                node = await root_node(s, "vda")
                for off in range(300 * MiB, 300 * MiB + dirty, 64 << 10):
                    await s.qemu_io(node, f"write -P 0x{(off >> 16) & 0xff:02x} {off} 64k")
        asyncio.run(dirty_one_percent())
        t_inc, inc = timed(lambda: asyncio.run(appliance.backups.create(appliance.vms.spec("bench"))))
        inc_read = sum(d.stats.bytes_read for d in inc.manifest.disks)

        target = work / "restored.raw"
        t_restore, _ = timed(restore_disk, Store.open(appliance.settings.store_dir), full.backup_id, "vda", target)
        target.unlink()

        t_zstd, frames = zstd_ceiling(raw, store.config.block_size, store.config.zstd_level)
        t_write = write_ceiling(frames, appliance.settings.store_dir)
    finally:
        asyncio.run(appliance.vms.stop("bench", timeout=5, force=True))

    def rate(seconds: float) -> float:
        return data_bytes / seconds / MB

    ceilings = {"nbdcopy export → null:": rate(t_copy), "zstd, all cores": rate(t_zstd),
                "write stored bytes + fsync": rate(t_write)}
    lowest = min(ceilings.values())
    print(f"\nstored {stored / MiB:.0f} MiB for {data_bytes / MiB:.0f} MiB of data "
          f"(ratio {data_bytes / max(stored, 1):.2f})")
    print(f"{'measure':34} {'MB/s':>9} {'× lowest ceiling':>17}")
    for name, value in ceilings.items():
        print(f"ceiling: {name:25} {value:9.0f}")
    print(f"{'full backup':34} {rate(t_full):9.0f} {rate(t_full) / lowest:17.2f}")
    print(f"{'restore (raw, sparse, fsync)':34} {rate(t_restore):9.0f} {rate(t_restore) / lowest:17.2f}")
    print(f"incremental, 1% clustered dirty: {t_inc:.2f} s, read {inc_read / MiB:.1f} MiB "
          f"(full backup took {t_full:.2f} s)")
    print(f"load average after: {os.getloadavg()}")
    verdict = "PASS" if rate(t_full) >= 0.8 * lowest else "BELOW TARGET"
    print(f"full backup / lowest ceiling = {rate(t_full) / lowest:.2f} (target ≥ 0.80): {verdict}")


if __name__ == "__main__":
    main()
