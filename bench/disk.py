"""The benches' disk: a 2 GiB ext4 image holding about 1.2 GiB of real files and random data,
and the scattered change applied to it between a full and an incremental backup.

The filesystem is filled from a staging directory with `mke2fs -d` (no mount, no root
needed): the system's own libraries, binaries and shared data (compressible; a file with
several hard links is copied once, as a real root filesystem holds it once) and random files
(incompressible).
Built once and kept in `.cache/bench-disk/` (a new build only when the recipe changes).
"""
from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
SIZE = 2 << 30
REAL_BYTES = 900 * MiB
RANDOM_BYTES = 300 * MiB
RANDOM_FILE = 25 * MiB
SOURCES = ("/usr/lib/x86_64-linux-gnu", "/usr/share", "/usr/bin")
RECIPE = "v2"
# The change between full and incremental, as in the issue: 1% of the disk in 8 regions.
CHANGED = SIZE // 100
REGIONS = 8


@dataclass(frozen=True)
class BenchDisk:
    raw: Path
    qcow2: Path
    data_bytes: int  # allocated bytes of the raw image


def bench_disk(cache: Path) -> BenchDisk:
    """The bench disk as a sparse raw image and as a qcow2 of the same content."""
    folder = cache / f"bench-disk-{RECIPE}"
    disk = BenchDisk(folder / "disk.raw", folder / "disk.qcow2", 0)
    if not disk.qcow2.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        staging = folder / "staging"
        _stage(staging)
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-d", str(staging), str(disk.raw),
                        f"{SIZE // MiB}M"], check=True)
        shutil.rmtree(staging)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk.raw), str(disk.qcow2)],
                       check=True)
    return BenchDisk(disk.raw, disk.qcow2, disk.raw.stat().st_blocks * 512)


def _stage(staging: Path) -> None:
    copied = 0
    inodes = set()
    for source in SOURCES:
        for path in sorted(Path(source).rglob("*")):
            if copied >= REAL_BYTES:
                break
            if not path.is_file() or path.is_symlink():
                continue
            try:
                status = path.stat()
                if (status.st_dev, status.st_ino) in inodes:
                    continue   # a hard link: one file on a real root filesystem, copied once
                inodes.add((status.st_dev, status.st_ino))
                size = status.st_size
                target = staging / "real" / path.relative_to("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            except OSError:
                continue
            copied += size
    rng = random.Random(14)
    (staging / "random").mkdir()
    for n in range(RANDOM_BYTES // RANDOM_FILE):
        (staging / "random" / f"blob{n:02d}.bin").write_bytes(rng.randbytes(RANDOM_FILE))


def scattered_change(seed: int = 1) -> list[tuple[int, bytes]]:
    """1% of the disk as REGIONS runs of random bytes at random 4 KiB-aligned places."""
    rng = random.Random(seed)
    length = CHANGED // REGIONS
    starts = sorted(rng.sample(range(0, (SIZE - length) // 4096), REGIONS))
    return [(start * 4096, rng.randbytes(length)) for start in starts]


def apply_change(change: list[tuple[int, bytes]], image: Path, fmt: str, scratch: Path) -> None:
    """Write the change into an image of either format through qemu-io (which keeps the
    persistent bitmaps of a qcow2 recording, as QEMU would)."""
    commands = []
    for n, (offset, data) in enumerate(change):
        piece = scratch / f"change-{n}.bin"
        piece.write_bytes(data)
        commands += ["-c", f"write -s {piece} {offset} {len(data)}"]
    subprocess.run(["qemu-io", "-f", fmt, *commands, str(image)], check=True, capture_output=True)
    for n in range(len(change)):
        (scratch / f"change-{n}.bin").unlink()
