#!/usr/bin/env python3
"""A backup into Ceph beside the local store: the same disk, the same code, three backends.

The benches' 2 GiB disk (bench/disk.py: about 1.2 GiB of real files and random data) is backed
up as a stopped VM's would be (qemu-nbd → libnbd → BLAKE3 + zstd → packs of 64 MiB), then
restored into a sparse raw file, with a store
  local   a directory on this machine's disk
  rados   a pool of a one-node Ceph started here (tests/ceph_cluster.py) on bluestore: a 20 GiB
          sparse file on the same disk, so the data reaches a disk as the local store's does
  s3      a bucket of radosgw on the same cluster
Printed: seconds and MB/s of data bytes for each, the bytes stored, and each backend's ratio to
the local store. The cluster is stopped and removed at the end. Run: `make bench` (or
.venv/bin/python bench/scale_out.py [--json FILE]).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from ceph_cluster import CephCluster, _free_port, _why_not
from disk import bench_disk
from store_helpers import ingest_images

from dedup import Store
from restore import restore_disk

MB = 1_000_000


def measure(name: str, location: str, image: Path, data_bytes: int, scratch: Path) -> dict[str, float | str]:
    store = Store.init(location)
    started = time.perf_counter()
    manifest = ingest_images(store, "bench", {"vda": image})
    backup = time.perf_counter() - started
    stored = sum(d.stats.bytes_stored for d in manifest.disks)
    target = scratch / f"{name}.raw"
    started = time.perf_counter()
    restore_disk(store, manifest.backup_id, "vda", target)
    restored = time.perf_counter() - started
    target.unlink()
    store.close()
    return {"store": name, "backup_s": backup, "backup_MBps": data_bytes / backup / MB, "stored_MB": stored / MB,
            "restore_s": restored, "restore_MBps": data_bytes / restored / MB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    reason = _why_not()
    if reason:
        raise SystemExit(f"scale_out bench: {reason}")
    disk = bench_disk(ROOT / ".cache")
    scratch = Path(tempfile.mkdtemp(prefix="cairn-bench-scale-"))
    cluster = CephCluster(scratch / "ceph", scratch / "ceph" / "ceph.conf", _free_port(), objectstore="bluestore")
    cluster.dir.mkdir()
    results = []
    try:
        started = time.perf_counter()
        cluster.start()
        cluster.start_rgw()
        print(f"one-node Ceph (bluestore, radosgw) up in {time.perf_counter() - started:.1f} s", flush=True)
        os.environ.update(cluster.s3_env())
        for name, location in [("local", str(scratch / "store")), ("rados", cluster.rados_url("bench")),
                               ("s3", cluster.s3_url("bench"))]:
            results.append(measure(name, location, disk.raw, disk.data_bytes, scratch))
            print(json.dumps(results[-1]), flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    local = results[0]
    print(f"\n{disk.data_bytes / MB:.0f} MB of data in a {disk.raw.stat().st_size >> 30} GiB disk; "
          f"{os.cpu_count()} cores")
    print(f"{'store':<6} {'backup s':>9} {'MB/s':>7} {'× local':>8} {'stored MB':>10} {'restore s':>10} {'MB/s':>7} "
          f"{'× local':>8}")
    for r in results:
        print(f"{r['store']:<6} {r['backup_s']:>9.1f} {r['backup_MBps']:>7.0f} "
              f"{float(r['backup_MBps']) / float(local['backup_MBps']):>8.2f} {r['stored_MB']:>10.0f} "
              f"{r['restore_s']:>10.1f} {r['restore_MBps']:>7.0f} "
              f"{float(r['restore_MBps']) / float(local['restore_MBps']):>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
