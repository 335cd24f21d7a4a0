#!/usr/bin/env python3
"""Pull versus push: the same backups of the same disk, by each transport, in one run.

The 2 GiB mixed disk of backup_throughput.py is attached to a running guest. For each transport
(NBD pull: Cairn reads QEMU's export; NBD push: QEMU writes into qemu-nbd targets first) a full
backup and an incremental after 1% clustered writes are timed. Printed: MB/s of data bytes,
each against the nbdcopy ceiling of the same export measured in the same run, and push's time
as a multiple of pull's (push writes the data once more, into its target, before it is read).
Run: .venv/bin/python bench/backup_transports.py [--keep DIR].
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from backup_helpers import root_node
from backup_throughput import (
    DISK,
    MB,
    MiB,
    bench_main,
    mixed_image,
    nbdcopy_ceiling,
    timed,
    wait_ready,
)
from guest.build import build_guest

from appliance.backups.options import BackupOptions
from appliance.backups.service import BackupService
from appliance.context import Appliance
from dedup import Store

TRANSPORTS = ("pull", "push")


async def dirty_one_percent(appliance: Appliance, vm: str, pattern: int) -> None:
    async with appliance.driver.session(vm) as s:
        node = await root_node(s, "vda")
        for off in range(300 * MiB, 300 * MiB + DISK // 100, 64 << 10):
            await s.qemu_io(node, f"write -P {pattern:#x} {off} 64k")


def measure(work: Path) -> None:
    guest = build_guest()
    raw = work / "mixed.raw"
    data_bytes = mixed_image(raw)
    appliance = Appliance.open(str(work / "data"))
    appliance.vms.create("bench", [DISK], kernel=str(guest.kernel), initrd=str(guest.initrd),
                         append="console=ttyS0 quiet cairn.mode=idle")
    disk = appliance.vms.spec("bench").disks[0].path
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), disk], check=True)
    asyncio.run(appliance.vms.start("bench"))
    wait_ready(appliance.settings.run_dir / "bench" / "serial.log")
    spec = appliance.vms.spec("bench")
    seconds: dict[str, tuple[float, float]] = {}
    try:
        t_copy = asyncio.run(nbdcopy_ceiling(appliance, "bench", work / "ceil.sock"))
        for n, transport in enumerate(TRANSPORTS):
            # A store of its own for each: the second full backup must not find its chunks stored.
            backups = BackupService(appliance.settings, appliance.catalog, appliance.driver,
                                    Store.init(work / f"store-{transport}"))
            options = BackupOptions(transport=transport)
            t_full, _ = timed(lambda b=backups, o=options: asyncio.run(b.create(spec, full=True, options=o)))
            asyncio.run(dirty_one_percent(appliance, "bench", 0x40 + n))
            t_inc, _ = timed(lambda b=backups, o=options: asyncio.run(b.create(spec, options=o)))
            seconds[transport] = (t_full, t_inc)
    finally:
        asyncio.run(appliance.vms.stop("bench", timeout=5, force=True))

    ceiling = data_bytes / t_copy / MB
    print(f"disk: {DISK / MiB:.0f} MiB virtual, {data_bytes / MiB:.0f} MiB data; "
          f"ceiling nbdcopy export → null: {ceiling:.0f} MB/s")
    print(f"{'transport':10} {'full MB/s':>10} {'× ceiling':>10} {'full s':>8} {'1% inc s':>9} {'inc/full':>9}")
    for transport, (t_full, t_inc) in seconds.items():
        rate = data_bytes / t_full / MB
        print(f"{transport:10} {rate:10.0f} {rate / ceiling:10.2f} {t_full:8.2f} {t_inc:9.2f} {t_inc / t_full:9.3f}")
    pull_full, pull_inc = seconds["pull"]
    push_full, push_inc = seconds["push"]
    print(f"push / pull time: full {push_full / pull_full:.2f}×, incremental {push_inc / pull_inc:.2f}×")
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    bench_main(measure, __doc__)


if __name__ == "__main__":
    main()
