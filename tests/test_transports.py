"""NbdSource and the chunk plan against a real qemu-nbd export."""
from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from transports import ChunkPlan, Extent, NbdSource

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


def test_plan_splits_extents_by_chunk_and_marks_changed():
    plan = ChunkPlan.build(10 * MiB, 4 * MiB, [Extent(3 * MiB, 2 * MiB), Extent(5 * MiB, MiB)],
                           dirty=[Extent(9 * MiB, 4096)])
    assert plan.chunk_count == 3 and plan.chunk_length(2) == 2 * MiB
    assert plan.data == {0: [Extent(3 * MiB, MiB)], 1: [Extent(4 * MiB, 2 * MiB)]}
    assert plan.changed == {2} and not plan.must_read(0) and plan.must_read(2)
    assert plan.bytes_to_read() == 0


def test_read_chunks_gives_exact_content_in_order_with_bounded_memory(export):
    uri, raw = export
    chunk = 64 * MiB
    seen: list[int] = []
    with NbdSource(uri) as source, open(raw, "rb") as ref:
        plan = ChunkPlan.build(source.size, chunk, source.data_extents())
        before = rss_mib()

        def check(index: int, data: bytearray) -> None:
            seen.append(index)
            ref.seek(index * chunk)
            assert hashlib.sha256(data).digest() == hashlib.sha256(ref.read(len(data))).digest(), index

        source.read_chunks(plan, sorted(plan.data), check)
        grown = rss_mib() - before
    assert seen == sorted(plan.data) == [0, 1, 3, 4, 5, 6, 7, 9]
    written = 3 * MiB + 70 * MiB + 300 * MiB + 65536
    # Allocation is per 64 KiB qcow2 cluster: an unaligned run costs at most a cluster each side.
    assert written <= source.bytes_read <= written + 2 * 65536
    # A few chunks in flight at most, never the whole disk (libnbd must not keep buffers).
    assert grown < 6 * chunk // MiB, grown


def test_missing_bitmap_is_a_clear_error(export):
    uri, _ = export
    with pytest.raises(Exception, match="does not publish dirty bitmap 'nope'"):
        NbdSource(uri, bitmap="nope")
