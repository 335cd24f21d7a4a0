"""The image library: ISO media and disk images, each stored once with its SHA-256.

Layout under the library root, one pair of files per image:
    <name>.img    the image, read-only for the appliance alone (mode 0400): thin VM disks use
                  it as their backing file
    <name>.json   its record: kind, format, sizes, sha256, where it came from, when

Every image is checked against its recorded SHA-256 before it is used (a VM created on it, a
clone cache, an ISO put in a cdrom), so a damaged or tampered image is refused instead of
silently becoming part of a VM. New images are written under a temporary name and appear only
when complete, hashed and inspected: raw or a qcow2 that stands alone, its format decided from
its bytes (vmm.images.sniff_format), never by qemu's probe nor the client. Images that entered
the library before that inspection are inspected again when used.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

from .errors import ImageError
from .images import convert_image, inspect_image, sniff_format
from .spec import VM_NAME_RE

ImageKind = Literal["iso", "disk"]
IMAGE_KINDS = ("iso", "disk")
READ_SIZE = 1 << 20
IMAGE_MODE = 0o400   # read-only, and the appliance's own: an image may hold anyone's data
# ISO 9660: the primary volume descriptor at sector 16 starts with type 1 and "CD001".
ISO_MAGIC_OFFSET = 16 * 2048 + 1
ISO_MAGIC = b"CD001"


class ImageChecksumError(ImageError):
    """The image's bytes no longer match the SHA-256 recorded when it was stored."""


@dataclass(frozen=True)
class ImageRecord:
    name: str
    kind: ImageKind
    format: str           # qcow2 | raw (an ISO is raw)
    size: int             # bytes in the library
    virtual_size: int     # bytes the guest sees
    sha256: str
    source: str
    created_at: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ImageUpload:
    """An image arriving piece by piece: write() its bytes, then commit() or abort()."""

    def __init__(self, library: ImageLibrary, name: str, kind: ImageKind | None, source: str):
        self.library, self.name, self.kind, self.source = library, name, kind, source
        self.path = library.root / f".upload-{name}-{secrets.token_hex(4)}"
        self._file: BinaryIO = self.path.open("xb")
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    def commit(self) -> ImageRecord:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            return self.library._adopt(self.path, self.name, self.kind, self._hash.hexdigest(),
                                       self.source)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ImageLibrary:
    def __init__(self, root: Path):
        self.root = Path(root)
        # (st_ino, st_size, st_mtime_ns, st_ctime_ns) of a file that hashed right: any write
        # or chmod moves ctime, which no user tool can set back, so a match proves no change.
        self._verified: dict[str, tuple[int, int, int, int]] = {}

    def path(self, name: str) -> Path:
        return self.root / f"{_check_name(name)}.img"

    def _record_path(self, name: str) -> Path:
        return self.root / f"{_check_name(name)}.json"

    # -- reading ----------------------------------------------------------------------------

    def get(self, name: str) -> ImageRecord:
        try:
            data = json.loads(self._record_path(name).read_text())
            return ImageRecord(**data)
        except FileNotFoundError:
            raise ImageError(f"no image named {name!r} in the library") from None
        except (ValueError, TypeError) as err:
            raise ImageError(f"the record of image {name!r} is unreadable: {err}") from err

    def list(self) -> list[ImageRecord]:
        if not self.root.is_dir():
            return []
        return [self.get(p.stem) for p in sorted(self.root.glob("*.json"))]

    def verify(self, name: str) -> ImageRecord:
        """The record, after checking the image's bytes against its SHA-256."""
        record = self.get(name)
        path = self.path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError(f"image {name!r}: its file {path} is missing") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._verified.get(name) == key:
            return record
        actual = sha256_file(path)
        if actual != record.sha256:
            raise ImageChecksumError(
                f"image {name!r} is damaged or was modified: its SHA-256 is {actual}, "
                f"recorded {record.sha256}; it will not be used")
        if record.kind == "disk":
            inspect_image(path, record.format, name)
        self._verified[name] = key
        return record

    def verified_path(self, name: str, kind: ImageKind) -> Path:
        """The path of a verified image of this kind, for a VM to use."""
        record = self.verify(name)
        if record.kind != kind:
            raise ImageError(f"image {name!r} is of kind {record.kind}, not {kind}")
        return self.path(name)

    def verified_raw_file(self, name: str) -> Path:
        """The path of a verified raw disk image, for QEMU to read as a file of its own (a
        direct-boot kernel or initrd)."""
        record = self.verify(name)
        if record.kind != "disk" or record.format != "raw":
            raise ImageError(f"image {name!r} is {'an ISO' if record.kind == 'iso' else 'a ' + record.format} "
                             "image: a kernel or an initrd is uploaded as it is (a raw file)")
        return self.path(name)

    def name_of(self, path: str | os.PathLike[str]) -> str | None:
        """The library name of a file, if the file is one of the library's images."""
        candidate = Path(path)
        if candidate.parent.resolve() == self.root.resolve() and candidate.suffix == ".img":
            return candidate.stem
        return None

    # -- adding -----------------------------------------------------------------------------

    def upload(self, name: str, kind: ImageKind | None = None,
               source: str = "upload") -> ImageUpload:
        self._check_new(name, kind)
        return ImageUpload(self, name, kind, source)

    def import_file(self, name: str, src: str | os.PathLike[str],
                    kind: ImageKind | None = None) -> ImageRecord:
        """Copy a file into the library (hashing on the way)."""
        src = Path(src)
        if not src.is_file():
            raise ImageError(f"cannot import {src}: not a file")
        upload = self.upload(name, kind, source=str(src.resolve()))
        try:
            with src.open("rb") as file:
                for block in iter(lambda: file.read(READ_SIZE), b""):
                    upload.write(block)
        except BaseException:
            upload.abort()
            raise
        return upload.commit()

    def import_disk(self, name: str, disk_path: str | os.PathLike[str], source: str,
                    fmt: str = "qcow2") -> ImageRecord:
        """A standalone image of a VM disk: its whole backing chain flattened into one file
        (qemu-img convert). The disk must not be in use by a running VM."""
        self._check_new(name, "disk")
        tmp = self.root / f".convert-{name}-{secrets.token_hex(4)}"
        try:
            convert_image(disk_path, tmp, fmt)
            return self._adopt(tmp, name, "disk", sha256_file(tmp), source)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, name: str) -> None:
        self.get(name)
        self.path(name).unlink(missing_ok=True)
        self._record_path(name).unlink()
        self._verified.pop(name, None)

    # -- internals --------------------------------------------------------------------------

    def _check_new(self, name: str, kind: ImageKind | None) -> None:
        if kind is not None and kind not in IMAGE_KINDS:
            raise ImageError(f"image kind {kind!r} is not one of {', '.join(IMAGE_KINDS)}")
        if self._record_path(name).exists() or self.path(name).exists():
            raise ImageError(f"an image named {name!r} already exists")
        self.root.mkdir(parents=True, exist_ok=True)

    def _adopt(self, tmp: Path, name: str, kind: ImageKind | None, sha256: str,
               source: str) -> ImageRecord:
        """Check a complete temporary file, then publish it under `name` with its record."""
        try:
            detected = _detect(tmp, name)
            if kind is not None and kind != detected[0]:
                what = "an ISO 9660 image" if detected[0] == "iso" else "a disk image, not an ISO"
                raise ImageError(f"image {name!r}: expected kind {kind}, but the file is {what}")
            record = ImageRecord(name=name, kind=detected[0], format=detected[1],
                                 size=tmp.stat().st_size, virtual_size=detected[2],
                                 sha256=sha256, source=source,
                                 created_at=datetime.now(UTC).isoformat(timespec="seconds"))
            tmp.chmod(IMAGE_MODE)
            if self.path(name).exists():
                raise ImageError(f"an image named {name!r} already exists")
            os.link(tmp, self.path(name))  # fails rather than replace a concurrent upload's
        finally:
            tmp.unlink(missing_ok=True)
        record_tmp = self._record_path(name).with_suffix(".json.tmp")
        record_tmp.write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        os.replace(record_tmp, self._record_path(name))
        return record


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(READ_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def _detect(path: Path, name: str) -> tuple[ImageKind, str, int]:
    """(kind, format, virtual size) of a file; refuses what a VM cannot safely use. A library
    image must stand alone: what it names outside the library could be any file of this host,
    and could change under it without the checksum noticing."""
    with path.open("rb") as file:
        file.seek(ISO_MAGIC_OFFSET)
        if file.read(len(ISO_MAGIC)) == ISO_MAGIC:
            return "iso", "raw", path.stat().st_size
    if path.stat().st_size == 0:
        raise ImageError(f"image {name!r} is empty")
    fmt = sniff_format(path, name)
    info = inspect_image(path, fmt, name)
    return "disk", fmt, int(info["virtual-size"])


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not VM_NAME_RE.match(name):
        raise ImageError(f"invalid image name {name!r}: use 1-63 characters a-z 0-9 _ -, "
                         "starting with a letter")
    return name
