"""`cairn user`: local user management on the data dir, without signing in (root on the appliance)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.context import Appliance


def cairn(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], check=False, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_user_commands(appliance_data_dir: Path):
    assert cairn(appliance_data_dir, "user", "add", "root-admin", "--role", "admin",
                 stdin="first-password\nfirst-password\n").returncode == 0
    r = cairn(appliance_data_dir, "user", "add", "shorty", "--password", "short")
    assert r.returncode == 1 and "at least 8 characters" in r.stderr
    assert cairn(appliance_data_dir, "user", "passwd", "root-admin", "--password", "second-password").returncode == 0
    r = cairn(appliance_data_dir, "user", "set", "root-admin", "--role", "viewer")
    assert r.returncode == 1 and "last enabled admin" in r.stderr
    listed = json.loads(cairn(appliance_data_dir, "user", "list", "--json").stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("root-admin", "admin")]

    users = Appliance.open(str(appliance_data_dir)).users
    assert users.check_password("root-admin", "second-password") is not None
    assert users.check_password("root-admin", "first-password") is None
    r = cairn(appliance_data_dir, "user", "delete", "ghost")
    assert r.returncode == 1 and "no user named ghost" in r.stderr
