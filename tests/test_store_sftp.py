"""The store on a remote backup server: the SFTP backend against a real OpenSSH server on loopback.

The server's directory is on this machine, so tests can age or damage the
remote files directly, the way a disk on the backup server would.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from store_helpers import (
    BLOCK,
    CHUNK,
    PACK,
    backup_image,
    backups_beside_gc,
    block_ids,
    block_pack,
    disk_image,
    flip_byte,
    gc_locks_exclude_and_expire,
    ingest_images,
    read_back,
)

from dedup import (
    RetentionPolicy,
    SshOptions,
    Store,
    StoreLocationError,
    StoreUnreachableError,
    collect_garbage,
    open_backend,
    prune,
    verify_store,
)
from restore import restore_disk

CAIRN = str(Path(sys.executable).with_name("cairn"))


def ssh_options(server) -> SshOptions:
    return SshOptions(identity_file=server.key_file, known_hosts=server.known_hosts)


@pytest.fixture
def remote(sshd_server):
    """(server, url of a store directory that does not exist yet, its local path)."""
    path = sshd_server.workdir / "backups" / "store"
    return sshd_server, sshd_server.url(path), path


def open_remote(server, url: str, **kwargs) -> Store:
    return Store.open(open_backend(url, ssh_options(server)), **kwargs)


def init_remote(server, url: str) -> Store:
    return Store.init(open_backend(url, ssh_options(server)), block_size=BLOCK, pack_size=PACK)


def age(root: Path, seconds: float = 3600) -> None:
    when = time.time() - seconds
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))


def test_sftp_store_backs_up_verifies_and_restores_byte_exact(remote, tmp_path):
    server, url, path = remote
    image = tmp_path / "vda.raw"
    data = disk_image("rtzs", tail=4608, seed=3)  # qemu sees raw images in whole 512-byte sectors
    image.write_bytes(data)
    store = init_remote(server, url)
    assert store.location == url and (path / "config.json").is_file() and (path / "packs").is_dir()
    manifest = ingest_images(store, "web1", {"vda": image})
    store.close()

    store = open_remote(server, url)
    assert [m.backup_id for m in store.list_backups()] == [manifest.backup_id]
    assert read_back(store, manifest, "vda") == data
    report = verify_store(store)
    slots = {data[o:o + BLOCK] for o in range(0, len(data), BLOCK)} - {bytes(BLOCK)}
    assert report.ok and report.chunks_checked == len(slots)  # zero slots are holes, no block
    result = restore_disk(store, manifest.backup_id, "vda", tmp_path / "restored.raw")
    assert (tmp_path / "restored.raw").read_bytes() == data and result.bytes_written > 0

    # The same store read as a local directory holds the same bytes: the format does not depend on the backend.
    assert read_back(Store.open(path), manifest, "vda") == data
    store.close()


def test_sftp_store_verify_names_damage(remote):
    server, url, path = remote
    store = init_remote(server, url)
    m = backup_image(store, "web1", {"vda": disk_image("rr", seed=1)})
    bad = block_ids(store, m, "vda")[1]
    _, record = store.blocks.locate(bad)
    pack = block_pack(Store.open(path), bad)
    flip_byte(pack, offset=record.offset + 100)
    report = verify_store(store)
    assert [b.chunk_id for b in report.bad_chunks] == [bad.hex()]
    assert report.damaged_backups() == {m.backup_id: [f"disk vda bytes {BLOCK}-{2 * BLOCK - 1}: block {bad.hex()} "
                                                      "is corrupt"]}
    store.close()


def test_sftp_store_prune_then_gc_frees_only_what_no_backup_needs(remote, tmp_path):
    server, url, path = remote
    store = init_remote(server, url)
    common = disk_image("rr", seed=7)
    images = [common + disk_image("r", seed=n) for n in range(3)]
    manifests = [backup_image(store, "web1", {"vda": image}) for image in images]
    report = prune(store, "web1", RetentionPolicy(keep_last=1))
    assert report.removed == tuple(m.backup_id for m in reversed(manifests[:2]))
    assert [m.backup_id for m in store.list_backups()] == [manifests[2].backup_id]

    fresh = collect_garbage(store, grace=timedelta(minutes=10))
    assert fresh.chunks_removed == 0 and fresh.chunks_within_grace == 2 * (16 + 1)  # blocks and map pages
    age(path / "packs")
    # Every pack holding a dead block is repacked: which pack a map page lands in depends on the
    # writer threads, and a pack mostly alive is otherwise left for a later GC.
    gc = collect_garbage(store, grace=timedelta(minutes=10), repack_threshold=0.001)
    assert (gc.chunks_referenced, gc.chunks_removed, gc.chunks_kept) == (48 + 1, 2 * 17, 49)
    kept = {r.block_id for p in Store.open(path).blocks.ensure_loaded().packs.values() for r in p.records}
    assert kept == set(block_ids(store, manifests[2], "vda")) | {bytes.fromhex(manifests[2].disk("vda").layout.root)}
    assert verify_store(store).ok
    restore_disk(store, manifests[2].backup_id, "vda", tmp_path / "last.raw")
    assert (tmp_path / "last.raw").read_bytes() == images[2]
    store.close()


def test_sftp_locks_exclude_a_second_gc_and_die_with_their_holder(remote):
    server, url, path = remote
    store = init_remote(server, url)

    # A writer that died without a word: its lease stops being refreshed, and is older than the
    # TTL once its time is set back.
    def age_lease(backup_id: str) -> None:
        lease = path / "writers" / backup_id
        os.utime(lease, (time.time() - 600, lease.stat().st_mtime))

    backup_id = gc_locks_exclude_and_expire(store, open_remote(server, url), random.Random(1).randbytes(CHUNK),
                                            age_lease)
    assert not (path / "writers" / backup_id).exists() and not (path / "backups" / "web1" / backup_id).exists()
    store.close()


def test_sftp_locations_are_checked(sshd_server, tmp_path):
    for bad in ["sftp://host", "sftp://host/", "sftp://host:notaport/x", "ftp://host/x", "sftp://h/x?y=1"]:
        with pytest.raises(StoreLocationError):
            open_backend(bad)
    stranger = tmp_path / "known_hosts"
    stranger.write_text("")
    url = sshd_server.url(sshd_server.workdir / "store")
    with pytest.raises(StoreUnreachableError, match="cannot reach store"):
        open_backend(url, SshOptions(identity_file=sshd_server.key_file, known_hosts=stranger))
    with pytest.raises(StoreUnreachableError):
        open_backend(url.replace(f":{sshd_server.port}", ":1"), ssh_options(sshd_server))
    assert not (sshd_server.workdir / "store").exists()


def test_cli_works_on_an_sftp_store(remote, tmp_path):
    server, url, _ = remote
    env = {**os.environ, "CAIRN_DATA_DIR": str(tmp_path / "data"), "CAIRN_STORE": url, "COLUMNS": "400",
           "CAIRN_STORE_SSH_KEY": str(server.key_file), "CAIRN_STORE_KNOWN_HOSTS": str(server.known_hosts)}

    def cairn(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], check=False, env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    assert url in cairn("store", "init", "--block-size", "256K", "--pack-size", "1M").stdout
    data = disk_image("rs", seed=21)
    with open_remote(server, url) as store:
        manifest = backup_image(store, "web1", {"vda": data})
    assert json.loads(cairn("store", "verify", "--json").stdout)["ok"] is True
    cairn("restore", "disk", manifest.backup_id, "--to", str(tmp_path / "vda.raw"))
    assert (tmp_path / "vda.raw").read_bytes() == data


def test_two_backups_gc_and_verify_at_once_on_sftp(remote, tmp_path):
    """Blocks of a pruned backup are deduplicated against by two running backups while a GC
    without grace reclaims and a verify reads: every backup restores, verify is clean."""
    server, url, path = remote
    store = init_remote(server, url)
    common = disk_image("rrr", seed=30)
    gone = backup_image(store, "old", {"vda": common})
    (path / "backups" / "old" / gone.backup_id / "manifest.json").unlink()
    age(path / "packs")
    images = {vm: common + disk_image("rr", seed=n) for n, vm in enumerate(["a", "b"], 31)}
    stores = {vm: open_remote(server, url) for vm in images}
    checker = open_remote(server, url)
    manifests = backups_beside_gc(stores, images, store, lambda: verify_store(checker))
    assert verify_store(store).ok
    for vm, data in images.items():
        restore_disk(store, manifests[vm].backup_id, "vda", tmp_path / f"{vm}.raw")
        assert (tmp_path / f"{vm}.raw").read_bytes() == data
    for s in [store, checker, *stores.values()]:
        s.close()
