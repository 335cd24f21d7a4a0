"""`cairn pool ...` and `cairn network ...`: the same operations as the API, errors as exit code 1
with the message (2 for a malformed argument), nothing changed by a refused command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from network_helpers import netns  # noqa: F401  (fixture)

CAIRN = str(Path(sys.executable).with_name("cairn"))


def cairn(data_dir: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([CAIRN, *args], env={**os.environ, "CAIRN_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow  # a dozen `cairn` processes, seconds each on a busy machine
def test_pool_and_network_commands(appliance_data_dir: Path, netns: str, tmp_path: Path) -> None:  # noqa: F811
    d = appliance_data_dir
    assert "10.73.0.2-10.73.0.14 (13 addresses)" in cairn(d, "pool", "create", "address", "lan", "10.73.0.0/28").stdout
    cairn(d, "pool", "create", "storage", "disks", str(tmp_path))
    assert "overlaps pool lan" in cairn(d, "pool", "create", "address", "x", "10.73.0.0/24", code=1).stderr
    assert "not one of compute, storage, address" in cairn(d, "pool", "delete", "moon", "x", code=2).stderr
    listed = json.loads(cairn(d, "pool", "list", "--json").stdout)
    assert [(p["kind"], p["name"]) for p in listed] == [("storage", "disks"), ("address", "lan")]

    assert cairn(d, "pool", "allocate", "lan", "--owner", "printer").stdout.strip() == "10.73.0.2"
    cairn(d, "pool", "release", "lan", "10.73.0.2")

    cairn(d, "network", "create", "lan", "--pool", "lan", "--netns", netns)
    cairn(d, "vm", "create", "web1", "--disk", "64M")
    assert cairn(d, "network", "attach", "lan", "web1").stdout.strip().endswith("on lan: 10.73.0.2")
    shown = json.loads(cairn(d, "network", "show", "lan", "--json").stdout)
    assert [(a["vm"], a["address"]) for a in shown["attachments"]] == [("web1", "10.73.0.2")]
    assert shown["dhcp_pid"] and shown["bridge_present"]
    assert "VMs attached: web1" in cairn(d, "network", "delete", "lan", code=1).stderr
    assert "10.73.0.2 released" in cairn(d, "network", "detach", "lan", "web1").stdout
    cairn(d, "network", "delete", "lan")
    assert json.loads(cairn(d, "network", "list", "--json").stdout) == []
    cairn(d, "pool", "delete", "address", "lan")
    assert [p["name"] for p in json.loads(cairn(d, "pool", "list", "--json").stdout)] == ["disks"]
