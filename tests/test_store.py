"""The format-2 store: config, packs, blocks, maps, incrementals, and how damage shows."""

import json
import os
import random
import struct

import pytest
from store_helpers import (
    BLOCK,
    CHUNK,
    PACK,
    MiB,
    backup_changes,
    backup_image,
    block_ids,
    block_pack,
    disk_image,
    flip_byte,
    new_store,
    pack_files,
    read_back,
)

from dedup import (
    BackupExistsError,
    BackupIncompleteError,
    BackupNotFoundError,
    BackupWriteError,
    ChunkCorruptError,
    ChunkMissingError,
    ChunkWriteError,
    DiskNotFoundError,
    InvalidNameError,
    ManifestCorruptError,
    MapCorruptError,
    NotAStoreError,
    Store,
    StoreConfigError,
    StoreExistsError,
    StoreNotEmptyError,
)
from dedup.maps import LEAF_SPAN
from dedup.packs import read_trailer, scan_records


def test_init_writes_config_and_open_reads_it(tmp_path):
    store = Store.init(tmp_path / "store", block_size=256 << 10, pack_size=8 * MiB, zstd_level=5)
    config = json.loads((tmp_path / "store" / "config.json").read_text())
    assert config["format"] == "cairn-store"
    assert config["version"] == 3
    assert (config["block_size"], config["pack_size"]) == (256 << 10, 8 * MiB)
    assert config["compression"] == {"algorithm": "zstd", "level": 5}
    assert config["id"] == store.config.id
    assert config["created"].endswith("Z")
    assert sorted(os.listdir(tmp_path / "store")) == ["backups", "config.json", "index", "locks", "packs", "writers"]
    reopened = Store.open(tmp_path / "store")
    assert reopened.config == store.config


def test_init_defaults_to_2_mib_blocks_in_64_mib_packs(tmp_path):
    store = Store.init(tmp_path)
    assert (store.config.block_size, store.config.pack_size, store.config.zstd_level) == (2 * MiB, 64 * MiB, 3)


@pytest.mark.parametrize(("block_size", "pack_size"), [(3 * 65536, PACK), (8 << 10, PACK), (32 * MiB, 64 * MiB),
                                                       (MiB, 512 << 10), (BLOCK, 2 << 30)])
def test_init_rejects_bad_sizes(tmp_path, block_size, pack_size):
    with pytest.raises(StoreConfigError, match="size"):
        Store.init(tmp_path / "s", block_size=block_size, pack_size=pack_size)
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
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "config.json").write_text('{"format": "cairn-store", "version": 4}')
    for name in ["random", "empty", "missing", "badconfig", "future"]:
        with pytest.raises(NotAStoreError, match=str(tmp_path / name)):
            Store.open(tmp_path / name)


def test_round_trip_with_short_tail(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rtsr", tail=12345)
    manifest = backup_image(store, "web1", {"vda": data}, vm_definition={"xml": "<domain/>"})
    assert read_back(store, manifest, "vda") == data
    disk = manifest.disk("vda")
    assert disk.size == len(data) and disk.layout.depth == 0 and disk.layout.leaf_span == LEAF_SPAN
    # Every 64 KiB slot holding data is a block; zero slots are holes.
    slots = {data[o:o + BLOCK] for o in range(0, len(data), BLOCK)} - {bytes(BLOCK)}
    assert disk.stats.blocks_written == len(slots)
    assert disk.stats.bytes_read == disk.stats.bytes_changed == len(data)
    assert 0 < disk.stats.bytes_stored < len(data) and disk.stats.pages_written == 1
    assert store.get_backup(manifest.backup_id) == manifest
    assert manifest.vm_definition == {"xml": "<domain/>"}


def test_packs_describe_themselves(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rrt", seed=2)
    manifest = backup_image(store, "web1", {"vda": data})
    packs = pack_files(store)
    # 2 MiB of random data fills two 1 MiB packs; the text and the map page go to smaller ones.
    assert len(packs) >= 3 and all(p.read_bytes()[:8] == b"CAIRNPAK" for p in packs)
    described = {}
    for path in packs:
        raw = path.read_bytes()
        assert raw[-8:] == b"CAIRNEND"
        from_trailer = read_trailer(store.backend, f"packs/{path.parent.name}/{path.name}", len(raw))
        from_headers, stopped = scan_records(raw)
        assert from_trailer == from_headers and stopped == struct.unpack("<Q", raw[-24:-16])[0]
        described |= {r.block_id: r for r in from_trailer}
    assert set(block_ids(store, manifest, "vda")) <= set(described)
    # Random data is stored raw (codec 0); text compressed (codec 1).
    random_block = described[block_ids(store, manifest, "vda")[0]]
    text_block = described[block_ids(store, manifest, "vda")[-1]]
    assert (random_block.codec, random_block.stored_length) == (0, BLOCK)
    assert text_block.codec == 1 and text_block.stored_length < BLOCK // 2


def test_holes_are_never_stored(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("zrz", tail=100)
    with store.begin_backup("web1") as session:
        writer = session.disk("vda", len(data))
        writer.put(0, data[:CHUNK])  # zero content found by the store
        writer.put(CHUNK, data[CHUNK:2 * CHUNK])
        writer.zero(2 * CHUNK, CHUNK)  # declared zero by the caller, nothing read
        writer.put(3 * CHUNK, data[3 * CHUNK:])
        manifest = session.commit()
    stats = manifest.disk("vda").stats
    assert stats.blocks_written == 17  # 16 random and the 100-byte tail
    entries = list(store.disk_map(manifest, "vda").entries())
    assert (entries[0].offset, entries[-1].end) == (CHUNK, 3 * CHUNK + 100)
    assert sum(e.length for e in entries) == CHUNK + 100
    assert read_back(store, manifest, "vda") == data


def test_identical_blocks_are_stored_once(tmp_path):
    store = new_store(tmp_path)
    chunk = disk_image("r", seed=7)
    first = backup_image(store, "web1", {"vda": chunk * 4, "vdb": chunk})
    stats = first.disk("vda").stats
    assert (stats.blocks_written, stats.blocks_deduplicated) == (16, 48)
    assert first.disk("vdb").stats.blocks_deduplicated == 16
    second = backup_image(store, "web2", {"vda": chunk})
    assert second.disk("vda").stats.blocks_deduplicated == 16
    assert second.disk("vda").stats.bytes_stored == 0
    assert second.disk("vda").stats.metadata_stored == 0  # the same map page as web1's vdb


def test_incremental_stores_what_changed_and_keeps_the_rest(tmp_path):
    store = new_store(tmp_path)
    base = disk_image("rzrr", tail=500, seed=1)
    full = backup_image(store, "web1", {"vda": base}, checkpoint="cairn-1")
    changed = bytearray(base)
    rng = random.Random(3)
    writes = sorted(rng.randrange(len(base) // 4096) * 4096 for _ in range(20))
    writes = [w for n, w in enumerate(writes) if n == 0 or w != writes[n - 1]]
    for offset in writes:
        changed[offset:offset + 4096] = rng.randbytes(4096)
    incremental = backup_changes(store, full, {"vda": [(o, bytes(changed[o:o + 4096])) for o in writes]},
                                 checkpoint="cairn-2")
    assert (incremental.kind, incremental.parent, incremental.checkpoint) == ("incremental", full.backup_id, "cairn-2")
    stats = incremental.disk("vda").stats
    changed_bytes = 4096 * len(writes)
    assert stats.bytes_changed == changed_bytes and stats.bytes_read == 0
    assert stats.bytes_inherited == 3 * CHUNK + 500 - sum(1 for w in writes if not CHUNK <= w < 2 * CHUNK) * 4096
    # Scattered 4 KiB writes are gathered into shared blocks: the data costs what changed.
    assert stats.blocks_written == -(-changed_bytes // BLOCK)
    assert changed_bytes < stats.bytes_stored + stats.metadata_stored < 2 * changed_bytes
    assert read_back(store, incremental, "vda") == bytes(changed)
    assert read_back(store, full, "vda") == base


def test_incremental_of_a_grown_and_of_a_shrunk_disk(tmp_path):
    store = new_store(tmp_path)
    base = disk_image("rrr", seed=4)
    full = backup_image(store, "web1", {"vda": base})
    grown = base + disk_image("t", seed=5)
    with store.begin_backup("web1", kind="incremental", parent=full) as session:
        writer = session.disk("vda", len(grown))
        assert writer.must_read() == [(len(base), CHUNK)]
        with pytest.raises(BackupIncompleteError, match="beyond the parent disk"):
            session.commit()
        writer.put(len(base), grown[len(base):])
        bigger = session.commit()
    assert read_back(store, bigger, "vda") == grown
    shrunk = backup_changes(store, bigger, {}, sizes={"vda": CHUNK + 4096})
    assert read_back(store, shrunk, "vda") == grown[:CHUNK + 4096]


def test_lost_parent_blocks_must_be_read_again(tmp_path):
    store = new_store(tmp_path)
    base = disk_image("rr", seed=2)
    full = backup_image(store, "web1", {"vda": base})
    lost = block_ids(store, full, "vda")[3]
    pack = block_pack(store, lost)
    doomed = {r.block_id for r in store.blocks.index.packs[pack.name].records}
    pack.unlink()
    store.blocks.reload()
    with store.begin_backup("web1", kind="incremental", parent=full) as session:
        writer = session.disk("vda", len(base))
        must = writer.must_read()
        assert must and all((o // BLOCK * BLOCK, BLOCK) == (o, n) for o, n in must)
        assert {o // BLOCK for o, _ in must} == {n for n, b in enumerate(block_ids(store, full, "vda")) if b in doomed}
        for offset, length in must:
            writer.put(offset, base[offset:offset + length])
        healed = session.commit()
    assert read_back(store, healed, "vda") == base


def test_unusable_parent_map_means_nothing_is_inherited(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rr", seed=5)
    full = backup_image(store, "web1", {"vda": data})
    root = bytes.fromhex(full.disk("vda").layout.root)
    block_pack(store, root).unlink()
    store.blocks.reload()
    with store.begin_backup("web1", kind="incremental", parent=full) as session:
        writer = session.disk("vda", len(data))
        assert writer.must_read() == [(0, len(data))] and not writer.incremental
        writer.put(0, data)
        manifest = session.commit()
    assert len(manifest.notes) == 1 and "parent map of vda unusable" in manifest.notes[0]
    assert read_back(store, manifest, "vda") == data


def test_corrupted_or_missing_block_is_detected(tmp_path):
    store = new_store(tmp_path)
    manifest = backup_image(store, "web1", {"vda": disk_image("rt", seed=3)})
    random_id, text_id = block_ids(store, manifest, "vda")[0], block_ids(store, manifest, "vda")[-1]
    pack, record = store.blocks.locate(random_id)
    flip_byte(block_pack(store, random_id), offset=record.offset + 100)
    with pytest.raises(ChunkCorruptError, match=random_id.hex()) as corrupt:
        store.read_block(manifest, random_id)
    assert corrupt.value.chunk_id == random_id.hex() and pack in str(corrupt.value)
    block_pack(store, text_id).unlink()
    store.blocks.reload()
    with pytest.raises(ChunkMissingError, match=text_id.hex()):
        store.read_block(manifest, text_id)


def test_damaged_map_page_is_detected(tmp_path):
    store = new_store(tmp_path)
    manifest = backup_image(store, "web1", {"vda": disk_image("rr")})
    root = bytes.fromhex(manifest.disk("vda").layout.root)
    _, record = store.blocks.locate(root)
    flip_byte(block_pack(store, root), offset=record.offset + 5)
    with pytest.raises(MapCorruptError, match=f"backup {manifest.backup_id} disk vda"):
        list(store.disk_map(manifest, "vda").entries())
    with pytest.raises(DiskNotFoundError, match="vdz"):
        store.disk_map(manifest, "vdz")


def test_damaged_manifest_is_reported_and_the_others_still_list(tmp_path):
    store = new_store(tmp_path)
    manifest = backup_image(store, "web1", {"vda": disk_image("r")})
    other = backup_image(store, "web1", {"vda": disk_image("r", seed=9)})
    path = tmp_path / "backups" / "web1" / manifest.backup_id / "manifest.json"
    path.write_text(path.read_text().replace('"kind": "full"', '"kind": "weekly"'))
    with pytest.raises(ManifestCorruptError, match="unknown kind 'weekly'"):
        store.get_backup(manifest.backup_id)
    listing = store.scan_backups()
    assert [m.backup_id for m in listing.manifests] == [other.backup_id]
    assert [(u.backup_id, u.disk) for u in listing.unreadable] == [(manifest.backup_id, None)]
    assert "unknown kind 'weekly'" in listing.unreadable[0].error
    # One backup's manifest copied over another's: that one is named, the rest list.
    path.write_bytes((tmp_path / "backups" / "web1" / other.backup_id / "manifest.json").read_bytes())
    assert [u.backup_id for u in store.scan_backups().unreadable] == [manifest.backup_id]
    assert "not to its directory" in store.scan_backups().unreadable[0].error
    assert store.list_backups() == [other]


def test_commit_refuses_bytes_never_given(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rrr")
    incomplete = pytest.raises(BackupIncompleteError, match=f"vda has {CHUNK} of {3 * CHUNK} bytes never put")
    with incomplete, store.begin_backup("web1", backup_id="b1") as session:
        writer = session.disk("vda", len(data))
        writer.put(0, data[:CHUNK])
        writer.zero(2 * CHUNK, CHUNK)
        session.commit()
    assert not (tmp_path / "backups" / "web1" / "b1").exists()
    assert store.list_backups() == []


def test_misuse_is_rejected(tmp_path):
    store = new_store(tmp_path)
    with store.begin_backup("web1") as session:
        writer = session.disk("vda", 2 * CHUNK)
        writer.zero(0, CHUNK)
        with pytest.raises(BackupWriteError, match="already given"):
            writer.put(CHUNK - 1, bytes(2))
        with pytest.raises(BackupWriteError, match="outside"):
            writer.zero(CHUNK, CHUNK + 1)
        with pytest.raises(BackupWriteError, match="already added"):
            session.disk("vda", CHUNK)
        writer.zero(CHUNK, CHUNK)
        session.commit()
        with pytest.raises(BackupWriteError, match="committed"):
            writer.zero(0, 1)


def test_abort_leaves_no_backup_and_no_temporary_pack(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rr")
    with pytest.raises(RuntimeError), store.begin_backup("web1", backup_id="b1") as session:
        session.disk("vda", len(data)).put(0, data[:CHUNK])
        raise RuntimeError("source went away")
    assert not (tmp_path / "backups" / "web1" / "b1").exists()
    assert not [p for p in (tmp_path / "packs").rglob(".*")]
    with pytest.raises(BackupNotFoundError, match=f"b1 not found in store {tmp_path}"):
        store.get_backup("b1")
    # The id is free again.
    backup_image(store, "web1", {"vda": data}, backup_id="b1")


def test_worker_error_surfaces_to_the_caller(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rrrrr", seed=4)
    for prefix in range(256):  # files where the pack directories must go
        (tmp_path / "packs" / f"{prefix:02x}").write_bytes(b"in the way")
    with store.begin_backup("web1", workers=1) as session:
        writer = session.disk("vda", len(data))
        with pytest.raises(ChunkWriteError, match="disk vda: a block could not be stored") as failure:
            for start in range(0, len(data), CHUNK):
                writer.put(start, data[start:start + CHUNK])
        assert isinstance(failure.value.__cause__, OSError)
        with pytest.raises(ChunkWriteError):
            session.commit()
    assert store.list_backups() == []


@pytest.mark.parametrize("vm", ["", "../etc", "a/b", ".hidden", "with space", "-flag", "x" * 129, "web\n"])
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
    assert raw["format_version"] == 2
    assert raw["notes"] == ["full read of vda: bitmap missing"]
    assert raw["checkpoint"] == "cairn-1" and raw["parent"] is None and raw["kind"] == "full"
    assert raw["created"].endswith("Z")
    assert raw["disks"][0]["map"] == {"root": manifest.disk("vda").layout.root, "depth": 0,
                                      "leaf_span": LEAF_SPAN, "fanout": 256}
    assert raw["disks"][0]["stats"]["blocks_written"] == 16
    assert store.get_backup(manifest.backup_id).notes == ("full read of vda: bitmap missing",)


def test_a_lost_block_index_is_rebuilt_from_the_packs(tmp_path):
    store = new_store(tmp_path)
    data = disk_image("rtr", seed=6)
    manifest = backup_image(store, "web1", {"vda": data})
    for path in (tmp_path / "index").iterdir():
        path.unlink()
    reopened = Store.open(tmp_path)
    assert read_back(reopened, manifest, "vda") == data
    load = reopened.blocks.index.load_report
    assert load.index_files == () and len(load.unindexed) == len(pack_files(store))
