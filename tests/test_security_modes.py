"""What Cairn writes is its own: the data dir 0700, files 0600 (library images 0400), whatever umask
the shell that started it had (`cairn` sets its own first), and the files holding secrets or VM
data get their mode explicitly, also when the appliance is used as a library."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.context import Appliance
from vmm import create_disk

MiB = 1 << 20


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def cairn(data_dir: Path, *args: str) -> str:
    """The `cairn` command, started from a shell with the common umask 022."""
    done = subprocess.run([str(Path(sys.executable).with_name("cairn")), *args], capture_output=True, text=True,
                          env={**os.environ, "CAIRN_DATA_DIR": str(data_dir)}, preexec_fn=lambda: os.umask(0o022),
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.sqlite_only(reason="the modes of the SQLite catalog's own files; on PostgreSQL the rest is the same code")
def test_everything_the_cli_writes_is_private(appliance_data_dir: Path, tmp_path: Path):
    data_dir = appliance_data_dir / "data"
    image = tmp_path / "base.qcow2"
    create_disk(image, 8 * MiB)
    cairn(data_dir, "image", "import", "base", str(image))
    cairn(data_dir, "vm", "create", "web", "--from-image", "base")
    cairn(data_dir, "user", "add", "bob", "--password", "a long enough password")
    cairn(data_dir, "backup", "create", "web")
    assert mode(data_dir) == 0o700
    for name in ("catalog.db", "secret.key"):
        assert mode(data_dir / name) == 0o600, name
    assert mode(data_dir / "images" / "base.img") == 0o400
    assert mode(data_dir / "vms" / "web" / "vda.qcow2") == 0o600
    store_files = [p for p in (data_dir / "store").rglob("*") if p.is_file()]
    assert store_files
    readable = [(str(p), oct(mode(p))) for p in data_dir.rglob("*") if mode(p) & 0o077 and not p.is_symlink()]
    assert not readable, readable


def test_files_with_secrets_or_vm_data_are_private_in_any_process(tmp_path: Path):
    """The test process keeps umask 022: the modes below are set on purpose, not inherited."""
    old = os.umask(0o022)
    try:
        data_dir = tmp_path / "data"
        appliance = Appliance.open(str(data_dir))
        appliance.users.create("ann", "a long enough password", "viewer")
        image = tmp_path / "base.qcow2"
        create_disk(image, 8 * MiB)
        appliance.vms.images.import_file("base", image)
        appliance.vms.create("web", [8 * MiB])
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "catalog.db") == 0o600
        assert mode(data_dir / "secret.key") == 0o600
        assert mode(data_dir / "images" / "base.img") == 0o400
        assert mode(data_dir / "vms" / "web" / "vda.qcow2") == 0o600
        # An older data dir with looser bits is tightened when the appliance opens it.
        data_dir.chmod(0o755)
        (data_dir / "catalog.db").chmod(0o644)
        Appliance.open(str(data_dir))
        assert mode(data_dir) == 0o700 and mode(data_dir / "catalog.db") == 0o600
    finally:
        os.umask(old)
