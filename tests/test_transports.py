"""NbdSource and the read plan against a real qemu-nbd export."""
from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from transports import Extent, NbdSource, Piece, pieces
from transports.nbd_source import size_class

MiB = 1 << 20


def rss_mib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


@pytest.fixture
def export(tmp_path: Path):
    """A qcow2 with data runs at odd places, served read-only by qemu-nbd; yields (uri, raw copy)."""
    image = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(640 * MiB)], check=True)
    writes = [(0x11, 0, 3 * MiB), (0x22, 5 * MiB + 4096, 70 * MiB), (0x33, 200 * MiB, 300 * MiB),
              (0x44, 640 * MiB - 65536, 65536)]
    for pattern, off, n in writes:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {off} {n}", str(image)],
                       check=True, capture_output=True)
    raw = tmp_path / "d.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    sock = tmp_path / "nbd.sock"
    server = subprocess.Popen(["qemu-nbd", "-r", "-f", "qcow2", "-x", "d", "-k", str(sock), "-t", str(image)])
    while not sock.exists():
        time.sleep(0.02)
    yield f"nbd+unix:///d?socket={sock}", raw
    server.terminate()
    server.wait()


def test_pieces_cut_data_at_block_boundaries_and_keep_zero_runs_whole():
    data = [Extent(3 * MiB, 2 * MiB), Extent(9 * MiB + 4096, 4096)]
    whole = list(pieces(4 * MiB, data, [Extent(0, 16 * MiB)]))
    assert whole == [
        Piece(0, 4 * MiB, (Extent(3 * MiB, MiB),)),
        Piece(4 * MiB, 4 * MiB, (Extent(4 * MiB, MiB),)),
        Piece(8 * MiB, 4 * MiB, (Extent(9 * MiB + 4096, 4096),)),
        Piece(12 * MiB, 4 * MiB, ()),
    ]
    # Only what is wanted (a dirty range), and a zero run is one piece however long.
    dirty = list(pieces(4 * MiB, data, [Extent(4 * MiB + 512, 12 * MiB - 512)]))
    assert dirty == [
        Piece(4 * MiB + 512, 4 * MiB - 512, (Extent(4 * MiB + 512, MiB - 512),)),
        Piece(8 * MiB, 4 * MiB, (Extent(9 * MiB + 4096, 4096),)),
        Piece(12 * MiB, 4 * MiB, ()),
    ]
    assert list(pieces(MiB, [], [Extent(0, 1 << 40)])) == [Piece(0, 1 << 40, ())]


def test_size_classes():
    assert [size_class(n) for n in (1, 4096, 4097, 65536, 65537, MiB - 1)] == [4096, 4096, 8192, 65536, 131072, MiB]


def test_read_pieces_gives_exact_content_in_order_with_bounded_memory(export):
    uri, raw = export
    block = 4 * MiB
    seen: list[int] = []
    with NbdSource(uri) as source, open(raw, "rb") as ref:
        plan = list(pieces(block, source.data_extents(), [Extent(0, source.size)]))
        before = rss_mib()

        def check(piece: Piece, data: bytearray | None) -> None:
            seen.append(piece.offset)
            ref.seek(piece.offset)
            expected = ref.read(piece.length)
            if data is None:
                assert expected == bytes(piece.length), piece
            else:
                assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest(), piece

        source.read_pieces(plan, check)
        grown = rss_mib() - before
    assert seen == [p.offset for p in plan]
    written = 3 * MiB + 70 * MiB + 300 * MiB + 65536
    # Allocation is per 64 KiB qcow2 cluster: an unaligned run costs at most a cluster each side.
    assert written <= source.bytes_read <= written + 2 * 65536
    # Never the data read: libnbd must not keep buffers. (The first pass may leave freed memory
    # in the heap: dedup.buffers keeps up to 512 MiB of it for reuse once a store was opened.)
    assert grown < written // MiB, grown
    # The same pieces again reuse the buffers libnbd cannot free, and the freed heap.
    with NbdSource(uri) as source, open(raw, "rb") as ref:
        before = rss_mib()
        source.read_pieces(plan, check)
        assert rss_mib() - before < 64   # a leak would be the 373 MiB read again


@pytest.fixture
def raw_export(export, tmp_path: Path):
    """The export's raw copy, itself served read-only by qemu-nbd; yields (uri, raw image)."""
    _, raw = export
    sock = tmp_path / "raw.sock"
    server = subprocess.Popen(["qemu-nbd", "-r", "-f", "raw", "-x", "d", "-k", str(sock), "-t", str(raw)])
    while not sock.exists():
        time.sleep(0.02)
    yield f"nbd+unix:///d?socket={sock}", raw
    server.terminate()
    server.wait()


def test_a_raw_image_is_read_directly_with_the_same_pieces_as_through_its_export(raw_export):
    uri, raw = raw_export
    block = 4 * MiB
    got: dict[str, list[tuple[Piece, bytes | None]]] = {}
    reads = {}
    for how, raw_file in (("export", None), ("file", str(raw))):
        with NbdSource(uri, raw_file=raw_file) as source:
            # Odd offsets too: pieces that start inside a block, cover part of it or have gaps.
            wanted = [Extent(0, 9 * MiB + 512), Extent(200 * MiB - 4096, 3 * MiB), Extent(639 * MiB, MiB)]
            plan = list(pieces(block, source.data_extents(), wanted))
            got[how] = []
            source.read_pieces(plan, lambda p, d: got[how].append((p, None if d is None else bytes(d))))  # noqa: B023
            reads[how] = source.bytes_read
    assert got["file"] == got["export"] and reads["file"] == reads["export"]
    data = raw.read_bytes()
    for piece, content in got["file"]:
        assert content == (None if not piece.data else data[piece.offset:piece.offset + piece.length])


def test_a_raw_image_that_is_missing_or_shorter_than_its_export_is_a_clear_error(raw_export, tmp_path: Path):
    uri, raw = raw_export
    from transports.nbd_source import SourceError

    with pytest.raises(SourceError, match="cannot open raw image"):
        NbdSource(uri, raw_file=str(tmp_path / "gone.raw"))
    short = tmp_path / "short.raw"
    short.write_bytes(raw.read_bytes()[:100 * MiB])
    with NbdSource(uri, raw_file=str(short)) as source:
        plan = list(pieces(4 * MiB, source.data_extents(), [Extent(0, source.size)]))
        # The first data past its end is the run at 200 MiB.
        with pytest.raises(SourceError, match=f"short.raw ends at offset {200 * MiB}"):
            source.read_pieces(plan, lambda p, d: None)


def test_missing_bitmap_is_a_clear_error(export):
    uri, _ = export
    with pytest.raises(Exception, match="does not publish dirty bitmap 'nope'"):
        NbdSource(uri, bitmap="nope")
