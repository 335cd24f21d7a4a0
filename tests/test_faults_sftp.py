"""A store on a backup server over SFTP whose connection is cut mid-backup: the server's sshd
processes serving it are killed (kill -9), as when the link or the server drops. The backup
fails; the store keeps every backup it had; the dead writer's lease goes stale and the next GC
after that removes what it left; the same backup then succeeds."""
from __future__ import annotations

import os
import random
import signal
import time
from datetime import timedelta
from pathlib import Path

from fault_helpers import Pause, forked_process
from store_helpers import CHUNK, backup_image, disk_image, read_back
from test_store_sftp import init_remote, open_remote, remote  # noqa: F401  (fixture)

from dedup import collect_garbage, verify_store


def connections(server) -> list[int]:
    """The sshd processes serving connections: children of the server's listening sshd."""
    master = (server.workdir.parent / "sshd.pid").read_text().strip()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
        except (OSError, ValueError):
            continue
        if f"\nPPid:\t{master}\n" in status:
            found.append(int(proc.name))
    return found


def test_a_backup_whose_sftp_connection_is_cut_leaves_the_store_whole(remote, tmp_path):  # noqa: F811
    server, url, path = remote
    store = init_remote(server, url)
    first = backup_image(store, "web1", {"vda": disk_image("rrt", seed=1)})
    data = random.Random(2).randbytes(4 * CHUNK)
    store.close()

    def back_up(pause: Pause) -> None:     # a backup of its own, its first half written, then held
        writing = open_remote(server, url)
        session = writing.begin_backup("web1")
        disk = session.disk("vda", len(data))
        disk.put(0, data[:2 * CHUNK])
        session._pipeline.drain()
        pause("half written")
        disk.put(2 * CHUNK, data[2 * CHUNK:])
        session.commit()
    cut = forked_process(back_up)
    try:
        cut.wait_paused()
        for pid in connections(server):
            os.kill(pid, signal.SIGKILL)
        cut.resume()
        assert cut.wait() == 1, cut.output          # the backup failed
    finally:
        if cut.code is None:
            os.kill(cut.pid, signal.SIGKILL)
            cut.wait()

    store = open_remote(server, url)
    assert [m.backup_id for m in store.list_backups()] == [first.backup_id]
    assert read_back(store, first, "vda") == disk_image("rrt", seed=1)
    [lease] = list((path / "writers").iterdir())
    assert collect_garbage(store, grace=timedelta(0)).abandoned_backups_removed == ()   # lease not stale yet
    os.utime(lease, (time.time() - 600, lease.stat().st_mtime))                      # it is, after LEASE_TTL
    assert len(collect_garbage(store, grace=timedelta(0)).abandoned_backups_removed) == 1
    again = backup_image(store, "web1", {"vda": data})
    assert read_back(store, again, "vda") == data and read_back(store, first, "vda") == disk_image("rrt", seed=1)
    assert verify_store(store).ok
    assert [p.name for p in (path / "writers").iterdir()] == []
    store.close()
