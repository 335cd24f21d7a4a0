#!/usr/bin/env python3
"""Cairn against virtnbdbackup, borg and restic (Debian's packages) on the same disk, in one run.

The disk (bench/disk.py): 2 GiB qcow2, ext4 holding ~1.2 GiB of real files and random data.
Each tool takes a full backup, then an incremental after 1% of the disk (20 MiB in 8 regions
of 2.5 MiB, random data) changed, then restores the latest point; printed: seconds, bytes
the step added to the tool's repository, and Cairn's ratio to each.

  live       a running libvirt domain (type qemu) with the disk as vdb (vda is a small boot disk
             the test guest writes its boot pattern to): virtnbdbackup (its own checkpoints) and
             Cairn (`cairn host backup`'s service, in process) each back up a domain of its own
             with identical disks; the change is written with qemu-io while the domain is shut
             down (libvirt's bitmaps record it), then the domain runs again for the incremental.
             Restore: vdb of the latest point to a qcow2 (virtnbdrestore; Cairn's restore).
  raw image  borg, restic and Cairn (a stopped VM on the image: qemu-nbd, no bitmap, so every
             backup reads it whole) back up the same raw image file; restore to a raw file.

Ceilings from the same run, as MB/s of the disk's data bytes: nbdcopy of the qcow2's NBD export
to null:, zstd of the data's blocks on all cores at the store's level, writing and fsyncing
Cairn's stored bytes to the store's disk. Cairn's CLI start-up (being fixed separately) is
printed on its own: the Cairn figures are its data path, in process.

Every timed step starts after a sync: what the step before wrote (the image's copy, another
tool's repository) is not written back inside the next tool's time. Each tool's repository and
restored disk are deleted once measured and checked, so every tool starts with about the same
free memory: kept, they filled the page cache until the last tool (Cairn's raw image part) ran
with ~1.5 GiB free and took 3.1-3.8 s and 5.3-6.2 CPU s for what takes 2.4 s and 4.2 with more.
The machine is shared: the load average is printed with the results.
Run: `make bench` (or .venv/bin/python bench/peers.py [--keep DIR] [--skip-live] [--skip-raw]).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from disk import BenchDisk, apply_change, bench_disk, scattered_change

MB = 1_000_000
MiB = 1 << 20
TOOLS = ("virtnbdbackup", "borg", "restic")
ZSTD_LEVEL = 0  # Cairn's stores' zstd level, from --zstd-level


@dataclass
class Step:
    seconds: float
    cpu: float  # CPU seconds of this process and the tools it ran (not of QEMU's NBD server)
    stored: int  # bytes the step added to the repository (restores: 0)


@dataclass
class Results:
    steps: dict[tuple[str, str, str], Step] = field(default_factory=dict)  # (part, tool, step) -> result
    ceilings: dict[str, float] = field(default_factory=dict)  # name -> seconds

    def add(self, part: str, tool: str, step: str, measured: tuple[float, float, object], stored: int = 0) -> None:
        seconds, cpu, _ = measured
        self.steps[(part, tool, step)] = Step(seconds, cpu, stored)
        print(f"  {part:5} {tool:13} {step:11} {seconds:7.2f} s  {cpu:6.2f} cpu s  {stored / MiB:9.1f} MiB",
              flush=True)


def _cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(work: Callable[[], object]) -> tuple[float, float, object]:
    """(seconds, CPU seconds, result) of work(), begun with nothing left to write back: what the
    step before wrote (a copy of the image, another tool's repository) is flushed first, so that
    no tool's time pays for another's writes."""
    os.sync()
    cpu, started = _cpu(), time.perf_counter()
    result = work()
    return time.perf_counter() - started, _cpu() - cpu, result


def run(*command: str | Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def same_image(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0


# --- the live part ---------------------------------------------------------------------


def domain_xml(name: str, kernel: Path, initrd: Path, boot: Path, data: Path, serial: Path) -> str:
    root = ET.fromstring(f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel/><initrd/>
      <cmdline>console=ttyS0 quiet cairn.mode=idle</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source/><target dev='vdb' bus='virtio'/></disk>
    <serial type='file'><source/><target port='0'/></serial>
    <controller type='usb' model='none'/><memballoon model='none'/>
  </devices>
</domain>""")
    root.find("os/kernel").text = str(kernel)
    root.find("os/initrd").text = str(initrd)
    sources = root.findall("devices/disk/source")
    sources[0].set("file", str(boot))
    sources[1].set("file", str(data))
    root.find("devices/serial/source").set("path", str(serial))
    return ET.tostring(root, encoding="unicode")


class Domain:
    """A bench domain: started, shut down cleanly (so its bitmaps are stored), started again."""

    def __init__(self, conn, xml: str, serial: Path) -> None:
        self.dom = conn.defineXML(xml)
        self.serial = serial

    def start(self) -> None:
        self.serial.unlink(missing_ok=True)
        self.dom.create()
        deadline = time.monotonic() + 180
        while "CAIRN: READY" not in (self.serial.read_text(errors="replace") if self.serial.exists() else ""):
            if time.monotonic() > deadline:
                raise SystemExit(f"the bench guest did not boot: {self.serial}")
            time.sleep(0.2)

    def shut_down(self) -> None:
        self.dom.shutdown()
        deadline = time.monotonic() + 120
        while self.dom.isActive():
            if time.monotonic() > deadline:
                raise SystemExit("the bench guest did not power off")
            time.sleep(0.2)

    def remove(self) -> None:
        import libvirt

        if self.dom is None:
            return
        if self.dom.isActive():
            self.dom.destroy()
        self.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        self.dom = None


class LiveTool:
    """How one tool backs up a running domain and restores its vdb."""

    def __init__(self, name: str, work: Path, daemon, place: Path) -> None:
        """daemon: the private libvirtd (libvirtd_server.Libvirtd)."""
        self.name = name
        self.work = work
        self.daemon = daemon
        self.uri = daemon.uri
        self.place = place
        self.latest = None

    @property
    def repository(self) -> Path:
        raise NotImplementedError

    def backup(self) -> None:
        raise NotImplementedError

    def restore(self, into: Path) -> Path:
        raise NotImplementedError


class VirtNbdBackup(LiveTool):
    @property
    def repository(self) -> Path:
        return self.work / "virtnbdbackup"

    def backup(self) -> None:
        level = "inc" if self.repository.exists() else "full"
        run("virtnbdbackup", "-U", self.uri, "-d", "bench-virtnbdbackup", "-l", level, "-o", self.repository,
            "-S", self.place, "-n")

    def restore(self, into: Path) -> Path:
        run("virtnbdrestore", "-U", self.uri, "-i", self.repository, "-o", into, "-d", "vdb", "-n", "-f",
            self.place / "restore.sock",
            "-L", self.work / "virtnbdrestore.log")
        return next(into.glob("vdb*"))


class CairnLive(LiveTool):
    """`cairn host backup`'s service, in process (the CLI's start-up is measured apart)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        from appliance.backups.host import HostBackups
        from appliance.backups.libvirt import LibvirtBackupService
        from appliance.context import Appliance
        from dedup import Store

        # Short: the export's unix socket lives under the data dir's scratch directory.
        data_dir = Path(tempfile.mkdtemp(prefix="cairn-peers-"))
        (self.work / "cairn-live").symlink_to(data_dir)
        Store.init(data_dir / "store", zstd_level=ZSTD_LEVEL).close()
        self.appliance = Appliance.open(str(data_dir))
        # The daemon's /var/lib/libvirt, where QEMU makes the export's socket, as seen from here.
        self.appliance.hosts.add("bench", self.uri, libvirt_dir=str(self.daemon.lib_dir))
        self.service = LibvirtBackupService(HostBackups(self.appliance.settings, self.appliance.catalog,
                                                        self.appliance.store), self.appliance.hosts)

    @property
    def repository(self) -> Path:
        return self.appliance.settings.store_dir

    def backup(self) -> None:
        self.latest = self.service.create("bench", "bench-cairn").manifest

    def restore(self, into: Path) -> Path:
        from restore import restore_disk

        restore_disk(self.appliance.store, self.latest.backup_id, "vdb", into / "vdb.qcow2", fmt="qcow2")
        return into / "vdb.qcow2"


def live(work: Path, disk: BenchDisk, change: list[tuple[int, bytes]], results: Results) -> None:
    import libvirt
    from guest.build import build_guest
    from libvirt_helpers import guest_image
    from libvirtd_server import running_libvirtd

    reference = work / "changed.qcow2"
    shutil.copyfile(disk.qcow2, reference)
    apply_change(change, reference, "qcow2", work)
    with running_libvirtd() as daemon:
        guest = guest_image(daemon, build_guest())  # where QEMU, as libvirt-qemu, can read it
        conn = libvirt.open(daemon.uri)
        for kind in (VirtNbdBackup, CairnLive):
            name = "cairn" if kind is CairnLive else "virtnbdbackup"
            place = daemon.root / name
            place.mkdir()
            boot, data = place / "vda.qcow2", place / "vdb.qcow2"
            run("qemu-img", "create", "-q", "-f", "qcow2", boot, str(128 * MiB))
            shutil.copyfile(disk.qcow2, data)
            tool = kind(name, work, daemon, place)
            domain = Domain(conn, domain_xml(f"bench-{name}", guest.kernel, guest.initrd, boot, data,
                                             place / "serial.log"), place / "serial.log")
            try:
                domain.start()
                results.add("live", name, "full", timed(tool.backup), size_of(tool.repository))
                domain.shut_down()
                apply_change(change, data, "qcow2", work)
                domain.start()
                before = size_of(tool.repository)
                results.add("live", name, "incremental", timed(tool.backup), size_of(tool.repository) - before)
            finally:
                domain.remove()
            restored = work / f"{name}-restored"
            restored.mkdir()
            measured = timed(lambda: tool.restore(restored))  # noqa: B023 - called at once
            results.add("live", name, "restore", measured)
            target = measured[2]
            if not same_image(reference, target):
                raise SystemExit(f"{name}: the restored disk differs from the disk it backed up")
            forget(restored, tool.repository, place)
        conn.close()
    forget(reference)


# --- the raw-image part ----------------------------------------------------------------


class RawTool:
    """How one tool backs up a raw image file and restores it."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.image = folder / "disk.raw"
        self.repository = folder / "repository"
        self.env = env

    def init(self) -> None: ...
    def backup(self, name: str) -> None: ...
    def restore(self, into: Path) -> None: ...


class Borg(RawTool):
    def init(self) -> None:
        run("borg", "init", "-e", "none", self.repository, env=self.env)

    def backup(self, name: str) -> None:
        run("borg", "create", f"{self.repository}::{name}", self.image, env=self.env)

    def restore(self, into: Path) -> None:
        subprocess.run(["borg", "extract", "--sparse", f"{self.repository}::incremental"], cwd=into, check=True,
                       env=self.env, capture_output=True)


class Restic(RawTool):
    def init(self) -> None:
        run("restic", "init", "-q", "--repo", self.repository, env=self.env)

    def backup(self, name: str) -> None:
        run("restic", "-q", "--repo", self.repository, "backup", self.image, env=self.env)

    def restore(self, into: Path) -> None:
        run("restic", "-q", "--repo", self.repository, "restore", "latest", "--target", into, env=self.env)


class CairnRaw(RawTool):
    """A stopped VM on the image: qemu-nbd, no bitmap on a raw image, so each backup reads it all."""

    def init(self) -> None:
        from dedup import Store

        self.store = Store.init(self.repository, zstd_level=ZSTD_LEVEL)
        self.latest = None

    def backup(self, name: str) -> None:
        from store_helpers import ingest_images

        self.latest = ingest_images(self.store, "bench", {"vda": self.image})

    def restore(self, into: Path) -> None:
        from restore import restore_disk

        restore_disk(self.store, self.latest.backup_id, "vda", into / "disk.raw")


def raw_image(work: Path, disk: BenchDisk, change: list[tuple[int, bytes]], results: Results) -> int:
    """Returns Cairn's stored bytes for the full (for the write ceiling)."""
    reference = work / "changed.raw"
    shutil.copyfile(disk.raw, reference)
    apply_change(change, reference, "raw", work)
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    cairn_full = 0
    for name, kind in (("borg", Borg), ("restic", Restic), ("cairn", CairnRaw)):
        tool = kind(work / name, env)
        tool.folder.mkdir()
        run("cp", "--sparse=always", disk.raw, tool.image)
        tool.init()
        results.add("raw", name, "full", timed(lambda: tool.backup("full")),  # noqa: B023 - called at once
                    size_of(tool.repository))
        cairn_full = size_of(tool.repository)
        apply_change(change, tool.image, "raw", work)
        before = size_of(tool.repository)
        results.add("raw", name, "incremental", timed(lambda: tool.backup("incremental")),  # noqa: B023
                    size_of(tool.repository) - before)
        restored = tool.folder / "restored"
        restored.mkdir()
        results.add("raw", name, "restore", timed(lambda: tool.restore(restored)))  # noqa: B023
        target = next(p for p in restored.rglob("disk.raw"))
        if not same_image(reference, target):
            raise SystemExit(f"{name}: the restored image differs from the image it backed up")
        forget(tool.folder)
    forget(reference)
    return cairn_full


def forget(*paths: Path) -> None:
    """Delete what a tool's steps left, once measured and checked: its files would otherwise
    fill the page cache, and the next tool would run short of free memory (the kernel reclaiming
    as it allocates). Each tool starts with the memory the one before it had."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path.resolve())
        else:
            path.unlink()


# --- ceilings ----------------------------------------------------------------------------


def ceilings(work: Path, disk: BenchDisk, stored: int, results: Results) -> None:
    import zstandard

    from dedup import DEFAULT_BLOCK_SIZE

    socket = work / "ceiling.sock"
    server = subprocess.Popen(["qemu-nbd", "-r", "-f", "qcow2", "-x", "d", "-k", str(socket), "-t", str(disk.qcow2)])
    try:
        while not socket.exists():
            time.sleep(0.02)
        results.ceilings["nbdcopy export → null:"] = timed(
            lambda: run("nbdcopy", f"nbd+unix:///d?socket={socket}", "null:"))[0]
    finally:
        server.terminate()
        server.wait()
    with open(disk.raw, "rb") as f:
        blocks = [b for b in iter(lambda: f.read(DEFAULT_BLOCK_SIZE), b"") if b.count(0) != len(b)]
    compressors: dict[int, zstandard.ZstdCompressor] = {}

    def compress(block: bytes) -> int:
        import threading
        me = threading.get_ident()
        if me not in compressors:
            compressors[me] = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        return len(compressors[me].compress(block))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        results.ceilings[f"zstd -{ZSTD_LEVEL}, all cores"] = timed(lambda: list(pool.map(compress, blocks)))[0]
    target = work / "write-ceiling.bin"
    piece = os.urandom(16 * MiB)

    def write() -> None:
        with open(target, "wb") as f:
            for _ in range(-(-stored // len(piece))):
                f.write(piece)
            os.fsync(f.fileno())
    results.ceilings["write stored bytes + fsync"] = timed(write)[0]
    target.unlink()


# --- report ------------------------------------------------------------------------------


def report(results: Results, disk: BenchDisk, cli_seconds: float) -> None:
    steps = results.steps
    print(f"\ndisk: 2 GiB qcow2, {disk.data_bytes / MiB:.0f} MiB of data; change: 1% in 8 regions; Cairn's zstd "
          f"level {ZSTD_LEVEL}; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"\n{'part':5} {'step':12} {'tool':14} {'seconds':>8} {'cpu s':>6} {'stored MiB':>11}   "
          "Cairn ÷ tool (time, cpu, stored)")
    for part in ("live", "raw"):
        for step in ("full", "incremental", "restore"):
            mine = steps.get((part, "cairn", step))
            for tool in ("cairn", *TOOLS):
                r = steps.get((part, tool, step))
                if r is None:
                    continue
                ratio = ""
                if mine and tool != "cairn":
                    stored = f"{mine.stored / r.stored:.2f}" if r.stored else "-"
                    ratio = f"{mine.seconds / r.seconds:5.2f} {mine.cpu / r.cpu:5.2f}  {stored}"
                print(f"{part:5} {step:12} {tool:14} {r.seconds:8.2f} {r.cpu:6.2f} {r.stored / MiB:11.1f}   {ratio}")
    for name, seconds in results.ceilings.items():
        print(f"ceiling: {name:30} {disk.data_bytes / seconds / MB:8.0f} MB/s ({seconds:.2f} s)")
    print(f"Cairn CLI start-up (`cairn --help`), not in the figures above: {cli_seconds:.2f} s")
    print("\nmust show:")
    checks = [
        ("live full ≤ 0.5× virtnbdbackup", ("live", "full"), "virtnbdbackup", 0.5, "seconds"),
        ("live incremental ≤ virtnbdbackup", ("live", "incremental"), "virtnbdbackup", 1.0, "seconds"),
        ("live restore ≤ 0.5× virtnbdbackup", ("live", "restore"), "virtnbdbackup", 0.5, "seconds"),
        ("raw full ≤ 0.5× borg", ("raw", "full"), "borg", 0.5, "seconds"),
        ("full stored ≤ restic", ("raw", "full"), "restic", 1.0, "stored"),
    ]
    for text, (part, step), tool, limit, what in checks:
        mine, theirs = steps.get((part, "cairn", step)), steps.get((part, tool, step))
        if mine and theirs:
            ratio = getattr(mine, what) / getattr(theirs, what)
            print(f"  {text:36} {ratio:5.2f}  {'yes' if ratio <= limit else 'NO'}")
    inc = steps.get(("live", "cairn", "incremental"))
    if inc:
        ratio = inc.stored / (disk_changed := sum(len(d) for _, d in scattered_change()))
        print(f"  {'live incremental stored ≤ 1.2× changed':36} {ratio:5.2f}  {'yes' if ratio <= 1.2 else 'NO'}"
              f"  ({inc.stored / MiB:.1f} MiB for {disk_changed / MiB:.0f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (each tool's repository and "
                    "restored disk are still deleted once measured)")
    ap.add_argument("--skip-live", action="store_true", help="leave out the libvirt part")
    ap.add_argument("--skip-raw", action="store_true", help="leave out the raw-image part")
    ap.add_argument("--zstd-level", type=int, default=None, help="Cairn's stores' level (default: the store's)")
    args = ap.parse_args()
    global ZSTD_LEVEL
    from dedup import DEFAULT_ZSTD_LEVEL
    ZSTD_LEVEL = args.zstd_level or DEFAULT_ZSTD_LEVEL
    missing = [t for t in ("virtnbdbackup", "virtnbdrestore", "borg", "restic", "nbdcopy") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install virtnbdbackup borgbackup restic libnbd-bin")
    cache = ROOT / ".cache"
    cache.mkdir(exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="cairn-peers-", dir=cache))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}  work: {work}", flush=True)
    results = Results()
    try:
        disk = bench_disk(cache)
        change = scattered_change()
        cli_seconds = timed(lambda: run(Path(sys.executable).with_name("cairn"), "--help"))[0]
        if not args.skip_live:
            live(work, disk, change, results)
        stored = raw_image(work, disk, change, results) if not args.skip_raw else 1 << 30
        ceilings(work, disk, stored, results)
        report(results, disk, cli_seconds)
    finally:
        live_data = work / "cairn-live"
        if live_data.is_symlink() and not args.keep:
            shutil.rmtree(live_data.resolve(), ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
