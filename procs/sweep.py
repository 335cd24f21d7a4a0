"""The sweep at every start: release what owners that are gone left behind.

For each record whose owner no longer runs: kill its helpers that still run (a helper that
outlived its owner on purpose, or escaped the parent-death signal in the instant between
fork and exec), wait until they are gone (their locks go with their descriptors), then
release the rest last acquired first: unmount, detach loop devices, remove files. Every step
checks it acts on what the record meant (the same process, the same loop backing file, the
same inode, no mount inside a tree), so an old record cannot hurt what came after it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .holding import inode, registry_dir
from .identity import ProcessId

log = logging.getLogger(__name__)

KILL_TIMEOUT = 10.0
SWEEP_LOCK = ".sweep.lock"


def sweep() -> list[str]:
    """Release what dead owners left; returns (and logs) what was done. Concurrent sweeps take
    turns; a step that fails is reported and the record kept, to be tried again next time."""
    directory = registry_dir()
    done: list[str] = []
    with open(directory / SWEEP_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in sorted(directory.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except FileNotFoundError:
                continue   # closed by its owner meanwhile
            except ValueError:
                log.warning("unreadable helper record %s left in place", path)
                continue
            if ProcessId.from_dict(record["owner"]).alive():
                continue
            report, complete = _release(record)
            done += report
            if complete:
                path.unlink(missing_ok=True)
    for line in done:
        log.warning("%s", line)
    return done


def _release(record: dict[str, Any]) -> tuple[list[str], bool]:
    """(what was done, whether everything is released)."""
    owner = f"{record['purpose']} (pid {record['owner']['pid']}, gone)"
    report, complete = [], True
    for helper in record["helpers"]:
        if _kill(ProcessId.from_dict(helper)):
            report.append(f"killed {helper['argv'][0]} (pid {helper['pid']}) of {owner}")
        elif ProcessId.from_dict(helper).alive():
            report.append(f"could not kill {helper['argv'][0]} (pid {helper['pid']}) of {owner}")
            complete = False
    for release in reversed(record["releases"]):
        try:
            if line := _undo(release):
                report.append(f"{line} of {owner}")
        except (OSError, subprocess.CalledProcessError) as e:
            report.append(f"could not release {release} of {owner}: {e}")
            complete = False
    return report, complete


def _kill(helper: ProcessId) -> bool:
    """SIGKILL the helper's process group (what it started itself too) if the helper still
    runs; True once it is gone."""
    if not helper.alive():
        return False
    try:
        if os.getpgid(helper.pid) == helper.pid:
            os.killpg(helper.pid, signal.SIGKILL)
        else:
            os.kill(helper.pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + KILL_TIMEOUT
    while helper.alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _undo(release: dict[str, Any]) -> str | None:
    if "unmount" in release:
        mountpoint = release["unmount"]
        if mountpoint not in mounts():
            return None
        # A dead FUSE server's mount answers nothing ("transport endpoint is not connected"):
        # lazily detached it goes once nothing uses it.
        if subprocess.run(["umount", mountpoint], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, check=True)
        return f"unmounted {mountpoint}"
    if "detach-loop" in release:
        device = release["detach-loop"]
        backing = Path("/sys/block", Path(device).name, "loop", "backing_file")
        try:
            if backing.read_text().strip() != release["backing-file"]:
                return None
        except FileNotFoundError:
            return None   # not attached any more
        subprocess.run(["losetup", "--detach", device], capture_output=True, check=True)
        return f"detached {device}"
    path = Path(release["remove"])
    if inode(path) != release["inode"] or release["inode"] is None:
        return None
    if open_elsewhere(path):
        # The inode number can come back for a new file of the same name (a newer restore to
        # the same target): one that a running process has open is in use.
        raise OSError("a running process has it open")
    if path.is_dir() and not path.is_symlink():
        if inside := [m for m in mounts() if Path(m).is_relative_to(path)]:
            raise OSError(f"{', '.join(inside)} still mounted inside it")
        shutil.rmtree(path)
    else:
        path.unlink()
    return f"removed {path}"


def open_elsewhere(path: Path) -> bool:
    """Whether a running process has the file open."""
    wanted = inode(path)
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            st = os.stat(fd)
        except OSError:
            continue   # gone meanwhile, or not a file
        if [st.st_dev, st.st_ino] == wanted:
            return True
    return False


def mounts() -> list[str]:
    """Mount points now, from /proc/self/mountinfo (os.path.ismount cannot see a dead FUSE
    mount: stat on it fails)."""
    # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
    return [os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), line.split()[4]))
            for line in Path("/proc/self/mountinfo").read_bytes().splitlines()]
