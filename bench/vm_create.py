#!/usr/bin/env python3
"""VMs created and started by concurrent API requests, beside ZStack's published figures.

`cairn serve` runs on a fresh data dir; for each round, N clients at once each send one
POST /api/v1/vms {"name", "disks": ["1G"], "memory_mib": 64, "start": ...}, which answers once the
VM's QEMU is up and its monitor answers (ZStack's figures likewise stop at the VM running, not at
its OS booted). Printed per round: the time until the last answer, per VM, the requests' p50 and
slowest, and the appliance's own CPU per VM (the server process and what it ran: qemu-img; not
QEMU, which runs on daemonized): a figure the machine's other load disturbs little.

Guests run on TCG here (no KVM), each taking a core while it runs firmware: 100 of them would
starve the 2 cores the appliance needs to start them, so rounds of 100 start their guests paused
(QEMU -S: the machine is fully set up, no guest code runs; `"start": "paused"`) and measure the
appliance's own cost, not the guests'. 1 and 10 run both ways.

ZStack (published, KVM hosts): 1 VM 0.51 s, 10 VMs 1.55 s, 100 VMs 11.33 s, 1000 VMs 103 s.
Run: .venv/bin/python bench/vm_create.py [--counts 1,10,100] [--running-up-to 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import httpx
from api import served

from appliance.access.roles import Role
from appliance.context import Appliance

PASSWORD = "bench-password-1"
ZSTACK = {1: 0.51, 10: 1.55, 100: 11.33, 1000: 103.0}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its waited-for children (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def one_round(client: httpx.Client, server_pid: int, count: int, start: str) -> tuple[float, list[float], float]:
    """(seconds until the last answer, each request's seconds, appliance CPU seconds) for `count`
    VMs created and started at once; then they are stopped and deleted."""
    names = [f"{start[0]}{count}-{i:04d}" for i in range(count)]

    def create(name: str) -> float:
        began = time.perf_counter()
        answer = client.post("/vms", json={"name": name, "disks": ["1G"], "memory_mib": 64, "start": start})
        if answer.status_code != 201 or answer.json()["state"] != start:
            raise SystemExit(f"creating {name}: {answer.status_code} {answer.text}")
        return time.perf_counter() - began

    cpu = cpu_seconds(server_pid)
    began = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        latencies = list(pool.map(create, names))
    wall = time.perf_counter() - began
    cpu = cpu_seconds(server_pid) - cpu
    with ThreadPoolExecutor(min(count, 16)) as pool:
        list(pool.map(lambda name: remove(client, name), names))
    return wall, latencies, cpu


def remove(client: httpx.Client, name: str) -> None:
    client.post(f"/vms/{name}/stop", json={"force": True}).raise_for_status()
    client.delete(f"/vms/{name}").raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10,100", help="VMs per round, comma-separated")
    parser.add_argument("--running-up-to", type=int, default=10,
                        help="rounds up to this size also start their guests running (TCG)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="cairn-bench-create-", dir="/tmp") as tmp:
        data_dir = Path(tmp)
        appliance = Appliance.open(str(data_dir))
        appliance.users.create("bench-admin", PASSWORD, Role.ADMIN)
        token = appliance.auth.login("bench-admin", PASSWORD).token
        with served(data_dir, None) as (base, server), httpx.Client(
                base_url=base, verify=False, timeout=600, headers={"Authorization": f"Bearer {token}"},
                limits=httpx.Limits(max_connections=max(counts))) as client:
            client.put("/deletion-rules/vm", json={"mode": "immediate"}).raise_for_status()
            server_pid = server.pid
            one_round(client, server_pid, 1, "paused")   # warm-up: the first request of each router builds it
            print(f"{'VMs':>5} {'guests':>7} {'all running':>12} {'per VM':>8} {'request p50':>12} {'slowest':>8}"
                  f" {'appliance CPU/VM':>17} {'ZStack':>8}")
            for count in counts:
                for start in ("running", "paused") if count <= args.running_up_to else ("paused",):
                    wall, latencies, cpu = one_round(client, server_pid, count, start)
                    zstack = f"{ZSTACK[count]:.2f} s" if count in ZSTACK else ""
                    print(f"{count:>5} {start:>7} {wall:>10.2f} s {wall / count * 1e3:>5.0f} ms"
                          f" {statistics.median(latencies):>10.2f} s {max(latencies):>6.2f} s"
                          f" {cpu / count * 1e3:>14.0f} ms {zstack:>8}")
    print(f"rounds above {args.running_up_to} VMs: guests paused (QEMU -S), the appliance's own cost; "
          "ZStack: published figures, KVM hosts")
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
