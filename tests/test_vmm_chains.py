"""Backing chains read from the qcow2 headers (vmm/qcow2.py) name the files qemu-img names, and
every chain it does not read alone is qemu-img's answer (or error)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vmm import ImageError
from vmm.images import backing_chain
from vmm.qcow2 import chain

MiB = 1 << 20


def qemu_img_chain(path: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "--backing-chain", "--output=json", "-U", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return [layer["filename"] for layer in json.loads(out)]


def qcow2(path: Path, backing: str | None = None, backing_format: str | None = None, *options: str) -> Path:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", *options]
    if backing is not None:
        cmd += ["-b", backing, *(["-F", backing_format] if backing_format else [])]
    subprocess.run([*cmd, str(path), str(MiB)], check=True, capture_output=True)
    return path


def no_other_format(head: bytes) -> str | None:
    return None


def test_chains_read_from_the_headers_are_qemu_imgs(tmp_path: Path):
    (tmp_path / "base.raw").write_bytes(b"\0" * MiB)
    (tmp_path / "sub").mkdir()
    layers = [qcow2(tmp_path / "mid.qcow2", "base.raw", "raw"),                       # relative, raw below
              qcow2(tmp_path / "sub" / "top.qcow2", "../mid.qcow2", "qcow2"),         # relative, upwards
              qcow2(tmp_path / "abs.qcow2", str(tmp_path / "sub" / "top.qcow2"), "qcow2", "-o", "compat=0.10"),
              qcow2(tmp_path / "big-clusters.qcow2", str(tmp_path / "abs.qcow2"), "qcow2", "-o", "cluster_size=2M"),
              qcow2(tmp_path / "alone.qcow2"), tmp_path / "base.raw"]
    for top in layers:
        native = chain(str(top), no_other_format)
        assert native is not None and native == qemu_img_chain(top) == backing_chain(top), top
    assert len(backing_chain(tmp_path / "big-clusters.qcow2")) == 5


def test_what_the_headers_do_not_tell_is_left_to_qemu_img(tmp_path: Path):
    base = qcow2(tmp_path / "base.qcow2")
    unnamed = qcow2(tmp_path / "unnamed.qcow2", str(base), "qcow2")
    named_as_json = "json:" + json.dumps({"file.filename": str(base)})
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", named_as_json, str(unnamed)], check=True,
                   capture_output=True)
    assert chain(str(unnamed), no_other_format) is None
    assert backing_chain(unnamed) == qemu_img_chain(unnamed)
    broken = qcow2(tmp_path / "broken.qcow2", str(qcow2(tmp_path / "gone.qcow2")), "qcow2")
    (tmp_path / "gone.qcow2").unlink()
    assert chain(str(broken), no_other_format) is None
    with pytest.raises(ImageError):
        backing_chain(broken)
    foreign = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(foreign), str(MiB)], check=True)
    assert chain(str(foreign), lambda head: "vmdk" if head.startswith(b"KDMV") else None) is None
