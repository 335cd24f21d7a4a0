"""A Cairn process killed mid-operation leaves no helper running and nothing held after the
next start: qemu-nbd, nbdkit, nbdfuse, ssh forwards and sshfs die with it or are swept, with
their mounts, loop devices, partial files and sockets.

Each scenario kills a real Cairn process (`cairn serve`, a CLI command, or Cairn's own classes
in a process of their own) with SIGKILL at the moment its helper runs, starts `cairn` again,
and looks at the machine's processes, mounts and loop devices.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from backup_helpers import CHUNK, MiB, boot_guest_vm, run
from restore_helpers import backup_file
from store_helpers import new_store
from test_auth_serve import serving

from appliance.context import Appliance

CAIRN = str(Path(sys.executable).with_name("cairn"))
KILL_TIMEOUT = 300   # TCG guests and busy neighbours on a shared 2-core machine
T = TypeVar("T")


def cairn(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([CAIRN, *args], env={**os.environ, "CAIRN_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, timeout=KILL_TIMEOUT, check=False)
    assert done.returncode == 0 or not check, done.stderr
    return done


def start_cairn(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([CAIRN, *args], env={**os.environ, "CAIRN_DATA_DIR": str(data_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def processes_naming(text: str, program: str | None = None) -> list[tuple[int, list[str]]]:
    """Live processes (zombies are not) with `text` in an argument of their command line,
    and, if given, running `program`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if argv and any(text in a for a in argv) and (program is None or Path(argv[0]).name == program):
            found.append((int(entry.name), argv))
    return found


def parent_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def kill_when(process: subprocess.Popen, ready: Callable[[], T], timeout: float = KILL_TIMEOUT) -> T:
    """SIGKILL `process` as soon as ready() holds (checked while it runs); return what it said."""
    deadline = time.monotonic() + timeout
    while not (said := ready()):
        assert process.poll() is None, "the operation ended before it could be interrupted"
        assert time.monotonic() < deadline, "the operation never got there"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return said


def mounted_under(directory: str) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(directory)]


def loops_reading(directory: str) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip().startswith(directory):
            found.append(backing.parent.parent.name)
    return found


def records_of(pid: int) -> list[dict]:
    """Helper records still naming `pid` as their owner."""
    from procs import registry_dir
    records = (json.loads(p.read_text()) for p in registry_dir().glob("*.json"))
    return [r for r in records if r["owner"]["pid"] == pid]


def qemu_io(path: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, path], check=True, capture_output=True)


def test_serve_killed_mid_backup_of_a_stopped_vm_leaves_its_disk_free(appliance: Appliance,
                                                                       appliance_data_dir: Path):
    """kill -9 of `cairn serve` while it reads a stopped VM's disk through qemu-nbd: the VM starts
    and backs up afterwards (qemu-nbd --persistent used to hold the disk's lock for ever)."""
    spec = appliance.vms.create("idle", [256 * MiB])
    disk = spec.disks[0].path
    qemu_io(disk, f"write -P 0x5a 0 {200 * MiB}")
    with serving(appliance_data_dir, "--insecure-http") as (port, server):
        password = (appliance_data_dir / "initial-admin-password").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=60) as api:
            token = api.post("/auth/login", json={"username": "admin", "password": password}).json()["token"]
            answer = api.post("/vms/idle/backups", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 202, answer.text
        kill_when(server, lambda: processes_naming(disk, "qemu-nbd"))
    cairn(appliance_data_dir, "vm", "start", "idle")   # the next start, and the disk's next user
    try:
        assert processes_naming(disk, "qemu-nbd") == []
        assert records_of(server.pid) == []
    finally:
        cairn(appliance_data_dir, "vm", "stop", "idle", "--force")
    assert "backup" in cairn(appliance_data_dir, "backup", "create", "idle").stdout


def test_restore_over_killed_before_its_qemu_nbd_has_a_client(appliance: Appliance, appliance_data_dir: Path):
    """`cairn restore vm --over` killed right after starting qemu-nbd on its partial file (which
    then waited for a client for ever, serving the file once the next restore deleted it)."""
    spec = appliance.vms.create("big", [CHUNK, 64 * MiB])
    qemu_io(spec.disks[1].path, f"write -P 0x22 0 {48 * MiB}")
    backup_id = run(appliance.backups.create(spec)).manifest.backup_id
    folder = appliance.settings.images_dir / "big"
    restoring = start_cairn(appliance_data_dir, "restore", "vm", backup_id, "--over")
    kill_when(restoring, lambda: processes_naming(f"{folder}/.vdb-restored-", "qemu-nbd"))
    result = cairn(appliance_data_dir, "restore", "vm", backup_id, "--over", "--json")
    assert processes_naming(str(folder)) == []
    assert records_of(restoring.pid) == []
    assert sorted(str(p) for p in folder.iterdir()) == sorted(json.loads(result.stdout)["disks"].values())


def test_push_backup_killed_leaves_no_qemu_nbd(appliance: Appliance, appliance_data_dir: Path, guest_kernel):
    """A push backup killed while QEMU writes into its qemu-nbd targets: the writers die with it
    (they used to run on; the next backup cleaned up only QEMU's side)."""
    boot_guest_vm(appliance, guest_kernel, "pushed", [256 * MiB])
    try:
        backing_up = start_cairn(appliance_data_dir, "backup", "create", "pushed", "--transport", "push")
        scratch = str(appliance.settings.scratch_dir)
        kill_when(backing_up, lambda: processes_naming(scratch, "qemu-nbd"))
        assert appliance.vms.show("pushed").status.state == "running"   # QEMU is no helper: it lives on
        assert "incremental" not in cairn(appliance_data_dir, "backup", "create", "pushed",
                                          "--transport", "push").stdout
        assert processes_naming(scratch) == []
        assert records_of(backing_up.pid) == []
    finally:
        run(appliance.vms.stop("pushed", force=True))


def test_file_browsing_killed_leaves_no_server_mount_or_loop_device(tmp_path: Path, appliance_data_dir: Path):
    """`cairn restore files --extract` killed mid-copy: nbdkit and nbdfuse die with it; the next
    start unmounts the filesystem and the FUSE file, detaches the loop device, removes the folder
    (nbdkit, nbdfuse, the mounts and the loop device all used to stay)."""
    store = new_store(tmp_path / "store")
    content = tmp_path / "content"
    content.mkdir()
    (content / "big.bin").write_bytes(os.urandom(96 * MiB))
    image = tmp_path / "disk.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image), "160M"], check=True)
    backup_id = backup_file(store, "web1", "vda", image)
    browsing = start_cairn(appliance_data_dir, "restore", "files", backup_id, "/big.bin",
                           "--store", str(store.location), "--extract", str(tmp_path / "big.bin"))

    def filesystem_mounted() -> list[str]:
        """This process's browsing folder, once its filesystem is mounted (its nbdfuse names it)."""
        folders = [Path(argv[2]).parent.parent for pid, argv in processes_naming("/tmp/cairn-files-", "nbdfuse")
                   if parent_of(pid) == browsing.pid]
        return [str(f) for f in folders if mounted_under(str(f / "mnt"))]
    [folder] = kill_when(browsing, filesystem_mounted)
    cairn(appliance_data_dir, "restore", "files", backup_id, "/", "--store", str(store.location))
    assert processes_naming(folder) == []
    assert mounted_under(folder) == [] and loops_reading(folder) == []
    assert not Path(folder).exists()
    assert records_of(browsing.pid) == []


def test_instant_restore_exports_outlive_cairn_and_go_with_their_vm(appliance: Appliance, appliance_data_dir: Path,
                                                                    guest_kernel):
    """An instant restore's nbdkit serves its VM after the `cairn` that started it has exited;
    once the VM's QEMU is gone the next start sweeps it (it used to run until a resume or a
    discard), and resume starts it again."""
    boot_guest_vm(appliance, guest_kernel, "src", [64 * MiB])
    backup_id = run(appliance.backups.create(appliance.vms.spec("src"))).manifest.backup_id
    run(appliance.vms.stop("src", force=True))
    cairn(appliance_data_dir, "restore", "instant", "start", backup_id, "copy", "--speed", "64K")
    folder = str(appliance_data_dir / "instant" / "copy")
    assert len(processes_naming(folder, "nbdkit")) == 1
    qemu = appliance.vms.show("copy").status.pid
    os.kill(qemu, signal.SIGKILL)
    cairn(appliance_data_dir, "vm", "list")
    assert processes_naming(folder, "nbdkit") == [] and records_of(qemu) == []
    instant = appliance.restores.instant
    run(instant.resume("copy", speed=0))
    try:
        assert run(instant.wait("copy", timeout=KILL_TIMEOUT)).status == "done"
        assert processes_naming(folder, "nbdkit") == []
    finally:
        run(appliance.vms.stop("copy", force=True))


# Cairn's own classes, in a process of their own that prints where it got and waits to be killed.
OWNER = """
import sys, time
{setup}
print({report}, flush=True)
time.sleep(600)
"""


def start_owner(setup: str, report: str) -> tuple[subprocess.Popen[str], str]:
    code = OWNER.format(setup=textwrap.dedent(setup), report=report)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = owner.stdout.readline().strip()
    assert line, "the owner process failed before it got there"
    return owner, line


def test_ssh_forward_dies_with_its_owner(sshd_server, appliance_data_dir: Path):
    owner, local = start_owner(f"""
        from transports.tunnel import SocketForward
        forward = SocketForward({[*sshd_server.ssh_args(), f"{sshd_server.user}@{sshd_server.host}"]!r},
                                "/nonexistent/remote.sock").open()
        """, "forward.local")
    assert processes_naming(local, "ssh")
    owner.kill()
    owner.wait()
    cairn(appliance_data_dir, "vm", "list")
    assert processes_naming(local) == []
    assert not Path(local).parent.exists()
    assert records_of(owner.pid) == []


def test_sshfs_mount_dies_with_its_owner(sshd_server, appliance_data_dir: Path):
    owner, mountpoint = start_owner(f"""
        from pathlib import Path
        from transports.sshfs import SshfsEndpoint, SshfsPushTarget
        endpoint = SshfsEndpoint({sshd_server.host!r}, {sshd_server.port}, {sshd_server.user!r},
                                 Path({str(sshd_server.workdir)!r}), Path({str(sshd_server.key_file)!r}),
                                 Path({str(sshd_server.known_hosts)!r}))
        target = SshfsPushTarget(endpoint, "killed")
        """, "target.mount.path")
    assert mounted_under(mountpoint) == [mountpoint]
    owner.kill()
    owner.wait()
    cairn(appliance_data_dir, "vm", "list")
    assert processes_naming(mountpoint) == []
    assert mounted_under(mountpoint) == []
    assert not Path(mountpoint).exists() and not (sshd_server.workdir / "killed").exists()
    assert records_of(owner.pid) == []

