"""Uploaded and imported images may not reach outside themselves (vmm/images.py inspect_image):
raw and self-contained qcow2 only; a qcow2 naming a data file or a backing file, and every other
format (vmdk extents, vhdx, vpc, qed...) is refused without qemu-img ever opening what it names.
Images already in the library are inspected again when used."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.context import Appliance
from vmm import ImageError, create_disk
from vmm.images_library import ImageLibrary

MiB = 1 << 20


def upload(client: TestClient, name: str, path: Path):
    return client.put(f"/api/v1/images/{name}", content=path.read_bytes(),
                      headers={"content-type": "application/octet-stream"})


def refused(answer, words: str) -> None:
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]["message"], answer.text


def qcow2_with_data_file(path: Path, data_file: str) -> Path:
    """A qcow2 whose clusters live in `data_file` (made real, then pointed elsewhere)."""
    real = path.with_suffix(".data")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={real}", str(path), "1M"],
                   check=True)
    subprocess.run(["qemu-img", "amend", "-q", "-f", "qcow2", "-o", f"data_file={data_file}", str(path)],
                   check=True, capture_output=True)
    real.unlink()
    return path


def test_a_qcow2_with_an_external_data_file_is_refused(appliance: Appliance, operator_client: TestClient,
                                                       tmp_path: Path):
    image = qcow2_with_data_file(tmp_path / "steal.qcow2", "/etc/shadow")
    refused(upload(operator_client, "steal", image), "data file")
    backing = tmp_path / "backed.qcow2"
    create_disk(backing, MiB)
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b",
                    'json:{"driver": "raw", "file": {"driver": "file", "filename": "/etc/shadow"}}', str(backing)],
                   check=True)
    refused(upload(operator_client, "backed", backing), "backing file")
    assert operator_client.get("/api/v1/images").json() == []
    assert not [p for p in appliance.vms.images.root.iterdir() if p.name.startswith(".upload")]


def test_other_formats_are_refused_without_opening_what_they_name(operator_client: TestClient, tmp_path: Path):
    fifo = tmp_path / "extent"
    os.mkfifo(fifo)
    descriptor = tmp_path / "flat.vmdk"
    descriptor.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                          f'createType="monolithicFlat"\n\nRW 2048 FLAT "{fifo}" 0\n')
    opened: list[bool] = []
    stop = threading.Event()

    def watch_the_extent() -> None:
        # Only a reader makes a non-blocking open for writing succeed: whoever opened the extent.
        while not stop.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                opened.append(True)
                return
            except OSError:
                time.sleep(0.05)
    watcher = threading.Thread(target=watch_the_extent)
    watcher.start()
    try:
        answer = upload(operator_client, "flat", descriptor)
        refused(answer, "vmdk")
        assert str(fifo) not in answer.text
    finally:
        stop.set()
        watcher.join()
    assert not opened, "the upload's inspection opened the file the vmdk descriptor names"
    for fmt in ("vmdk", "vhdx", "vpc", "vdi", "qed", "parallels"):
        made = tmp_path / f"image.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(made), "1M"], check=True)
        refused(upload(operator_client, fmt, made), fmt)
    assert operator_client.get("/api/v1/images").json() == []


def test_raw_and_self_contained_qcow2_are_accepted(operator_client: TestClient, tmp_path: Path):
    qcow2 = tmp_path / "good.qcow2"
    create_disk(qcow2, 4 * MiB)
    raw = tmp_path / "good.raw"
    raw.write_bytes(b"\x5a" * MiB)
    for name, path, fmt in (("q", qcow2, "qcow2"), ("r", raw, "raw")):
        r = upload(operator_client, name, path)
        assert r.status_code == 201, r.text
        assert r.json()["format"] == fmt


def test_a_library_image_is_inspected_again_when_used(appliance: Appliance, operator_client: TestClient,
                                                      tmp_path: Path):
    """An image that reached the library before uploads were inspected (its record and checksum
    in order) is refused when a VM would use it."""
    library: ImageLibrary = appliance.vms.images
    image = qcow2_with_data_file(tmp_path / "old.qcow2", "/etc/shadow")
    library.root.mkdir(parents=True, exist_ok=True)
    library.path("old").write_bytes(image.read_bytes())
    record = {"name": "old", "kind": "disk", "format": "qcow2", "size": image.stat().st_size,
              "virtual_size": MiB, "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
              "source": "upload", "created_at": "2024-01-01T00:00:00+00:00"}
    (library.root / "old.json").write_text(json.dumps(record))
    r = operator_client.post("/api/v1/vms", json={"name": "reader", "image": "old"})
    refused(r, "data file")
    assert operator_client.get("/api/v1/vms").json() == []
    with pytest.raises(ImageError, match="data file"):
        library.verify("old")
