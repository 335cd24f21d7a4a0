"""procs: helpers die with their owner, and the sweep releases exactly what a dead owner held.

Real processes throughout: owners are Python processes of their own, killed with SIGKILL."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from procs import Holding, ProcessId, sweep
from procs.holding import inode
from procs.sweep import mounts

OWNER = """
import sys, tempfile, threading, time
from pathlib import Path
from procs import Holding
held = Holding("test owner")
held.remove(Path(tempfile.mkdtemp(prefix="cairn-test-")))
started = {}
# From a thread that ends at once: the helper must not die with it.
thread = threading.Thread(target=lambda: started.update(helper=held.spawn(["sleep", "600"])))
thread.start()
thread.join()
print(started["helper"].pid, held.path, flush=True)
time.sleep(600)
"""


def gone(process: ProcessId, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while process.alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"])


def test_a_helper_outlives_the_thread_that_started_it_and_dies_with_its_owner():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    pid, record = owner.stdout.readline().split()
    helper = ProcessId.of(int(pid))
    time.sleep(0.5)
    assert helper is not None and helper.alive()
    assert json.loads(Path(record).read_text())["helpers"][0]["pid"] == helper.pid
    owner.kill()
    owner.wait()
    assert gone(helper)   # at once, without a sweep
    sweep()
    assert not Path(record).exists()


def test_the_sweep_leaves_live_owners_and_their_helpers_alone(tmp_path: Path):
    held = Holding("this test")
    helper = held.spawn(["sleep", "600"])
    held.remove(tmp_path)
    try:
        sweep()
        assert held.path.exists() and helper.poll() is None and tmp_path.exists()
    finally:
        helper.kill()
        helper.wait()
        held.close()


def record_of_a_dead_owner(helpers: list[dict], releases: list[dict]) -> Path:
    """A record as a killed owner leaves it: the owner is this process's pid with another start
    time, as when a pid is reused."""
    me = ProcessId.me()
    path = Holding("dead owner").path
    owner = {"pid": me.pid, "start": me.start - 1, "boot": me.boot}
    path.write_text(json.dumps({"purpose": "dead owner", "owner": owner, "helpers": helpers, "releases": releases}))
    return path


def test_a_reused_pid_is_not_the_owner_and_a_reused_helper_pid_is_not_killed():
    stranger = sleeper()
    try:
        identity = ProcessId.of(stranger.pid)
        somebody_else = {**identity.to_dict(), "start": identity.start + 1, "argv": ["qemu-nbd"]}
        record = record_of_a_dead_owner([somebody_else], [])
        sweep()
        assert not record.exists()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_an_outliving_helper_is_swept_once_the_owner_it_was_handed_to_is_gone():
    held = Holding("served VM")
    helper = held.spawn(["sleep", "600"], outlives_owner=True)
    vm = sleeper()
    held.hand_over(vm.pid)
    try:
        sweep()
        assert helper.poll() is None   # its owner runs
        vm.kill()
        vm.wait()
        sweep()
        assert helper.wait(10) == -9 and not held.path.exists()
    finally:
        helper.kill()
        vm.kill()


def test_a_file_is_removed_only_if_it_is_still_the_one_recorded(tmp_path: Path):
    partial = tmp_path / ".disk.cairn-partial"
    partial.write_bytes(b"old")
    record = record_of_a_dead_owner([], [{"remove": str(partial), "inode": inode(partial)}])
    partial.unlink()
    with open(partial, "wb") as newer:   # a newer restore's file of the same name, being written
        newer.write(b"a newer restore's")
        newer.flush()
        assert any("has it open" in line for line in sweep())
    assert partial.read_bytes() == b"a newer restore's" and record.exists()
    partial.unlink()
    sweep()
    assert not record.exists()


@pytest.fixture
def tmpfs() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="cairn-test-"))
    (directory / "inside").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(directory / "inside")], check=True)
    (directory / "inside" / "precious").write_text("not ours")
    yield directory
    subprocess.run(["umount", str(directory / "inside")], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(directory)], check=False)


def test_a_tree_is_not_removed_while_something_is_mounted_in_it(tmpfs: Path):
    record = record_of_a_dead_owner([], [{"remove": str(tmpfs), "inode": inode(tmpfs)}])
    report = sweep()
    assert any("still mounted" in line for line in report), report
    assert (tmpfs / "inside" / "precious").read_text() == "not ours" and record.exists()
    subprocess.run(["umount", str(tmpfs / "inside")], check=True)
    sweep()
    assert not tmpfs.exists() and not record.exists()


def test_mount_points_are_read_with_their_escapes(tmp_path: Path):
    odd = tmp_path / "a b\\c"
    odd.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(odd)], check=True)
    try:
        assert str(odd) in mounts()
    finally:
        subprocess.run(["umount", str(odd)], check=True)


def test_concurrent_sweeps_take_turns():
    results: list[list[str]] = []
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    owner.stdout.readline()
    owner.kill()
    owner.wait()
    sweeps = [threading.Thread(target=lambda: results.append(sweep())) for _ in range(3)]
    for t in sweeps:
        t.start()
    for t in sweeps:
        t.join()
    assert sum(1 for report in results for line in report if line.startswith("removed")) == 1
