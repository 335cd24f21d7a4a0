"""The README's CLI tour as a new user tries it, without a terminal, at 80 columns: tables whose
IDs are whole, every backup a job, a user added without a prompt, a stop and a boot test that
say what they do and do not keep anyone waiting, sizes in one unit system, --json everywhere."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from restore_helpers import boot_sector

from appliance.context import Appliance

CAIRN = str(Path(sys.executable).with_name("cairn"))
BACKUP_ID = re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{4}\b")


@pytest.fixture
def cairn(appliance_data_dir: Path):
    """`cairn` on the data dir as a script runs it: no terminal (stdin from /dev/null), 80 columns."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CAIRN_") or k == "CAIRN_CATALOG_URL"},
           "CAIRN_DATA_DIR": str(appliance_data_dir), "COLUMNS": "80"}

    def call(*args: str, code: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], env=env, input=stdin, stdin=None if stdin is not None else
                              subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc
    return call


def readable_at_80(text: str, ids: list[str]) -> None:
    assert ids and all(i in text for i in ids), text        # every ID whole, on one line
    assert max(map(len, text.splitlines())) <= 80, text


def disk_of(cairn, vm: str) -> str:
    return json.loads(cairn("vm", "show", vm, "--json").stdout)["disks"][0]["path"]


def test_tables_keep_ids_whole_at_80_columns_and_every_cli_backup_is_a_job(cairn, appliance_data_dir: Path):
    cairn("vm", "create", "web1", "--disk", "10M", "--disk", "2M")
    cairn("vm", "create", "database-server-01", "--disk", "4M")
    ids = []
    for vm in ("web1", "web1", "database-server-01"):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {len(ids) + 1} 0 1M", disk_of(cairn, vm)],
                       check=True, capture_output=True)
        ids.append(json.loads(cairn("backup", "create", vm, "--json").stdout)["backup_id"])

    listed = cairn("backup", "list").stdout
    readable_at_80(listed, ids)
    assert BACKUP_ID.findall(listed) == ids[::-1], "newest first"
    readable_at_80(cairn("store", "stats").stdout, ids)
    pruned = cairn("store", "prune", "--vm", "web1", "--keep-last", "1", "--dry-run").stdout
    readable_at_80(pruned, ids[:2])
    assert "would remove" in pruned

    # The README's `cairn job list` after its CLI backups: each one, with its job id whole.
    jobs = json.loads(cairn("job", "list", "--filter", "kind:eq:backup", "--json").stdout)
    assert [(j["kind"], j["state"], j["result"]["backup_id"]) for j in jobs] == [
        ("backup", "succeeded", i) for i in reversed(ids)]
    readable_at_80(cairn("job", "list").stdout, [j["id"] for j in jobs])


def test_user_add_without_a_terminal_makes_a_password_and_says_so(cairn, appliance_data_dir: Path):
    """The README's `cairn user add alice --role operator`, from a script: no prompt to abort on."""
    made = cairn("user", "add", "alice", "--role", "operator")
    password = re.search(r"password of alice \(shown this once.*\): (\S+)", made.stdout)
    assert "created operator alice" in made.stdout and password, made.stdout
    assert "changes it after signing in" in made.stderr
    given = json.loads(cairn("user", "add", "bob", "--password-stdin", "--json", stdin="bob's own password\n").stdout)
    assert (given["name"], given["role"], given["password"]) == ("bob", "viewer", None)
    users = Appliance.open(str(appliance_data_dir)).users
    assert users.check_password("alice", password.group(1)) is not None
    assert users.check_password("bob", "bob's own password") is not None
    empty = cairn("user", "passwd", "bob", "--password-stdin", code=1, stdin="")
    assert "--password-stdin: stdin gave no password" in empty.stderr


def test_vm_stop_says_it_forces_the_vm_off(cairn):
    """A guest that ignores the power button (no OS: SeaBIOS finds nothing to boot)."""
    cairn("vm", "create", "deaf", "--disk", "1M")
    cairn("vm", "start", "deaf")
    started = time.monotonic()
    stopped = cairn("vm", "stop", "deaf", "--timeout", "2")
    assert "asking the guest of deaf to shut down (ACPI power button); if it has not within 2 s it is forced " \
           "off (--force: at once, --timeout: longer)" in stopped.stderr
    assert "deaf: forced off, the guest did not shut down within 2 s" in stopped.stdout
    assert time.monotonic() - started < 60
    cairn("vm", "start", "deaf")
    forced = cairn("vm", "stop", "deaf", "--force")
    assert "forced off, as asked (--force)" in forced.stdout and "asking" not in forced.stderr
    assert "deaf: stopped (it was not running)" in cairn("vm", "stop", "deaf").stdout


def test_boot_test_of_a_disk_without_boot_signature_fails_at_once(cairn, tmp_path: Path):
    cairn("vm", "create", "blank", "--disk", "8M")
    backup = json.loads(cairn("backup", "create", "blank", "--json").stdout)["backup_id"]
    started = time.monotonic()
    failed = json.loads(cairn("restore", "boot-test", backup, "--json", code=1).stdout)
    assert not failed["passed"] and "disk vda has no boot signature (55 AA)" in failed["reason"]
    assert time.monotonic() - started < 60, "not after the 120 s timeout"


def test_messages_name_the_option_sizes_are_binary_and_results_take_json(cairn, tmp_path: Path):
    cairn("vm", "create", "src", "--disk", "4M")
    backup = json.loads(cairn("backup", "create", "src", "--json").stdout)["backup_id"]
    target = tmp_path / "existing.raw"
    target.write_bytes(b"precious")
    refused = cairn("restore", "disk", backup, "--to", str(target), code=1)
    assert "restore with --force" in refused.stderr and target.read_bytes() == b"precious"

    decimal = cairn("vm", "create", "big", "--disk", "10GB", code=2)
    assert "'10GB': sizes are binary here: write 10G or 10GiB" in decimal.stderr
    assert "MB" not in cairn("vm", "create", "--help").stdout

    image = tmp_path / "boot.raw"
    image.write_bytes(boot_sector())
    imported = json.loads(cairn("image", "import", "boot", str(image), "--kind", "disk", "--json").stdout)
    assert (imported["name"], imported["kind"], imported["size"]) == ("boot", "disk", 512)
    assert json.loads(cairn("image", "verify", "boot", "--json").stdout)["sha256"] == imported["sha256"]
    cairn("snapshot", "create", "src", "--name", "s1")
    reverted = json.loads(cairn("snapshot", "revert", "src", "s1", "--json").stdout)
    assert (reverted["name"], reverted["resumed"]) == ("s1", False)


def test_every_commands_help_renders(appliance_data_dir: Path, monkeypatch):
    """Every command's --help, as rich renders it (a bracket in a help text can read as markup)."""
    import typer
    from typer.testing import CliRunner

    from appliance.cli.main import app

    monkeypatch.setenv("CAIRN_DATA_DIR", str(appliance_data_dir))
    root = typer.main.get_command(app)

    def paths(command, prefix: list[str]) -> list[list[str]]:   # typer's own click: a group lists commands
        found = [prefix]
        if hasattr(command, "list_commands"):
            ctx = command.context_class(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                found += paths(sub, [*prefix, name])
        return found

    commands = paths(root, [])
    assert len(commands) > 80
    runner = CliRunner()
    for path in commands:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output, result.exception)
