#!/usr/bin/env python3
"""Snapshot latency and merge throughput, against `qemu-img commit` of the same data in one run.

A running VM (no guest OS: the block layer is what is measured) with one qcow2 disk:
  live snapshot         SnapshotService.create of the running VM, 50 times with a small write
                        between: p50 / p95 latency (reconcile + overlay + one transaction + record)
  commit (live)         delete a snapshot whose child layer holds --size MiB: active-layer
                        block-commit, READY, pivot
  pull (live)           delete a snapshot whose own layer holds --size MiB: block-stream into
                        the active layer
  commit (offline)      the same commit of a stopped VM (qemu-img commit through Cairn)
  ceiling               `qemu-img commit` of an overlay holding the same --size MiB
printed as MB/s of the data moved, with the ratio of each merge to the ceiling.
Run: .venv/bin/python bench/snapshot.py [--size MiB]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from backup_helpers import root_node

from appliance.context import Appliance

MB = 1_000_000
MiB = 1 << 20
DISK = 2 << 30
SNAPSHOTS = 50
WRITE = 4 * MiB            # one qemu-io write request


async def write_live(app: Appliance, vm: str, mib: int, pattern: int) -> None:
    """`mib` MiB of a pattern at the start of the disk, through QEMU, flushed."""
    async with app.driver.session(vm) as s:
        node = await root_node(s, "vda")
        for offset in range(0, mib * MiB, WRITE):
            await s.qemu_io(node, f"write -P {pattern:#x} {offset} {WRITE}")
        await s.qemu_io(node, "flush")


def write_offline(image: str, mib: int, pattern: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} 0 {mib * MiB}", image],
                   check=True, capture_output=True)


async def timed(step: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await step()
    return time.perf_counter() - start


async def snapshot_latency(app: Appliance) -> list[float]:
    app.vms.create("lat", [DISK])
    await app.vms.start("lat")
    try:
        latencies = []
        for n in range(SNAPSHOTS):
            await write_live(app, "lat", 1, n + 1)
            latencies.append(await timed(lambda n=n: app.snapshots.create("lat", f"s{n}")))
        return latencies
    finally:
        await app.vms.stop("lat", timeout=5, force=True)


async def live_merge(app: Appliance, vm: str, via: str, mib: int) -> float:
    """Seconds to delete a snapshot with `mib` MiB to move: above it for a commit, in it for a pull."""
    app.vms.create(vm, [DISK])
    await app.vms.start(vm)
    try:
        if via == "pull":
            await write_live(app, vm, mib, 0x5A)
        await app.snapshots.create(vm, "s")
        if via == "commit":
            await write_live(app, vm, mib, 0x5A)
        return await timed(lambda: app.snapshots.delete(vm, "s", via=via))
    finally:
        await app.vms.stop(vm, timeout=5, force=True)


async def offline_commit(app: Appliance, mib: int) -> float:
    app.vms.create("off", [DISK])
    await app.snapshots.create("off", "s")
    write_offline(app.vms.spec("off").disks[0].path, mib, 0x5A)
    return await timed(lambda: app.snapshots.delete("off", "s", via="commit"))


def qemu_img_commit(folder: Path, mib: int) -> float:
    base, top = folder / "base.qcow2", folder / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), str(DISK)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)], check=True)
    write_offline(str(top), mib, 0x5A)
    start = time.perf_counter()
    subprocess.run(["qemu-img", "commit", "-q", "-d", str(top)], check=True)
    return time.perf_counter() - start


async def bench(work: Path, mib: int) -> None:
    app = Appliance.open(str(work / "data"))
    latencies = await snapshot_latency(app)
    ceiling = qemu_img_commit(work, mib)
    merges = {"commit (live, active layer)": await live_merge(app, "com", "commit", mib),
              "pull (live, block-stream)": await live_merge(app, "pul", "pull", mib),
              "commit (offline, qemu-img)": await offline_commit(app, mib)}

    quantiles = statistics.quantiles(latencies, n=20)
    print(f"live snapshot latency over {len(latencies)}: p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p95 {quantiles[18] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    rate = mib * MiB / MB
    print(f"\n{'merge of ' + str(mib) + ' MiB':34} {'MB/s':>9} {'× qemu-img commit':>18}")
    print(f"{'ceiling: qemu-img commit':34} {rate / ceiling:9.0f} {1:18.2f}")
    for name, seconds in merges.items():
        print(f"{name:34} {rate / seconds:9.0f} {ceiling / seconds:18.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="MiB of data each merge moves (default 256)")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="cairn-bench-") as work:
        asyncio.run(bench(Path(work), args.size))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
