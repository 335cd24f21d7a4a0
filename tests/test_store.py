import json
import os

import blake3
import pytest
from store_helpers import (
    CHUNK,
    MiB,
    backup_image,
    chunk_files,
    disk_image,
    flip_byte,
    new_store,
    read_back,
)

from dedup import (
    ZERO_DIGEST,
    BackupExistsError,
    BackupIncompleteError,
    BackupNotFoundError,
    BackupWriteError,
    ChunkCorruptError,
    ChunkMissingError,
    ChunkWriteError,
    DiskNotFoundError,
    IndexCorruptError,
    InvalidNameError,
    ManifestCorruptError,
    NotAStoreError,
    Store,
    StoreConfigError,
    StoreExistsError,
    StoreNotEmptyError,
)


def test_init_writes_config_and_open_reads_it(tmp_path):
    store = Store.init(tmp_path / "store", chunk_size=2 * MiB, zstd_level=5)
    config = json.loads((tmp_path / "store" / "config.json").read_text())
    assert config["format"] == "cairn-store"
    assert config["version"] == 1
    assert config["chunk_size"] == 2 * MiB
    assert config["compression"] == {"algorithm": "zstd", "level": 5}
    assert config["id"] == store.config.id
    assert config["created"].endswith("Z")
    reopened = Store.open(tmp_path / "store")
    assert reopened.config == store.config


def test_init_defaults_to_64_mib_chunks_and_zstd_3(tmp_path):
    store = Store.init(tmp_path)
    assert (store.config.chunk_size, store.config.zstd_level) == (64 * MiB, 3)


@pytest.mark.parametrize("chunk_size", [MiB // 2, 3 * MiB, 128 * MiB])
def test_init_rejects_bad_chunk_size(tmp_path, chunk_size):
    with pytest.raises(StoreConfigError, match="power of two"):
        Store.init(tmp_path / "s", chunk_size=chunk_size)
    assert not (tmp_path / "s").exists()


def test_init_refuses_non_empty_directory_and_existing_store(tmp_path):
    (tmp_path / "data.img").write_bytes(b"x")
    with pytest.raises(StoreNotEmptyError, match=str(tmp_path)):
        Store.init(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["data.img"]
    new_store(tmp_path / "store")
    with pytest.raises(StoreExistsError):
        new_store(tmp_path / "store")


def test_open_rejects_what_is_not_a_store(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "badconfig").mkdir()
    (tmp_path / "badconfig" / "config.json").write_text('{"format": "something-else"}')
    for name in ["random", "empty", "missing", "badconfig"]:
        with pytest.raises(NotAStoreError, match=str(tmp_path / name)):
            Store.open(tmp_path / name)


def test_round_trip_with_short_last_chunk(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rtsr", tail=12345)
    manifest = backup_image(store, "web1", {"vda": data}, vm_definition={"xml": "<domain/>"})
    assert read_back(store, manifest, "vda") == data
    disk = manifest.disk("vda")
    assert (disk.size, disk.chunk_size, disk.index) == (len(data), CHUNK, "vda.index")
    assert disk.stats.chunks_total == 5
    assert disk.stats.chunks_written == 5
    assert disk.stats.bytes_read == len(data)
    assert 0 < disk.stats.bytes_stored < len(data)
    index = store.read_index(manifest, "vda")
    assert index.chunk_count == 5 and index.chunk_length(4) == 12345
    assert store.get_backup(manifest.backup_id) == manifest
    assert manifest.vm_definition == {"xml": "<domain/>"}


def test_index_file_layout(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rz", tail=1)
    manifest = backup_image(store, "web1", {"vda": data})
    raw = (tmp_path / "backups" / "web1" / manifest.backup_id / "vda.index").read_bytes()
    assert raw[:8] == b"CAIRNIDX"
    assert int.from_bytes(raw[8:12], "little") == 1
    assert int.from_bytes(raw[12:16], "little") == CHUNK
    assert int.from_bytes(raw[16:24], "little") == len(data)
    assert int.from_bytes(raw[24:32], "little") == 3
    assert len(raw) == 32 + 3 * 32
    assert raw[64:96] == ZERO_DIGEST


def test_zero_chunks_are_never_stored(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("zrz", tail=100)
    with store.begin_backup("web1") as session:
        writer = session.disk("vda", len(data))
        writer.put(0, data[:CHUNK])  # zero content found by the store
        writer.put(1, data[CHUNK : 2 * CHUNK])
        writer.zero(2)  # declared zero by the caller, nothing read
        writer.put(3, data[3 * CHUNK :])
        manifest = session.commit()
    stats = manifest.disk("vda").stats
    assert (stats.chunks_zero, stats.chunks_written) == (2, 2)
    assert len(chunk_files(store)) == 2
    index = store.read_index(manifest, "vda")
    assert index.is_zero(0) and index.is_zero(2) and not index.is_zero(1)
    assert read_back(store, manifest, "vda") == data


def test_identical_chunks_are_stored_once(tmp_path):
    store = new_store(tmp_path)
    chunk = disk_image("r", seed=7)
    first = backup_image(store, "web1", {"vda": chunk * 4, "vdb": chunk})
    assert len(chunk_files(store)) == 1
    stats = first.disk("vda").stats
    assert (stats.chunks_written, stats.chunks_deduplicated) == (1, 3)
    assert first.disk("vdb").stats.chunks_deduplicated == 1
    second = backup_image(store, "web2", {"vda": chunk})
    assert second.disk("vda").stats.chunks_deduplicated == 1
    assert second.disk("vda").stats.bytes_stored == 0
    assert len(chunk_files(store)) == 1


def test_incremental_reuses_parent_chunks(tmp_path):
    store = new_store(tmp_path)
    base = disk_image("rzrr", tail=500, seed=1)
    full = backup_image(store, "web1", {"vda": base}, checkpoint="cairn-1")
    changed = bytearray(base)
    changed[2 * CHUNK + 10] ^= 1
    with store.begin_backup("web1", kind="incremental", parent=full, checkpoint="cairn-2") as session:
        writer = session.disk("vda", len(changed))
        for chunk_no in (0, 1, 3, 4):
            assert writer.reuse(chunk_no)
        writer.put(2, bytes(changed[2 * CHUNK : 3 * CHUNK]))
        incremental = session.commit()
    assert (incremental.kind, incremental.parent, incremental.checkpoint) == ("incremental", full.backup_id, "cairn-2")
    stats = incremental.disk("vda").stats
    assert (stats.chunks_reused, stats.chunks_written, stats.bytes_read) == (4, 1, 0)
    assert read_back(store, incremental, "vda") == bytes(changed)


def test_reuse_refuses_what_the_parent_cannot_supply(tmp_path):
    store = new_store(tmp_path)
    base = disk_image("rr", tail=500, seed=2)
    full = backup_image(store, "web1", {"vda": base})
    parent_index = store.read_index(full, "vda")
    store.chunks.path(parent_index.digest(1)).unlink()
    grown = base + bytes(CHUNK)
    with store.begin_backup("web1", kind="incremental", parent=full) as session:
        writer = session.disk("vda", len(grown))
        assert writer.reuse(0)
        assert not writer.reuse(1)  # chunk file gone from the store
        assert not writer.reuse(2)  # parent's last chunk was short
        assert not writer.reuse(3)  # beyond the parent's disk
        new_disk = session.disk("vdb", CHUNK)
        assert not new_disk.reuse(0)  # parent has no such disk
        for chunk_no in (1, 2, 3):
            start = chunk_no * CHUNK
            writer.put(chunk_no, grown[start : start + CHUNK])
        new_disk.zero(0)
        manifest = session.commit()
    assert read_back(store, manifest, "vda") == grown


def test_unusable_parent_index_means_nothing_is_reused(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rr", seed=5)
    full = backup_image(store, "web1", {"vda": data})
    flip_byte(tmp_path / "backups" / "web1" / full.backup_id / "vda.index")
    with store.begin_backup("web1", kind="incremental", parent=full) as session:
        writer = session.disk("vda", len(data))
        assert not writer.reuse(0)
        writer.put(0, data[:CHUNK])
        writer.put(1, data[CHUNK:])
        manifest = session.commit()
    assert len(manifest.notes) == 1 and "parent index of vda unusable" in manifest.notes[0]
    assert read_back(store, manifest, "vda") == data


def test_corrupted_or_missing_chunk_is_detected(tmp_path):
    store = new_store(tmp_path)
    manifest = backup_image(store, "web1", {"vda": disk_image("rt", seed=3)})
    index = store.read_index(manifest, "vda")
    random_id, text_id = index.digest(0), index.digest(1)
    flip_byte(store.chunks.path(random_id), offset=CHUNK // 2)
    with pytest.raises(ChunkCorruptError, match=random_id.hex()) as corrupt:
        store.read_chunk(random_id)
    assert corrupt.value.chunk_id == random_id.hex()
    store.chunks.path(text_id).write_bytes(b"not zstd at all")
    with pytest.raises(ChunkCorruptError, match=text_id.hex()):
        store.read_chunk(text_id)
    store.chunks.path(text_id).unlink()
    with pytest.raises(ChunkMissingError, match=text_id.hex()):
        store.read_chunk(text_id)


def test_index_digest_mismatch_is_detected(tmp_path):
    store = new_store(tmp_path)
    manifest = backup_image(store, "web1", {"vda": disk_image("rr")})
    flip_byte(tmp_path / "backups" / "web1" / manifest.backup_id / "vda.index")
    with pytest.raises(IndexCorruptError, match="vda"):
        store.read_index(manifest, "vda")
    with pytest.raises(DiskNotFoundError, match="vdz"):
        store.read_index(manifest, "vdz")


def test_damaged_manifest_is_reported(tmp_path):
    store = new_store(tmp_path)
    manifest = backup_image(store, "web1", {"vda": disk_image("r")})
    path = tmp_path / "backups" / "web1" / manifest.backup_id / "manifest.json"
    path.write_text(path.read_text().replace('"kind": "full"', '"kind": "weekly"'))
    with pytest.raises(ManifestCorruptError, match="unknown kind 'weekly'"):
        store.get_backup(manifest.backup_id)
    moved = tmp_path / "backups" / "web1" / "elsewhere"
    path.parent.rename(moved)
    (moved / "manifest.json").write_bytes(manifest.to_json())
    with pytest.raises(ManifestCorruptError, match="not to its directory"):
        store.list_backups()


def test_commit_refuses_a_chunk_never_given(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rrr")
    incomplete = pytest.raises(BackupIncompleteError, match="vda has 1 of 3 chunks never put, zeroed or reused: 1")
    with incomplete, store.begin_backup("web1", backup_id="b1") as session:
        writer = session.disk("vda", len(data))
        writer.put(0, data[:CHUNK])
        writer.zero(2)
        session.commit()
    assert not (tmp_path / "backups" / "web1" / "b1").exists()
    assert store.list_backups() == []


def test_chunk_misuse_is_rejected(tmp_path):
    store = new_store(tmp_path)
    with store.begin_backup("web1") as session:
        writer = session.disk("vda", 2 * CHUNK)
        writer.zero(0)
        with pytest.raises(BackupWriteError, match="already given"):
            writer.put(0, bytes(CHUNK))
        with pytest.raises(BackupWriteError, match="out of range"):
            writer.zero(2)
        with pytest.raises(BackupWriteError, match="expected"):
            writer.put(1, b"short")
        with pytest.raises(BackupWriteError, match="already added"):
            session.disk("vda", CHUNK)
        writer.zero(1)
        session.commit()
        with pytest.raises(BackupWriteError, match="committed"):
            writer.zero(0)


def test_abort_leaves_no_backup(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rr")
    with pytest.raises(RuntimeError), store.begin_backup("web1", backup_id="b1") as session:
        session.disk("vda", len(data)).put(0, data[:CHUNK])
        raise RuntimeError("source went away")
    assert not (tmp_path / "backups" / "web1" / "b1").exists()
    with pytest.raises(BackupNotFoundError, match=f"b1 not found in store {tmp_path}"):
        store.get_backup("b1")
    # The id is free again.
    backup_image(store, "web1", {"vda": data}, backup_id="b1")


def test_worker_error_surfaces_to_the_caller(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rrrrr", seed=4)
    # A file where chunk 0's directory must go makes its write fail.
    store.chunks.path(blake3.blake3(data[:CHUNK]).digest()).parent.parent.write_bytes(b"in the way")
    with store.begin_backup("web1", workers=1) as session:
        writer = session.disk("vda", len(data))
        with pytest.raises(ChunkWriteError, match="disk vda chunk 0 could not be stored") as failure:
            for chunk_no in range(5):
                writer.put(chunk_no, data[chunk_no * CHUNK : (chunk_no + 1) * CHUNK])
        assert isinstance(failure.value.__cause__, OSError)
        with pytest.raises(ChunkWriteError):
            session.commit()
    assert store.list_backups() == []


@pytest.mark.parametrize("vm", ["", "../etc", "a/b", ".hidden", "with space", "-flag", "x" * 129])
def test_invalid_vm_names_are_rejected(tmp_path, vm):
    store = new_store(tmp_path)
    with pytest.raises(InvalidNameError, match="vm name"):
        store.begin_backup(vm)


def test_invalid_disk_names_and_backup_ids_are_rejected(tmp_path):
    store = new_store(tmp_path)
    with pytest.raises(InvalidNameError, match="backup id"):
        store.begin_backup("web1", backup_id="../../x")
    with pytest.raises(InvalidNameError, match="backup id"):
        store.get_backup("a/b")
    with store.begin_backup("web1") as session, pytest.raises(InvalidNameError, match="disk name"):
        session.disk("vda/../../x", CHUNK)
    assert store.list_backups() == []


def test_backup_kind_and_parent_must_agree(tmp_path):
    store = new_store(tmp_path)
    full = backup_image(store, "web1", {"vda": disk_image("r")})
    with pytest.raises(BackupWriteError, match="needs a parent"):
        store.begin_backup("web1", kind="incremental")
    with pytest.raises(BackupWriteError, match="belongs to vm"):
        store.begin_backup("web2", kind="incremental", parent=full)
    with pytest.raises(BackupWriteError, match="JSON"):
        store.begin_backup("web1", vm_definition={"bad": object()})


def test_list_and_get_backups(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("r")
    a = backup_image(store, "web1", {"vda": data})
    b = backup_image(store, "db1", {"vda": data})
    c = backup_image(store, "web1", {"vda": data}, backup_id="manual-1")
    in_progress = store.begin_backup("web1", backup_id="in-progress")
    with pytest.raises(BackupExistsError):
        store.begin_backup("db1", backup_id="manual-1")
    assert [m.backup_id for m in store.list_backups()] == [a.backup_id, b.backup_id, "manual-1"]
    assert store.list_backups("web1") == [a, c]
    assert store.list_backups("nobody") == []
    assert store.get_backup(b.backup_id) == b
    with pytest.raises(BackupNotFoundError):
        store.get_backup("in-progress")
    in_progress.abort()
    assert a.backup_id[:8].isdigit() and a.backup_id[8] == "T" and a.backup_id[15:17] == "Z-"


def test_notes_and_manifest_json(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("r")
    with store.begin_backup("web1", checkpoint="cairn-1", vm_definition={"name": "web1", "vcpus": 2}) as session:
        session.disk("vda", len(data)).put(0, data)
        session.note("full read of vda: bitmap missing")
        manifest = session.commit()
    raw = json.loads((tmp_path / "backups" / "web1" / manifest.backup_id / "manifest.json").read_text())
    assert raw["format_version"] == 1
    assert raw["notes"] == ["full read of vda: bitmap missing"]
    assert raw["checkpoint"] == "cairn-1" and raw["parent"] is None and raw["kind"] == "full"
    assert raw["created"].endswith("Z")
    assert raw["disks"][0]["stats"]["chunks_written"] == 1
    assert len(raw["disks"][0]["index_digest"]) == 64
    assert store.get_backup(manifest.backup_id).notes == ("full read of vda: bitmap missing",)
