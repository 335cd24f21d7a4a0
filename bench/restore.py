#!/usr/bin/env python3
"""Restore throughput against this machine's ceiling, measured in the same run.

A raw disk image of mixed data (1/3 random, 1/3 compressible text, 1/3 holes) is backed up into a
fresh store; then, for a thin qcow2 and for a sparse raw target, printed as MB/s of data bytes:
  restore    store → verified blocks → target (qcow2 through qemu-nbd), flushed
  ceiling    `qemu-img convert` of the same bytes from the page-cached raw image to the same
             kind of target, flushed
and their ratio (target ≥ 0.8×). The machine is shared: restore and ceiling run in turns,
--repeat times each, and the best time of each counts; the load average is printed with it.
Run: .venv/bin/python bench/restore.py [--size MiB] [--block KiB] [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from restore_helpers import backup_file

from dedup import Store
from restore import restore_disk

MB = 1_000_000
MiB = 1 << 20
SEGMENT = 8 * MiB


def mixed_image(path: Path, size: int) -> int:
    """Write the image; returns its data bytes (holes excluded)."""
    rng = random.Random(1)
    words = [b"restore ", b"chunk ", b"qemu ", b"cairn ", b"block\n", b"0123456789 "]
    text = b"".join(rng.choice(words) for _ in range(SEGMENT // 4))[:SEGMENT]
    data = 0
    with open(path, "wb") as out:
        out.truncate(size)
        for n, offset in enumerate(range(0, size, SEGMENT)):
            if n % 3 == 2:
                continue
            out.seek(offset)
            block = rng.randbytes(SEGMENT) if n % 3 == 0 else text
            data += out.write(block[: size - offset])
    return data


def flushed(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def timed_convert(source: Path, target: Path, fmt: str) -> float:
    started = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(source), str(target)], check=True)
    flushed(target)
    return time.perf_counter() - started


def warm(*folders: Path) -> None:
    """Read everything once, so both sides start from the page cache."""
    for folder in folders:
        for f in folder.rglob("*"):
            if f.is_file():
                f.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="disk size in MiB")
    parser.add_argument("--block", type=int, default=1024, help="store block size in KiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, the best counts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-restore-", dir=ROOT) as scratch:
        work = Path(scratch)
        source = work / "source.raw"
        data = mixed_image(source, args.size * MiB)
        store = Store.init(work / "store", block_size=args.block << 10)
        backup_id = backup_file(store, "bench", "vda", source)
        print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}  "
              f"disk: {args.size} MiB, {data / MB:.0f} MB of data, blocks of {args.block} KiB")
        for fmt in ("qcow2", "raw"):
            ceilings, restores = [], []
            for _ in range(args.repeat):
                warm(work / "store", source.parent)
                ceilings.append(timed_convert(source, work / f"ceiling.{fmt}", fmt))
                started = time.perf_counter()
                restore_disk(store, backup_id, "vda", work / f"restored.{fmt}", fmt=fmt)
                restores.append(time.perf_counter() - started)
                subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt, str(source),
                                str(work / f"restored.{fmt}")], check=True)
                for leftover in (work / f"ceiling.{fmt}", work / f"restored.{fmt}"):
                    leftover.unlink()
            ceiling, seconds = min(ceilings), min(restores)
            print(f"{fmt:6} restore {data / MB / seconds:7.1f} MB/s   ceiling (qemu-img convert) "
                  f"{data / MB / ceiling:7.1f} MB/s   ratio {ceiling / seconds:.2f}x")
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
