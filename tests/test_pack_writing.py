"""How packs reach the disk: gathered in 8 MiB segments, written by the closer thread, and on a
local store around the page cache (O_DIRECT), with the buffered path wherever that is refused."""

import mmap
import os
import random
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from dedup.fsutil import DIRECT_MIN, atomic_file
from dedup.local import LocalBackend
from dedup.packs import SEGMENT, SEGMENTS_IN_FLIGHT, PackWriter, pack_file, read_trailer, scan_records

MiB = 1 << 20


def resident_bytes(path: Path) -> int:
    """Bytes of the file in the page cache (util-linux fincore)."""
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def aligned(data: bytes) -> mmap.mmap:
    """data in page-aligned memory, as a pack's segment holds it."""
    buffer = mmap.mmap(-1, len(data))
    buffer.write(data)
    return buffer


def store_dir(tmp_path: Path) -> Path:
    (tmp_path / "packs").mkdir()
    return tmp_path


def write_blocks(backend, blocks, pack_size=20 * MiB):
    """Append blocks (id, stored bytes) with one PackWriter; the closed packs and the records by id."""
    closed_names = []
    writer = PackWriter(backend, pack_size, lambda pack: closed_names.append(pack.name))
    records = {}
    for block_id, stored in blocks:
        name, record = writer.append(block_id, 0, 0, stored, len(stored))
        records[block_id] = (name, record)
    closed = writer.finish()
    assert sorted(closed_names) == sorted(p.name for p in closed)
    return closed, records


def random_blocks(count, seed=1, sizes=(MiB + 17, 3 * MiB - 5, 4096, 1)):
    rng = random.Random(seed)
    return [(rng.randbytes(32), rng.randbytes(sizes[n % len(sizes)])) for n in range(count)]


def test_packs_spanning_many_segments_read_back_whole(tmp_path):
    backend = LocalBackend(store_dir(tmp_path))
    blocks = random_blocks(40)   # ~43 MiB of records at odd lengths: three packs of 2-3 segments each
    closed, records = write_blocks(backend, blocks)
    assert len(closed) == 3 and max(p.size for p in closed) > 2 * SEGMENT
    by_pack = {p.name: p for p in closed}
    for block_id, stored in blocks:
        name, record = records[block_id]
        assert backend.read_range(pack_file(name), record.offset, record.stored_length) == stored
    for pack in closed:
        raw = (tmp_path / pack_file(pack.name)).read_bytes()
        assert len(raw) == by_pack[pack.name].size
        assert read_trailer(backend, pack_file(pack.name), len(raw)) == list(pack.records) == scan_records(raw)[0]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_local_stores_packs_bypass_the_page_cache(tmp_path):
    """Written with O_DIRECT, a pack leaves at most its unaligned tail in the page cache (if the
    file system takes O_DIRECT at all: the machines CI runs on do)."""
    backend = LocalBackend(store_dir(tmp_path))
    closed, _ = write_blocks(backend, random_blocks(20, seed=2, sizes=(2 * MiB,)), pack_size=64 * MiB)
    (pack,) = closed
    path = tmp_path / pack_file(pack.name)
    assert pack.size > 2 * SEGMENT
    assert resident_bytes(path) <= SEGMENT, f"{resident_bytes(path)} of {pack.size} bytes went through the page cache"


@pytest.mark.parametrize("pieces", [
    "aligned",          # whole segments from page-aligned memory: direct
    "header first",     # a small write first: every later offset is unaligned, all buffered
    "unaligned memory",  # a bytes object's memory: refused by the device or taken, content the same
])
def test_append_file_writes_exactly_what_it_was_given(tmp_path, pieces):
    rng = random.Random(3)
    parts = {
        "aligned": [aligned(rng.randbytes(2 * MiB)), aligned(rng.randbytes(DIRECT_MIN + 4096)), b"tail"],
        "header first": [b"header", aligned(rng.randbytes(2 * MiB)), aligned(rng.randbytes(MiB))],
        "unaligned memory": [rng.randbytes(2 * MiB + 100), rng.randbytes(3 * MiB)],
    }[pieces]
    target = tmp_path / "file"
    with atomic_file(target) as f:
        for part in parts:
            assert f.write(part) == len(part)
    assert target.read_bytes() == b"".join(bytes(p) for p in parts)


def test_append_file_falls_back_where_o_direct_is_refused(tmp_path, monkeypatch):
    """A file system without O_DIRECT refuses the open with EINVAL: the file is written buffered."""
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    data = [aligned(random.Random(4).randbytes(2 * MiB)), b"end"]
    with atomic_file(tmp_path / "file") as f:
        for part in data:
            f.write(part)
    assert (tmp_path / "file").read_bytes() == b"".join(bytes(p) for p in data)


class _WatchedBackend(LocalBackend):
    """A local store whose files call before_write(bytes) ahead of each write to them."""

    def __init__(self, root: Path, before_write) -> None:
        super().__init__(root)
        self._before_write = before_write

    @contextmanager
    def atomic_writer(self, name):
        with super().atomic_writer(name) as f:
            yield _WatchedFile(f, self._before_write)


class _WatchedFile:
    def __init__(self, f, before_write) -> None:
        self._f = f
        self._before_write = before_write

    def write(self, data):
        self._before_write(data)
        return self._f.write(data)


def test_a_failed_segment_write_fails_the_pack_and_leaves_nothing(tmp_path):
    writes = []

    def second_write_fails(data):   # a segment's write, or the close's
        writes.append(len(data))
        if len(writes) == 2:
            raise OSError(28, "No space left on device")

    backend = _WatchedBackend(store_dir(tmp_path), second_write_fails)
    writer = PackWriter(backend, 64 * MiB, lambda pack: None)
    for block_id, stored in random_blocks(12, seed=5):
        writer.append(block_id, 0, 0, stored, len(stored))
    with pytest.raises(OSError, match="No space left"):
        writer.finish()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_appends_wait_for_the_closer_beyond_the_segments_in_flight(tmp_path):
    """A slow store holds the writers back rather than letting segments pile up in memory."""
    release = threading.Event()
    most = []

    writer = PackWriter(_WatchedBackend(store_dir(tmp_path), lambda _data: release.wait()), 256 * MiB,
                        lambda pack: None)
    blocks = random_blocks(4 * (SEGMENTS_IN_FLIGHT + 3), seed=6, sizes=(2 * MiB,))

    def append_all():
        for n, (block_id, stored) in enumerate(blocks):
            writer.append(block_id, 0, 0, stored, len(stored))
            most.append(n)

    appender = threading.Thread(target=append_all)
    appender.start()
    appender.join(timeout=3)
    assert appender.is_alive(), "every append returned while no segment could be written"
    # One segment in the closer's hands, SEGMENTS_IN_FLIGHT waiting, one filling: 4 blocks each.
    assert len(most) <= 4 * (SEGMENTS_IN_FLIGHT + 2)
    release.set()
    appender.join()
    closed = writer.finish()
    assert sum(len(p.records) for p in closed) == len(blocks)
