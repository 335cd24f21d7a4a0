"""Hosts as a pool: two SSH hosts, each a network namespace with its own sshd (host_lab.py),
sharing one directory as the storage of their compute pool.

- An HA VM's host is cut off the network while its QEMU runs on: HA waits, since the VM's disk
  is still locked (no proof it stopped); once the host's QEMUs are killed, the lock is free, the
  VM is fenced and restarts on the other host, where the guest finds what it wrote before. A
  watcher counts the VM's QEMUs on all hosts every 50 ms from start to end: never two.
- A running guest migrates live while it writes, and back: every write lands once, byte for byte, and
  the guest on the target goes on from where it was (no boot).
- Placement on the hosts as they answer: by the memory their VMs take and the VMs' groups.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from backup_helpers import run
from guest.harness import MiB
from host_lab import HostLab
from job_helpers import job_done
from sqlalchemy import select

from appliance.catalog.query import ListQuery
from appliance.context import Appliance
from appliance.errors import ConflictError
from appliance.jobs.records import EventRecord
from appliance.vms.migrate import VMMigration
from appliance.vms.service import VMOptions
from vmm.placement import PlacementError, SchedulingGroup

DISK = 512 * MiB          # the journal is at 300 MiB, the writer's chunks at 200 MiB + n MiB
JOURNAL = 300 * MiB
ENTRY = 64 * 1024
SERIAL_TIMEOUT = 120.0
CAIRN = str(Path(sys.executable).with_name("cairn"))


def pool_of_two(appliance: Appliance, lab: HostLab) -> None:
    """Hosts a and b registered (their agents installed), compute pool "pair" of them, storage
    pool "shared" on the directory both see; HA notices a silent host after 2 s."""
    for host in lab.hosts.values():
        appliance.hosts.add(host.name, f"ssh://{host.ssh.user}@{host.address}:{host.ssh.port}", kind="ssh",
                            key_file=str(host.ssh.key_file), known_hosts=str(host.ssh.known_hosts),
                            agent_dir=str(host.agent_dir))
    appliance.vms.pools.create_compute("pair", ["a", "b"])
    appliance.vms.pools.create_storage("shared", "dir", str(lab.shared))
    appliance.vms.placement.pool.connect_timeout = 2.0


def new_vm(appliance: Appliance, guest_kernel, name: str, append: str, on_a: bool = True,
           memory_mib: int = 256) -> None:
    appliance.vms.create(name, [DISK], memory_mib=memory_mib, kernel=str(guest_kernel.kernel),
                         initrd=str(guest_kernel.initrd), append=f"console=ttyS0 quiet {append}",
                         options=VMOptions(storage_pool="shared", compute_pool="pair"))
    if on_a:   # both hosts are alike (one kernel): this makes host a the one placement prefers
        appliance.vms.save_group(SchedulingGroup(f"{name}-on-a", "vm-host-affinity", "preferred",
                                                 frozenset({name}), frozenset({"a"})))


def serial(lab: HostLab, host: str, vm: str) -> str:
    try:
        return (lab.hosts[host].agent_dir / "run" / vm / "serial.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_serial(lab: HostLab, host: str, vm: str, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + SERIAL_TIMEOUT
    while not (found := re.search(pattern, serial(lab, host, vm))):
        assert time.monotonic() < deadline, f"{vm} on {host} never printed {pattern!r}:\n{serial(lab, host, vm)[-2000:]}"
        time.sleep(0.2)
    return found


def wait_for(predicate, what: str, timeout: float = SERIAL_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def events(appliance: Appliance, kind: str) -> list[EventRecord]:
    with appliance.catalog() as s:
        return list(s.scalars(select(EventRecord).where(EventRecord.kind == kind)))


def disk_hashes(appliance: Appliance, vm: str, offsets: list[int], scratch: Path) -> list[str]:
    """The SHA-256 of the 64 KiB at each offset of the VM's disk, as the guest sees it."""
    raw = scratch / f"{vm}.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", appliance.vms.spec(vm).disks[0].path, str(raw)],
                   check=True)
    with raw.open("rb") as disk:
        return [hashlib.sha256(os.pread(disk.fileno(), ENTRY, offset)).hexdigest() for offset in offsets]


@contextmanager
def never_twice(lab: HostLab, vm: str) -> Iterator[list[str]]:
    """Looks for the VM's QEMUs on every host every 50 ms while the block runs; any moment it
    saw them on two hosts at once is listed, and there must be none."""
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            # By host: a QEMU that daemonizes is two processes for an instant.
            running = {host: pids for host in lab.hosts if (pids := lab.qemus(host, vm))}
            if len(running) > 1:
                seen.append(f"{time.monotonic():.2f}: {running}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()
    assert seen == [], f"VM {vm} ran on two hosts at once: {seen}"


@pytest.mark.slow
def test_ha_restarts_a_vm_on_another_host_only_once_its_host_is_fenced(appliance, lab, guest_kernel, tmp_path):
    pool_of_two(appliance, lab)
    # 2 GiB the guest hardly touches: placement counts them taken on its host all the same.
    new_vm(appliance, guest_kernel, "web", "cairn.journal=on", memory_mib=2048)
    appliance.vms.set_ha("web", True)
    with never_twice(lab, "web"):
        assert run(appliance.vms.start("web")).host == "a"
        first = wait_serial(lab, "a", "web", r"JOURNAL-WROTE k=0 sha256=(\w+)")[1]

        # Placement as the hosts answer: web's memory is owed on a (both hosts are one machine
        # here, with one MemAvailable), so another VM goes to b, unless a mandatory group keeps
        # it beside web.
        new_vm(appliance, guest_kernel, "db", "", on_a=False)
        db = appliance.vms.spec("db")
        assert run(appliance.vms.placement.choose(db)).name == "b"
        # A paused start stays here (Cairn resumes VMs only here), which pair does not have.
        with pytest.raises(ConflictError, match=r"db starts paused only on this machine .*not in its compute pool \(a, b\)"):
            run(appliance.vms.start("db", paused=True))
        assert appliance.vms.show("db").status.state == "stopped"
        appliance.vms.save_group(SchedulingGroup("with-web", "vm-affinity", "mandatory", frozenset({"web", "db"})))
        assert run(appliance.vms.placement.choose(db)).name == "a"

        with appliance.vms.supervised(interval=0.3, down_after=1.0):
            # Cut off while its QEMU runs on: the disk's lock is held, so there is no proof.
            lab.cut("a")
            [waiting] = wait_for(lambda: events(appliance, "vm.ha.waiting"), "HA to report that it waits")
            assert "still holds the write lock" in waiting.message, waiting.message
            time.sleep(2)   # a few more rounds, none of which may start it elsewhere
            assert lab.qemus("b", "web") == [] and len(lab.qemus("a", "web")) == 1
            assert appliance.vms.show("web").status.state == "unknown"
            # Listings ask each host once: web's silent one makes it unknown, not stopped.
            assert {v.spec.name: (v.host, v.status.state) for v in appliance.vms.list()} == {
                "web": ("a", "unknown"), "db": ("local", "stopped")}
            assert [v.spec.name for v in appliance.vms.page(ListQuery.parse(filters=["state:eq:unknown"]))] == ["web"]
            # web is taken to run on where it was meant to: db, bound to it, has no host now.
            with pytest.raises(PlacementError, match=r"with-web \(vm-affinity\) leave no host; a did not answer"):
                run(appliance.vms.placement.choose(db))

            # The host's QEMUs die: the lock goes with them, and the VM restarts on b.
            assert lab.kill_qemus("a")
            wait_for(lambda: lab.qemus("b", "web"), "the VM to run on b")
            [restarted] = wait_for(lambda: events(appliance, "vm.ha.restarted"), "the restart event")
            assert restarted.data == {"restarts": 1, "from": "a", "to": "b", "proof": "LOCKS_FREE"}
            assert restarted.message.endswith("host a does not answer and no process holds a write lock on its disks")
            # The guest on b finds what it wrote on a, then writes its next entry.
            found = wait_serial(lab, "b", "web", r"JOURNAL-ENTRY k=0 sha256=(\w+)")[1]
            second = wait_serial(lab, "b", "web", r"JOURNAL-WROTE k=1 sha256=(\w+)")[1]
            assert found == first
            assert appliance.vms.show("web").host == "b"
            [running] = appliance.vms.page(ListQuery.parse(filters=["state:eq:running"]))
            assert (running.spec.name, running.host) == ("web", "b")

            # Host a answers again, its QEMU gone: the VM stays where it runs.
            lab.plug("a")
            wait_for(lambda: appliance.vms.placement.pool.statuses("a").get("web"), "host a to answer")
            time.sleep(1)
            assert appliance.vms.placement.pool.statuses("a")["web"].state == "crashed"
            assert lab.qemus("a", "web") == [] and len(lab.qemus("b", "web")) == 1
            assert len(events(appliance, "vm.ha.restarted")) == 1
            with pytest.raises(ConflictError, match="host b runs Cairn's VMs web: migrate or stop them first"):
                appliance.hosts.remove("b")
        run(appliance.vms.stop("web", force=True))
        with pytest.raises(ConflictError, match="VM web is stopped: only a running VM migrates"):
            VMMigration(appliance.vms).check("web", "a")
    # Byte for byte on the disk: what the guest wrote on a, and then on b.
    assert disk_hashes(appliance, "web", [JOURNAL, JOURNAL + ENTRY], tmp_path) == [first, second]


# 1 s apart, the writer outlasts both migrations even on a loaded machine: the guest writes
# on a, on b, and on a again. (n < 100: the chunks stay below the journal's offset.)
WRITES = 99
WRITE_LINE = re.compile(r"CAIRN: WRITE n=(\d+) offset=\d+ sha256=vda:(\w+)")


@pytest.mark.slow
def test_a_running_guest_migrates_live_and_keeps_every_write(appliance, api_client, lab, guest_kernel, tmp_path):
    pool_of_two(appliance, lab)
    new_vm(appliance, guest_kernel, "mover", f"cairn.mode=writer cairn.writes={WRITES} cairn.interval=1")
    assert api_client.post("/api/v1/vms/mover/start").json()["host"] == "a"
    wait_serial(lab, "a", "mover", r"CAIRN: WRITE n=5 ")

    refused = api_client.post("/api/v1/vms/mover/migrations", json={"host": "local"})
    assert refused.status_code == 409 and "compute pool pair has a, b" in refused.json()["error"]["message"]
    job = job_done(api_client, api_client.post("/api/v1/vms/mover/migrations", json={"host": "b"}))
    assert job["state"] == "succeeded", job
    assert job["result"]["from"] == "a" and job["result"]["to"] == "b" and job["result"]["downtime_ms"] < 5000
    assert lab.qemus("a", "mover") == [] and len(lab.qemus("b", "mover")) == 1
    assert api_client.get("/api/v1/vms/mover").json()["state"] == "running"
    # The guest goes on writing on b (its QEMU there started a new serial log).
    wait_serial(lab, "b", "mover", WRITE_LINE.pattern)
    on_a = serial(lab, "a", "mover")
    assert "WRITER-DONE" not in on_a

    # And back, from the command line (another process, its own job engine).
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance.settings.data_dir)}
    back = subprocess.run([CAIRN, "vm", "migrate", "mover", "a", "--json"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert back.returncode == 0 and json.loads(back.stdout)["to"] == "a", back.stderr
    assert lab.qemus("b", "mover") == [] and len(lab.qemus("a", "mover")) == 1
    on_b = serial(lab, "b", "mover")
    wait_serial(lab, "a", "mover", WRITE_LINE.pattern)
    run(appliance.vms.stop("mover", force=True))
    on_a_again = serial(lab, "a", "mover")

    for where, log in (("b", on_b), ("a, back", on_a_again)):
        assert "INIT" not in log, f"the guest booted again on {where}: that is a restart, not a migration"
        assert WRITE_LINE.search(log), f"the guest wrote nothing on {where}"
    writes = [(int(n), sha) for n, sha in WRITE_LINE.findall(on_a + on_b + on_a_again)]
    # Each write once, in order: the guest ran on one host at a time, and went on where it was.
    assert [n for n, _ in writes] == list(range(len(writes)))
    on_disk = disk_hashes(appliance, "mover", [(200 + n) * MiB for n, _ in writes], tmp_path)
    assert on_disk == [sha for _, sha in writes], "a write is not on the disk as the guest wrote it"
