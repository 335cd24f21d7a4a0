"""The CLI on bad input and on the restore edge cases: clear errors, nothing changed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from backup_helpers import allocated_bytes, same_content
from restore_helpers import backup_file, boot_sector, same_image
from store_helpers import block_ids, block_pack, flip_byte

from dedup import Store

CAIRN = str(Path(sys.executable).with_name("cairn"))
MiB = 1 << 20


@pytest.fixture
def data_dir(appliance_data_dir: Path) -> Path:
    return appliance_data_dir


@pytest.fixture
def cairn(data_dir: Path):
    env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir)}

    def call(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], check=False, env=env, capture_output=True, text=True, timeout=300)
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc
    return call


def backups_on_disk(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "store" / "backups").glob("*/*/manifest.json"))


def disk_of(cairn, vm: str, name: str = "vda") -> str:
    return next(d["path"] for d in json.loads(cairn("vm", "show", vm, "--json").stdout)["disks"] if d["name"] == name)


def backed_up_vm(cairn, name: str, size: str, writes: list[tuple[int, int, int]]) -> tuple[str, str]:
    """A stopped VM whose disk got `writes` (pattern, offset, length); returns (backup id, disk path)."""
    cairn("vm", "create", name, "--disk", size)
    disk = disk_of(cairn, name)
    for pattern, off, length in writes:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {off} {length}", disk],
                       check=True, capture_output=True)
    backup = json.loads(cairn("backup", "create", name, "--json").stdout)
    return backup["backup_id"], disk


def test_vm_show_json_lists_disk_paths(cairn, tmp_path: Path):
    cairn("vm", "create", "two", "--disk", "64M", "--disk", "32M")
    shown = json.loads(cairn("vm", "show", "two", "--json").stdout)
    assert [d["name"] for d in shown["disks"]] == ["vda", "vdb"]
    assert all(Path(d["path"]).is_file() for d in shown["disks"])
    assert shown["state"] == "stopped"
    assert [v["name"] for v in json.loads(cairn("vm", "list", "--json").stdout)] == ["two"]


def test_unknown_vm_is_a_clear_error(cairn, data_dir: Path):
    proc = cairn("backup", "create", "nosuchvm", ok=False)
    assert proc.returncode == 1 and "no VM named nosuchvm" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert backups_on_disk(data_dir) == []


def test_an_error_holding_brackets_is_printed_as_it_is(cairn):
    """QEMU's messages hold "[...]": they are text to print, not rich markup to parse."""
    r = cairn("vm", "show", "a[/b]", ok=False)
    assert r.returncode == 1 and "no VM named a[/b]" in r.stderr and "Traceback" not in r.stderr


def test_backup_of_vm_with_missing_disk_changes_nothing(cairn, data_dir: Path):
    cairn("vm", "create", "lost", "--disk", "64M")
    disk = disk_of(cairn, "lost")
    os.unlink(disk)
    proc = cairn("backup", "create", "lost", ok=False)
    assert proc.returncode == 1 and disk in proc.stderr
    assert backups_on_disk(data_dir) == []
    assert json.loads(cairn("backup", "list", "--json").stdout) == []


def test_restore_refuses_existing_file_without_force(cairn, tmp_path: Path):
    backup, disk = backed_up_vm(cairn, "keep", "64M", [(0xab, 0, MiB)])
    target = tmp_path / "existing.raw"
    target.write_bytes(b"precious")
    proc = cairn("restore", "disk", backup, "--to", str(target), ok=False)
    assert proc.returncode == 1 and "exists" in proc.stderr
    assert target.read_bytes() == b"precious"
    cairn("restore", "disk", backup, "--to", str(target), "--force")
    assert same_content(target, Path(disk), "qcow2")


def test_restore_from_a_directory_that_is_not_a_store(cairn, tmp_path: Path):
    notastore = tmp_path / "random"
    notastore.mkdir()
    (notastore / "file.txt").write_text("hello")
    proc = cairn("restore", "disk", "20260101T000000Z-abcd", "--to", str(tmp_path / "x.raw"), "--store", str(notastore),
                 ok=False)
    assert proc.returncode == 1 and str(notastore) in proc.stderr and "store" in proc.stderr
    assert not (tmp_path / "x.raw").exists()
    assert sorted(p.name for p in notastore.iterdir()) == ["file.txt"]


def test_corrupted_block_is_named_and_target_not_left_complete(cairn, data_dir: Path, tmp_path: Path):
    backup, _ = backed_up_vm(cairn, "rot", "64M", [(0x42, 5 * MiB, 2 * MiB)])
    store = Store.open(data_dir / "store")
    block = block_ids(store, store.get_backup(backup), "vda")[0]
    flip_byte(block_pack(store, block), offset=store.blocks.locate(block)[1].offset + 10)
    target = tmp_path / "restored.raw"
    proc = cairn("restore", "disk", backup, "--to", str(target), ok=False)
    assert proc.returncode == 1
    assert block.hex() in proc.stderr and backup in proc.stderr
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if "restored" in p.name] == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_restoring_a_1gib_zero_disk_allocates_almost_nothing(cairn, tmp_path: Path, fmt: str):
    backup, _ = backed_up_vm(cairn, f"empty{fmt}", "1G", [])
    target = tmp_path / f"zero.{fmt}"
    cairn("restore", "disk", backup, "--to", str(target), "--format", fmt)
    assert allocated_bytes(target) <= 4 * MiB
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(target)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["virtual-size"] == 1 << 30 and info["format"] == fmt


def test_disaster_recovery_needs_only_the_store(cairn, data_dir: Path, tmp_path: Path):
    cairn("vm", "create", "dr", "--disk", "16M", "--disk", "8M", "--memory", "128")
    disks = {name: disk_of(cairn, "dr", name) for name in ("vda", "vdb")}
    for pattern, path in enumerate(disks.values(), start=0x31):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} 1M 3M", path], check=True,
                       capture_output=True)
    backup = json.loads(cairn("backup", "create", "dr", "--json").stdout)["backup_id"]
    # Another machine: no data dir, no catalog, only the store.
    nowhere = tmp_path / "no-appliance"
    env = {**os.environ, "CAIRN_DATA_DIR": str(nowhere)}

    def dr(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args, "--store", str(data_dir / "store")], check=False, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    assert [(v["vm"], v["backups"]) for v in json.loads(dr("restore", "list", "--json").stdout)] == [("dr", 1)]
    listed = json.loads(dr("restore", "list", "--vm", "dr", "--json").stdout)
    assert [(b["backup_id"], b["disks"]) for b in listed] == [(backup, {"vda": 16 * MiB, "vdb": 8 * MiB})]
    target = tmp_path / "recovered"
    result = json.loads(dr("restore", "vm", backup, "--to-dir", str(target), "--verify", "--json").stdout)
    assert result["verified"] and result["vm"] == "dr"
    definition = json.loads((target / "vm.json").read_text())
    assert definition["memory_mib"] == 128
    assert {d["name"]: d["path"] for d in definition["disks"]} == {n: str(target / f"{n}.qcow2") for n in disks}
    for name, path in disks.items():
        assert same_image(path, target / f"{name}.qcow2")
    assert not nowhere.exists()


def test_restore_vm_wants_exactly_one_destination(cairn, tmp_path: Path):
    proc = cairn("restore", "vm", "20260101T000000Z-abcd", "--to-dir", str(tmp_path / "d"), "--over", ok=False)
    assert proc.returncode == 2 and "exactly one" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_restore_files_lists_and_extracts_from_the_store_alone(cairn, tmp_path: Path):
    tree = tmp_path / "content"
    (tree / "srv").mkdir(parents=True)
    (tree / "srv" / "index.html").write_text("<h1>backed up</h1>\n")
    image = tmp_path / "disk.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "32M"], check=True)
    store = Store.init(tmp_path / "store")
    backup = backup_file(store, "www", "vda", image)
    listed = json.loads(cairn("restore", "files", backup, "/srv", "--store", str(store.path), "--json").stdout)
    assert [(e["name"], e["kind"]) for e in listed] == [("index.html", "file")]
    target = tmp_path / "index.html"
    cairn("restore", "files", backup, "/srv/index.html", "--extract", str(target), "--store", str(store.path))
    assert target.read_text() == "<h1>backed up</h1>\n"
    missing = cairn("restore", "files", backup, "/nope", "--store", str(store.path), ok=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_instant_restore_and_boot_test_from_the_cli(cairn, tmp_path: Path):
    """A VM that boots through the BIOS from its disk, backed up; then run from the backup at once."""
    cairn("vm", "create", "bios", "--disk", "8M")
    disk = disk_of(cairn, "bios")
    raw = tmp_path / "boot.raw"
    raw.write_bytes(boot_sector())
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), disk], check=True)
    backup = json.loads(cairn("backup", "create", "bios", "--json").stdout)["backup_id"]
    tested = json.loads(cairn("restore", "boot-test", backup, "--timeout", "120", "--json").stdout)
    assert tested["passed"] and "CAIRN: READY" in tested["console"]
    started = json.loads(cairn("restore", "instant", "start", backup, "now", "--speed", "64K", "--json").stdout)
    assert started["status"] == "hydrating"
    cairn("restore", "instant", "speed", "now", "0")
    done = json.loads(cairn("restore", "instant", "status", "now", "--wait", "--json").stdout)
    assert done["status"] == "done"
    cairn("vm", "stop", "now", "--force")
    assert same_image(disk, disk_of(cairn, "now"))
    again = cairn("restore", "instant", "resume", "nosuch", ok=False)
    assert again.returncode == 1 and "no instant restore" in again.stderr
