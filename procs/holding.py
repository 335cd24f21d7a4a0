"""A Holding: what one piece of work holds outside its process, written down while it does.

A restore's qemu-nbd and its partial file, a file browser's nbdkit, nbdfuse, loop device and
mounts: the owner releases them itself when it finishes or fails. When it is killed instead,
its helpers die with it (spawn.py) but the rest stays: a mount, a loop device, a partial file,
a socket directory. So each piece of work keeps a record, under the run directory, of who owns
it (a ProcessId) and what it holds, updated as it acquires more; sweep.py releases what a
dead owner's record names at the next start. A finished piece of work closes its record.

Records live in one directory for the whole machine, not per data directory: any Cairn start
(`cairn serve`, any CLI command, whichever data dir or store it names) sweeps after any dead
Cairn process. For root it is /run/cairn/helpers.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
from pathlib import Path
from typing import Any

from .identity import ProcessId
from .spawn import start_helper


def registry_dir() -> Path:
    """Where records are kept: /run/cairn/helpers for root; otherwise under $XDG_RUNTIME_DIR,
    or a private directory in /tmp."""
    if os.geteuid() == 0:
        base = Path("/run/cairn")
    elif runtime := os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(runtime) / "cairn"
    else:
        base = Path(f"/tmp/cairn-{os.geteuid()}")
    directory = base / "helpers"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def inode(path: Path) -> list[int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


class Holding:
    """`purpose` says what the work is, for a person reading a record (or the sweep's log).
    `key` names the record, for work that another process may go on with or end (an instant
    restore's export): Holding.find(key) reads it there."""

    def __init__(self, purpose: str, key: str | None = None) -> None:
        self.path = registry_dir() / f"{key or secrets.token_hex(8)}.json"
        self._record: dict[str, Any] = {"purpose": purpose, "owner": ProcessId.me().to_dict(),
                                        "helpers": [], "releases": []}
        self._lock = threading.Lock()
        self._save()

    @classmethod
    def find(cls, key: str) -> Holding | None:
        """The record kept under `key`, whichever process wrote it, to hand over or close."""
        path = registry_dir() / f"{key}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        found = cls.__new__(cls)   # not __init__: the record exists and keeps its owner
        found.path, found._record, found._lock = path, record, threading.Lock()
        return found

    def spawn(self, argv: list[str], *, outlives_owner: bool = False, **popen: Any) -> subprocess.Popen[Any]:
        """Start a helper (spawn.start_helper) and record it: if the owner is gone at the next
        start, the sweep kills it."""
        process = start_helper(argv, outlives_owner=outlives_owner, **popen)
        if (helper := ProcessId.of(process.pid)) is not None:
            self._change("helpers", {**helper.to_dict(), "argv": argv})
        return process

    def adopt(self, pid: int, argv: list[str]) -> None:
        """Record helper `pid`, which a spawned process started and left running (a server that
        forks into the background): swept like the helpers spawn() starts."""
        if (helper := ProcessId.of(pid)) is not None:
            self._change("helpers", {**helper.to_dict(), "argv": argv})

    # What the sweep releases, last acquired first (as the owner would): name each right after
    # acquiring it.

    def unmount(self, mountpoint: Path) -> None:
        self._change("releases", {"unmount": str(mountpoint)})

    def detach_loop(self, device: str, backing_file: Path) -> None:
        """The loop device is detached only while it still reads `backing_file`."""
        self._change("releases", {"detach-loop": device, "backing-file": str(backing_file)})

    def remove(self, path: Path) -> None:
        """A file or directory tree this work created; removed only if it is still the one
        created (same inode), and a tree is not descended where something is mounted in it."""
        self._change("releases", {"remove": str(path), "inode": inode(path)})

    def hand_over(self, pid: int) -> None:
        """Make process `pid` the owner: the helpers (started with outlives_owner) serve it now
        and are swept once it is gone."""
        owner = ProcessId.of(pid)
        if owner is None:
            raise ProcessLookupError(f"cannot hand {self._record['purpose']} over to pid {pid}: it does not run")
        with self._lock:
            self._record["owner"] = owner.to_dict()
            self._save()

    def close(self) -> None:
        """The owner released everything itself: the record goes."""
        self.path.unlink(missing_ok=True)

    def _change(self, field: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._record[field].append(entry)
            self._save()

    def _save(self) -> None:
        # Write-and-rename: a sweep in another process never reads half a record.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self._record, indent=1) + "\n")
        os.replace(tmp, self.path)
