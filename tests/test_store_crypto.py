"""Encrypted stores: blocks, map pages and manifests sealed; keyed block ids; a key that must match."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
from job_helpers import job_result
from store_helpers import (
    BLOCK,
    PACK,
    backup_changes,
    backup_image,
    backup_path,
    block_ids,
    block_pack,
    disk_image,
    flip_byte,
    pack_files,
    read_back,
)

from appliance.context import Appliance
from dedup import (
    KEY_FILE,
    KeyFileError,
    PassphraseRequiredError,
    Store,
    WrongKeyError,
    WrongPassphraseError,
    verify_store,
)
from dedup.crypto import NONCE_SIZE, TAG_SIZE
from restore import restore_disk

PASSPHRASE = "correct horse battery staple"
CAIRN = str(Path(sys.executable).with_name("cairn"))


def encrypted_store(path: Path, **options) -> Store:
    return Store.init(path, block_size=BLOCK, pack_size=PACK, passphrase=PASSPHRASE, **options)


def test_encrypted_store_restores_with_its_passphrase(tmp_path):
    store = encrypted_store(tmp_path / "store")
    data = disk_image("rtz", tail=4096, seed=4)
    manifest = backup_image(store, "web1", {"vda": data}, vm_definition={"xml": "<domain>secret</domain>"})

    config = json.loads((tmp_path / "store" / "config.json").read_text())
    assert config["version"] == 3
    assert config["encryption"] == {"cipher": "aes-256-gcm", "chunk_id": "blake3-keyed",
                                    "key_fingerprint": store.config.key_fingerprint}
    # Nothing readable at rest: not the content, not the VM definition, not the maps, not a
    # block id an attacker could compute.
    plain_ids = {blake3.blake3(data[o:o + BLOCK]).digest() for o in range(0, len(data), BLOCK)}
    at_rest = b"".join(p.read_bytes() for p in [*pack_files(store), *(tmp_path / "store" / "index").iterdir()])
    assert not any(plain_id in at_rest for plain_id in plain_ids)
    assert b"CMAP" not in at_rest and data[:64] not in at_rest and data[2 << 20:(2 << 20) + 64] not in at_rest
    assert b"secret" not in (backup_path(store, "web1", manifest.backup_id) / "manifest.json").read_bytes()

    reopened = Store.open(tmp_path / "store", passphrase=PASSPHRASE)
    assert reopened.get_backup(manifest.backup_id).vm_definition == {"xml": "<domain>secret</domain>"}
    assert verify_store(reopened).ok
    restore_disk(reopened, manifest.backup_id, "vda", tmp_path / "vda.raw")
    assert (tmp_path / "vda.raw").read_bytes() == data


def test_wrong_or_missing_passphrase_fails_clearly(tmp_path):
    encrypted_store(tmp_path / "store")
    with pytest.raises(WrongPassphraseError, match=f"wrong passphrase for key file .*{KEY_FILE}"):
        Store.open(tmp_path / "store", passphrase="correct horse battery stapler")
    with pytest.raises(PassphraseRequiredError, match="is encrypted"):
        Store.open(tmp_path / "store")
    with pytest.raises(KeyFileError, match="must not be empty"):
        Store.init(tmp_path / "other", passphrase="")


def test_a_key_from_another_store_is_refused_by_fingerprint(tmp_path):
    mine = encrypted_store(tmp_path / "mine")
    theirs = encrypted_store(tmp_path / "theirs")
    data = disk_image("r", seed=1)
    manifest = backup_image(mine, "web1", {"vda": data})
    with pytest.raises(WrongKeyError, match=theirs.config.key_fingerprint + ".*" + mine.config.key_fingerprint):
        Store.open(tmp_path / "mine", passphrase=PASSPHRASE, key_file=tmp_path / "theirs" / KEY_FILE)
    # Even with the key file swapped in place, nothing is misread: the store's config names its key.
    shutil.copy(tmp_path / "mine" / KEY_FILE, tmp_path / "mine.key")
    shutil.copy(tmp_path / "theirs" / KEY_FILE, tmp_path / "mine" / KEY_FILE)
    with pytest.raises(WrongKeyError):
        Store.open(tmp_path / "mine", passphrase=PASSPHRASE)
    reopened = Store.open(tmp_path / "mine", passphrase=PASSPHRASE, key_file=tmp_path / "mine.key")
    assert read_back(reopened, manifest, "vda") == data


def test_key_file_kept_apart_from_the_store(tmp_path):
    key_file = tmp_path / "keys" / "store.key"
    key_file.parent.mkdir()
    store = encrypted_store(tmp_path / "store", key_file=key_file)
    assert not (tmp_path / "store" / KEY_FILE).exists() and key_file.stat().st_mode & 0o777 == 0o600
    data = disk_image("rr", seed=2)
    manifest = backup_image(store, "web1", {"vda": data})
    with pytest.raises(KeyFileError, match="does not exist"):
        Store.open(tmp_path / "store", passphrase=PASSPHRASE)
    reopened = Store.open(tmp_path / "store", passphrase=PASSPHRASE, key_file=key_file)
    assert read_back(reopened, manifest, "vda") == data
    with pytest.raises(KeyFileError, match="already exists"):
        Store.init(tmp_path / "again", passphrase=PASSPHRASE, key_file=key_file)
    assert not (tmp_path / "again").exists()


def test_tampering_is_found_and_named(tmp_path):
    store = encrypted_store(tmp_path / "store")
    a = backup_image(store, "web1", {"vda": disk_image("rr", seed=5)})
    b = backup_image(store, "web1", {"vda": disk_image("t", seed=6)})
    bad = block_ids(store, a, "vda")[1]
    _, record = store.blocks.locate(bad)
    assert record.stored_length == NONCE_SIZE + BLOCK + TAG_SIZE  # random data: raw, sealed
    flip_byte(block_pack(store, bad), offset=record.offset + NONCE_SIZE + 10)
    # A sealed manifest moved under another backup's name does not authenticate either.
    shutil.copy(backup_path(store, "web1", a.backup_id) / "manifest.json",
                backup_path(store, "web1", b.backup_id) / "manifest.json")
    report = verify_store(store)
    assert [(x.chunk_id, x.problem) for x in report.bad_chunks] == [(bad.hex(), "corrupt")]
    assert "authentication failed" in report.bad_chunks[0].detail
    assert [(u.backup_id, u.disk) for u in report.unreadable] == [(b.backup_id, None)]
    assert "cannot be decrypted" in report.unreadable[0].error
    assert set(report.damaged_backups()) == {a.backup_id, b.backup_id}


def test_dedup_and_incrementals_still_work_with_keyed_ids(tmp_path):
    store = encrypted_store(tmp_path / "store")
    common = disk_image("rrr", seed=8)
    backup_image(store, "a", {"vda": common})
    second = backup_image(store, "b", {"vda": common + disk_image("r", seed=9)})
    assert (second.disk("vda").stats.blocks_deduplicated, second.disk("vda").stats.blocks_written) == (48, 16)
    changed = bytearray(common + disk_image("r", seed=9))
    changed[5000:9096] = bytes(range(256)) * 16
    third = backup_changes(store, second, {"vda": [(4096, bytes(changed[4096:12288]))]})
    assert third.disk("vda").stats.blocks_written == 1
    assert read_back(store, third, "vda") == bytes(changed)


def cairn(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([CAIRN, *args], check=False, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr
    return proc


def test_cli_creates_and_unlocks_an_encrypted_store(tmp_path):
    env = {**os.environ, "CAIRN_DATA_DIR": str(tmp_path / "data"), "CAIRN_STORE_PASSPHRASE": PASSPHRASE,
           "COLUMNS": "400"}
    location = str(tmp_path / "store")
    made = cairn(env, "store", "init", "--store", location, "--block-size", "256K", "--encrypt", "--json")
    assert made.returncode == 0, made.stderr
    fingerprint = json.loads(made.stdout)["key_fingerprint"]
    store = Store.open(location, passphrase=PASSPHRASE)
    assert store.config.key_fingerprint == fingerprint
    data = disk_image("rt", seed=3)
    manifest = backup_image(store, "web1", {"vda": data})

    target = tmp_path / "vda.raw"
    wrong = cairn({**env, "CAIRN_STORE_PASSPHRASE": "not it"}, "restore", "disk", manifest.backup_id,
                  "--to", str(target), "--store", location)
    assert wrong.returncode == 1 and "wrong passphrase for key file" in wrong.stderr and not target.exists()
    locked = cairn({k: v for k, v in env.items() if k != "CAIRN_STORE_PASSPHRASE"}, "store", "verify",
                   "--store", location)
    assert locked.returncode == 1 and "is encrypted" in locked.stderr and "CAIRN_STORE_PASSPHRASE" in locked.stderr
    restored = cairn(env, "restore", "disk", manifest.backup_id, "--to", str(target), "--store", location)
    assert restored.returncode == 0, restored.stderr
    assert target.read_bytes() == data


@pytest.fixture
def appliance(appliance_data_dir: Path, monkeypatch) -> Appliance:
    """Overrides conftest's: an appliance started with the passphrase of its encrypted store."""
    monkeypatch.setenv("CAIRN_STORE_PASSPHRASE", PASSPHRASE)
    Store.init(appliance_data_dir / "store", passphrase=PASSPHRASE).close()
    return Appliance.open(str(appliance_data_dir))


def test_api_restores_from_an_encrypted_store(appliance, api_client, appliance_data_dir, tmp_path, monkeypatch):
    data = disk_image("rz", tail=4096, seed=12)
    manifest = backup_image(appliance.store, "web1", {"vda": data})
    assert api_client.get("/api/v1/store/stats").json()["backups"] == 1
    target = tmp_path / "vda.raw"
    job_result(api_client, api_client.post(f"/api/v1/backups/{manifest.backup_id}/disks/vda/restore",
                                           json={"target": str(target)}))
    assert target.read_bytes() == data

    monkeypatch.setenv("CAIRN_STORE_PASSPHRASE", "not it")
    with pytest.raises(WrongPassphraseError):
        Appliance.open(str(appliance_data_dir)).store  # noqa: B018 - opening is the test
