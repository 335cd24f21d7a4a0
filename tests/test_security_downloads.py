"""Downloading a file out of a backup: any file name gets a correct Content-Disposition (RFC 6266
with RFC 5987's filename*, and a plain ASCII fallback), and every way a download ends (complete,
refused, abandoned half-way) releases the mount, the loop device, nbdfuse and nbdkit."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from restore_helpers import backup_file

from appliance.context import Appliance

NAMES = ["файл.txt", "日本語.txt", "two\nlines.txt", 'say "hi";.txt', "tab\there.txt", "plain.txt"]
MiB = 1 << 20


@pytest.fixture
def backup(appliance: Appliance, tmp_path: Path) -> str:
    content = tmp_path / "content"
    content.mkdir()
    for i, name in enumerate(NAMES):
        (content / name).write_bytes(f"file {i}\n".encode())
    (content / "big.bin").write_bytes(os.urandom(3 * MiB))
    image = tmp_path / "fs.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image), "32M"], check=True)
    return backup_file(appliance.store, "files", "vda", image)


def leftovers(folder: Path) -> list[str]:
    """Mounts, loop devices and processes (nbdfuse, nbdkit) still using `folder`."""
    found = [line for line in Path("/proc/mounts").read_text().splitlines() if str(folder) in line]
    found += [line for line in subprocess.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                                              capture_output=True, text=True, check=True).stdout.splitlines()
              if str(folder) in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline and pid != str(os.getpid()):
            found.append(cmdline.replace("\0", " "))
    return found + [str(p) for p in folder.iterdir()]


def test_any_file_name_downloads_and_leaves_nothing_behind(backup: str, viewer_client: TestClient, private_tmp: Path):
    for i, name in enumerate(NAMES):
        r = viewer_client.get(f"/api/v1/backups/{backup}/disks/vda/files/content", params={"path": f"/{name}"})
        assert r.status_code == 200, (name, r.text)
        assert r.content == f"file {i}\n".encode()
        disposition = r.headers["content-disposition"]
        assert disposition.isascii() and "\n" not in disposition
        assert f"filename*=UTF-8''{quote(name, safe='')}" in disposition
        assert leftovers(private_tmp) == [], name


def test_refused_and_abandoned_downloads_leave_nothing_behind(backup: str, viewer_client: TestClient,
                                                              private_tmp: Path):
    url = f"/api/v1/backups/{backup}/disks/vda/files/content"
    assert viewer_client.get(url, params={"path": "/nothing"}).status_code == 404
    assert viewer_client.get(url, params={"path": "/lost+found"}).status_code == 409
    assert leftovers(private_tmp) == []
    with viewer_client.stream("GET", url, params={"path": "/big.bin"}) as r:
        assert r.status_code == 200
        next(r.iter_bytes())   # a first block, then the client goes away
    assert leftovers(private_tmp) == []


def test_a_download_abandoned_over_http_leaves_nothing_behind(appliance: Appliance, backup: str, private_tmp: Path,
                                                              monkeypatch):
    """The same through `cairn serve`, where the client going away is a real disconnect."""
    from test_auth_serve import serving

    appliance.users.create("watcher", "a long enough password", "viewer")
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    with serving(appliance.settings.data_dir, "--insecure-http") as (port, _):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            token = http.post("/api/v1/auth/login", json={"username": "watcher",
                                                          "password": "a long enough password"}).json()["token"]
            with http.stream("GET", f"/api/v1/backups/{backup}/disks/vda/files/content", params={"path": "/big.bin"},
                             headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status_code == 200
                next(r.iter_raw())
        deadline = time.monotonic() + 30
        while leftovers(private_tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers(private_tmp) == []
