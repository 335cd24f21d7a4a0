"""The image library with real qemu-img and real ISO files: import, upload, checksum, refusals."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from guest.harness import MiB

from vmm import ImageError, create_disk, image_info
from vmm.images_library import ImageChecksumError, ImageLibrary

needs_xorriso = pytest.mark.skipif(not shutil.which("xorriso"), reason="xorriso is not installed")


def make_iso(path: Path, content: bytes = b"hello from the cdrom\n") -> Path:
    src = path.parent / f"{path.stem}-files"
    src.mkdir()
    (src / "README.TXT").write_bytes(content)
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), str(src)], check=True,
                   capture_output=True)
    return path


def disk_with_data(path: Path) -> Path:
    create_disk(path, 8 * MiB)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(path)], check=True,
                   capture_output=True)
    return path


def test_import_disk_records_checksum_and_is_read_only(tmp_path):
    lib = ImageLibrary(tmp_path / "images")
    src = disk_with_data(tmp_path / "src.qcow2")
    record = lib.import_file("base", src)
    assert record.kind == "disk" and record.format == "qcow2" and record.virtual_size == 8 * MiB
    assert record.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert lib.path("base").read_bytes() == src.read_bytes()
    assert lib.path("base").stat().st_mode & 0o777 == 0o400
    assert json.loads((tmp_path / "images" / "base.json").read_text())["sha256"] == record.sha256
    assert lib.verify("base") == record
    assert [r.name for r in lib.list()] == ["base"]
    assert lib.verified_path("base", "disk") == lib.path("base")
    with pytest.raises(ImageError, match="of kind disk, not iso"):
        lib.verified_path("base", "iso")


def test_a_tampered_image_is_refused(tmp_path):
    lib = ImageLibrary(tmp_path / "images")
    lib.import_file("base", disk_with_data(tmp_path / "src.qcow2"))
    lib.verify("base")                       # hashed once and remembered
    path = lib.path("base")
    path.chmod(0o644)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x66 1M 4k", str(path)], check=True,
                   capture_output=True)
    with pytest.raises(ImageChecksumError, match="damaged or was modified"):
        lib.verify("base")
    with pytest.raises(ImageChecksumError):
        lib.verified_path("base", "disk")
    path.unlink()
    with pytest.raises(ImageError, match="missing"):
        lib.verify("base")


@needs_xorriso
def test_upload_detects_iso_and_refuses_kind_mismatch(tmp_path):
    lib = ImageLibrary(tmp_path / "images")
    iso = make_iso(tmp_path / "media.iso")
    upload = lib.upload("media")
    data = iso.read_bytes()
    for offset in range(0, len(data), 4096):
        upload.write(data[offset:offset + 4096])
    record = upload.commit()
    assert record.kind == "iso" and record.format == "raw" and record.size == len(data)
    assert record.sha256 == hashlib.sha256(data).hexdigest() and record.source == "upload"
    with pytest.raises(ImageError, match="expected kind disk, but the file is an ISO"):
        lib.import_file("iso-as-disk", iso, kind="disk")
    with pytest.raises(ImageError, match="expected kind iso, but the file is a disk image"):
        lib.import_file("disk-as-iso", disk_with_data(tmp_path / "d.qcow2"), kind="iso")
    assert [r.name for r in lib.list()] == ["media"]
    assert not [p for p in (tmp_path / "images").iterdir() if p.name.startswith(".")]


def test_bad_input_changes_nothing(tmp_path):
    lib = ImageLibrary(tmp_path / "images")
    lib.import_file("base", disk_with_data(tmp_path / "src.qcow2"))
    before = sorted(p.name for p in (tmp_path / "images").iterdir())
    with pytest.raises(ImageError, match="already exists"):
        lib.import_file("base", tmp_path / "src.qcow2")
    with pytest.raises(ImageError, match="invalid image name"):
        lib.import_file("../etc", tmp_path / "src.qcow2")
    with pytest.raises(ImageError, match="not a file"):
        lib.import_file("nothing", tmp_path / "missing.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    create_disk(overlay, None, backing=tmp_path / "src.qcow2")
    with pytest.raises(ImageError, match="has a backing file"):
        lib.import_file("overlay", overlay)
    empty = tmp_path / "empty.raw"
    empty.touch()
    with pytest.raises(ImageError, match="empty"):
        lib.import_file("empty", empty)
    with pytest.raises(ImageError, match="no image named"):
        lib.get("ghost")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == before


def test_import_disk_flattens_the_backing_chain(tmp_path):
    lib = ImageLibrary(tmp_path / "images")
    base = disk_with_data(tmp_path / "base.qcow2")
    top = tmp_path / "top.qcow2"
    create_disk(top, None, backing=base)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 2M 64k", str(top)], check=True,
                   capture_output=True)
    record = lib.import_disk("flat", top, source="vm:x/vda")
    assert record.source == "vm:x/vda" and "backing-filename" not in image_info(lib.path("flat"))
    subprocess.run(["qemu-img", "compare", "-q", str(top), str(lib.path("flat"))], check=True)
    lib.delete("flat")
    assert not lib.path("flat").exists() and [r.name for r in lib.list()] == []
