"""Off-site copies between stores (dedup/sync.py): local directories and an SFTP server here;
RADOS and S3 in test_sync_ceph.py."""
from __future__ import annotations

import time

import pytest
from store_helpers import BLOCK, PACK, backup_changes, backup_image, disk_image, read_back

from appliance.jobs.kinds.sync import run_sync
from appliance.jobs.params import SyncParams
from appliance.settings import StoreAccess
from dedup import (
    SshOptions,
    Store,
    StoreMismatchError,
    StoreNotEmptyError,
    open_backend,
    open_replica,
    protect,
    sync_store,
    verify_store,
)
from dedup.prune import is_protected

MiB = 1 << 20


def test_sync_sends_only_what_the_target_lacks_and_the_copy_restores_alone(tmp_path):
    """Encrypted: the target receives sealed bytes and never needs the key; opened with it, the
    copy verifies and restores byte-exact."""
    source = Store.init(tmp_path / "src", block_size=BLOCK, pack_size=PACK, passphrase="pw")
    data = disk_image("rrrrtt", seed=1)
    full = backup_image(source, "web1", {"vda": data})
    incremental = backup_changes(source, full, {"vda": [(4096, b"x" * 8192)]})
    protect(source, full.backup_id)
    other = backup_image(source, "db1", {"vda": disk_image("rrs", seed=2)})

    target = open_replica(source, str(tmp_path / "dst"))
    first = sync_store(source, target, vms=["web1"])
    assert first.copied == (full.backup_id, incremental.backup_id) and first.ok
    assert first.blocks_present > 0, "the incremental's unchanged blocks were already sent with the full"
    again = sync_store(source, target, vms=["web1"])
    assert (again.copied, again.present, again.bytes_sent) == ((), first.copied, 0)

    newer = backup_changes(source, incremental, {"vda": [(MiB, b"y" * 70_000)]})
    later = sync_store(source, target)
    assert later.copied == (other.backup_id, newer.backup_id)
    assert later.bytes_sent < 2 * MiB + 100_000, "web1's new backup sent only its changed block and map pages"

    copy = Store.open(tmp_path / "dst", passphrase="pw")
    assert [m.backup_id for m in copy.list_backups("web1")] == [full.backup_id, incremental.backup_id,
                                                                newer.backup_id]
    assert is_protected(copy, copy.get_backup(full.backup_id)), "its other files came along"
    assert verify_store(copy).ok
    expected = bytearray(data)
    expected[4096:4096 + 8192] = b"x" * 8192
    expected[MiB:MiB + 70_000] = b"y" * 70_000
    assert read_back(copy, copy.get_backup(newer.backup_id), "vda") == bytes(expected)


def test_sync_refuses_a_target_it_cannot_fill_as_is(tmp_path):
    source = Store.init(tmp_path / "src", block_size=BLOCK, pack_size=PACK)
    Store.init(tmp_path / "other", block_size=2 * BLOCK, pack_size=PACK).close()
    with pytest.raises(StoreMismatchError, match="128 KiB blocks and no encryption, the source 64 KiB blocks"):
        open_replica(source, str(tmp_path / "other"))
    Store.init(tmp_path / "keyed", block_size=BLOCK, pack_size=PACK, passphrase="pw").close()
    with pytest.raises(StoreMismatchError, match="key"):
        open_replica(source, str(tmp_path / "keyed"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StoreNotEmptyError, match="neither empty nor a Cairn store"):
        open_replica(source, str(tmp_path / "busy"))
    with pytest.raises(ValueError, match="same store"):
        SyncParams(target="/x", source="/x")
    with pytest.raises(ValueError, match="needs a target"):
        SyncParams()


def test_the_bandwidth_limit_holds(tmp_path):
    source = Store.init(tmp_path / "src", block_size=BLOCK, pack_size=PACK)
    backup_image(source, "web1", {"vda": disk_image("rrrr", seed=5)})
    started = time.monotonic()
    report = sync_store(source, open_replica(source, str(tmp_path / "dst")), bandwidth=2 * MiB)
    elapsed = time.monotonic() - started
    # 4 MiB at 2 MiB/s, the first second's worth sent at once: about 1 s, never much less.
    assert report.bytes_sent > 4 * MiB and elapsed >= (report.bytes_sent - 2 * MiB) / (2 * MiB) - 0.1


def test_push_to_an_sftp_server_and_pull_back(sshd_server, tmp_path):
    """The appliance's job code both ways: push its store to an SFTP server, then a second
    appliance pulls from there into a store of its own."""
    ssh = SshOptions(identity_file=sshd_server.key_file, known_hosts=sshd_server.known_hosts)
    url = sshd_server.url(sshd_server.workdir / "offsite")
    own = StoreAccess(str(tmp_path / "src"), "pw", None, sshd_server.key_file, sshd_server.known_hosts)
    source = Store.init(own.location, block_size=BLOCK, pack_size=PACK, passphrase="pw")
    data = disk_image("rrts", seed=9)
    manifest = backup_image(source, "web1", {"vda": data})
    pushed = run_sync(own, source, SyncParams(target=url))
    assert pushed.copied == (manifest.backup_id,) and pushed.target == url
    with Store.open(open_backend(url, ssh), passphrase="pw") as remote:
        assert verify_store(remote).ok

    second = StoreAccess(str(tmp_path / "second"), "pw", None, sshd_server.key_file, sshd_server.known_hosts)
    pulled = run_sync(second, None, SyncParams(source=url))
    assert pulled.copied == (manifest.backup_id,)
    with Store.open(second.location, passphrase="pw") as copy:
        assert read_back(copy, copy.get_backup(manifest.backup_id), "vda") == data


def test_a_sync_names_a_store_from_the_root_or_by_url(api_client):
    """A relative directory would land wherever the server runs, and control characters name no
    store anyone meant: both refused before a job is queued, nothing created."""
    import os

    before = set(os.listdir("."))
    for target in ["relative/store", "\x0c\x17store", "/srv/\nstore"]:
        r = api_client.post("/api/v1/store/sync", json={"target": target})
        assert r.status_code == 422, (target, r.text)
    assert set(os.listdir(".")) == before
    assert api_client.get("/api/v1/jobs").json() == []


def test_the_cli_names_a_relative_target_from_its_working_directory(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    source = Store.init(tmp_path / "src", block_size=BLOCK, pack_size=PACK)
    full = backup_image(source, "web1", {"vda": disk_image("rr", seed=3)})
    source.close()
    cairn = str(Path(sys.executable).with_name("cairn"))
    done = subprocess.run([cairn, "store", "sync", "--store", str(tmp_path / "src"), "--to", "copy", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"CAIRN_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["copied"] == [full.backup_id]
    assert [m.backup_id for m in Store.open(tmp_path / "copy").list_backups()] == [full.backup_id]
