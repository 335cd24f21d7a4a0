"""The CLI against a real `cairn serve` on loopback, over HTTPS with its self-signed certificate
pinned by fingerprint: the same commands answer the same `--json` as on the appliance's host and
draw the same progress from the job's events; a refused command says why, with the exit status
the one table gives it (appliance/cli/common.py, EXIT_CODES)."""
from __future__ import annotations

import json
import re
import ssl
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_helpers import Cli, Served, login
from cli_helpers import served as served
from web_helpers import PASSWORD

# What differs between two runs of one command on two VMs: ids, times, process ids, durations.
# What is stored new depends on what the store holds already.
RUN_FIELDS = {"id", "job_id", "backup_id", "pid", "created_at", "started_at", "finished_at", "created", "seconds", "node",
              "file", "since", "target", "bytes_stored"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NODE = re.compile(r"\bn[0-9a-f]{8}\b")   # a snapshot layer's node id (chain.tree.new_id)


def same_answer(here: Any, there: Any, names: tuple[str, str] = ("", "")) -> None:
    """The same keys and values, but for what differs between two runs (RUN_FIELDS: only their
    kind must match), the names of the two VMs and their snapshot layers' node ids."""
    def norm(value: Any) -> Any:
        if isinstance(value, str) and names[0]:
            return NODE.sub("NODE", value.replace(names[0], "VM").replace(names[1], "VM"))
        return value

    def check(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            assert a.keys() == b.keys(), where
            for key in a:
                if key in RUN_FIELDS:
                    assert type(a[key]) is type(b[key]), f"{where}.{key}: {a[key]!r} / {b[key]!r}"
                else:
                    check(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                check(x, y, f"{where}[{i}]")
        else:
            assert norm(a) == norm(b), f"{where}: {a!r} here, {b!r} there"
    check(here, there, "answer")


def bars(stderr: str) -> str:
    """What the progress bars said, without their escape codes."""
    return ANSI.sub("", stderr).replace("\r", "\n")


@pytest.mark.slow
def test_the_same_commands_answer_the_same_here_and_through_the_api(served: Served, tmp_path: Path):
    here = Cli(CAIRN_DATA_DIR=str(served.data_dir))
    there = Cli(XDG_CONFIG_HOME=str(tmp_path / "config"))
    assert f"signed in to {served.url} as ops (admin)" in login(there, served).stdout
    kept = tmp_path / "config" / "cairn" / "login.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert json.loads(kept.read_text())["appliances"][served.url]["fingerprint"] == served.fingerprint

    # One VM made and worked on here, one there: each command answers alike.
    names = ("vm-here", "vm-there")
    both = ((here, names[0]), (there, names[1]))
    made = [cli.json("vm", "create", name, "--disk", "16M") for cli, name in both]
    same_answer(*made, names)
    for view in made:
        disk = view["disks"][0]["path"]
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5c 0 12M", disk], check=True, capture_output=True)
    started = [cli.json("vm", "start", name) for cli, name in both]
    same_answer(*started, names)
    assert [v["state"] for v in started] == ["running", "running"]

    # A backup is a job on either side, its progress bars fed by the job's events (the
    # appliance's event stream, there); --json prints its result.
    backed_up = [cli("backup", "create", name, "--json", TTY_COMPATIBLE="1", COLUMNS="120") for cli, name in both]
    results = [json.loads(ANSI.sub("", b.stdout)) for b in backed_up]
    same_answer(*results, names)
    for b in backed_up:
        said = bars(b.stderr)
        assert "backup: copy" in said and re.search(r"vda .* MiB of .* MiB", said), said
    snapshots = [cli.json("snapshot", "create", name, "--name", "before") for cli, name in both]
    same_answer(*snapshots, names)
    restored = [cli.json("restore", "disk", result["backup_id"], "--to", str(tmp_path / f"{name}.raw"))
                for (cli, name), result in zip(both, results, strict=True)]
    same_answer(*restored, names)
    assert (tmp_path / "vm-here.raw").stat().st_size == (tmp_path / "vm-there.raw").stat().st_size == 16 << 20
    stopped = [cli("vm", "stop", name, "--timeout", "1", "--json") for cli, name in both]
    same_answer(*[json.loads(s.stdout) for s in stopped], names)
    assert json.loads(stopped[1].stdout)["how"] == "quit", "no OS answers the power button: forced off"
    assert all("if it has not within 1 s it is forced off" in s.stderr for s in stopped)

    # What the listings and lookups say, here and there, of the same appliance.
    jobs = here.json("job", "list")
    assert [j["kind"] for j in jobs] == (["vm.stop"] * 2 + ["restore.disk"] * 2 + ["snapshot.create"] * 2
                                         + ["backup"] * 2 + ["vm.start"] * 2)
    # A start and a stop here and there: each a job of the VM, named by the command's answer.
    for answer, kind in [*((s, "vm.start") for s in started), *((json.loads(s.stdout), "vm.stop") for s in stopped)]:
        job = there.json("job", "show", answer["job_id"])
        assert (job["kind"], job["state"], job["resource"]) == (kind, "succeeded", f"vm:{answer['name']}")
    for command in (("vm", "list"), ("vm", "show", "vm-there"), ("backup", "list"), ("job", "list"),
                    ("job", "show", jobs[-1]["id"]), ("job", "events", jobs[0]["id"]),
                    ("snapshot", "list", "vm-here")):
        assert here.json(*command) == there.json(*command), command
    stats_here, stats_there = ({**cli.json("store", "stats"), "seconds": 0} for cli in (here, there))
    assert stats_here == stats_there

    # The same tables too.
    assert here("backup", "list").stdout == there("backup", "list").stdout
    assert results[1]["backup_id"] in there("backup", "list").stdout


@pytest.mark.slow
def test_a_command_through_the_api_is_refused_with_the_reason_and_its_exit_status(served: Served, tmp_path: Path):
    config = tmp_path / "config"
    there = Cli(XDG_CONFIG_HOME=str(config))
    kept = config / "cairn" / "login.json"

    # The certificate: shown with its fingerprint and not trusted without a terminal to ask at;
    # a fingerprint that is not the certificate's: nothing is sent, nothing kept.
    shown = there("login", served.url, "--user", "ops", "--password-stdin", stdin=PASSWORD + "\n", code=7)
    assert served.fingerprint in shown.stderr and "--fingerprint" in shown.stderr
    other = ("00" if not served.fingerprint.startswith("00") else "11") + served.fingerprint[2:]
    wrong = there("login", served.url, "--user", "ops", "--password-stdin", "--fingerprint", other,
                  stdin=PASSWORD + "\n", code=7)
    assert "nothing was sent" in wrong.stderr and not kept.exists()
    assert "wrong user name or password" in there("login", served.url, "--user", "ops", "--password-stdin",
                                                  "--fingerprint", served.fingerprint, stdin="nope\n", code=4).stderr

    # No token: said, with the remedy.
    missing = there("vm", "list", "--json", code=4, CAIRN_URL=served.url)
    assert f"not signed in to {served.url}: run `cairn login {served.url}`" in missing.stderr
    # Signed in, a command of the appliance's host itself is refused through --url.
    login(there, served)
    host_only = there("--url", served.url, "user", "list", code=1)
    assert "works on the appliance's host itself" in host_only.stderr
    assert there.json("vm", "list") == []

    # The pinned certificate is checked on every request: a changed one is refused, nothing sent.
    logins = json.loads(kept.read_text())
    logins["appliances"][served.url]["fingerprint"] = other
    kept.write_text(json.dumps(logins))
    changed = there("vm", "list", code=7)
    assert "not the one trusted" in changed.stderr and "Nothing was sent" in changed.stderr
    logins["appliances"][served.url]["fingerprint"] = served.fingerprint
    kept.write_text(json.dumps(logins))

    # An appliance that does not answer; a role that does not allow it (the API's 403).
    closed = f"https://127.0.0.1:{free_port()}"
    assert "cannot reach the appliance" in there("--url", closed, "vm", "list", code=6, CAIRN_TOKEN="ck_x.y").stderr
    viewer = Cli(XDG_CONFIG_HOME=str(tmp_path / "viewer"))
    login(viewer, served, "eve")
    assert "eve is a viewer" in viewer("vm", "create", "nope", code=5).stderr

    # An expired key, and a revoked one (logout revokes the login's key).
    with httpx.Client(base_url=served.url, verify=ssl.create_default_context(
            cafile=str(served.data_dir / "tls" / "cert.pem")), timeout=60) as api:
        session = api.post("/api/v1/auth/login", json={"username": "ops", "password": PASSWORD}).json()["token"]
        short = api.post("/api/v1/tokens", json={"name": "short", "expires_in_days": 1e-5},
                         headers={"Authorization": f"Bearer {session}"}).json()["token"]
    time.sleep(1.5)
    pinned = {"CAIRN_URL": served.url, "CAIRN_FINGERPRINT": served.fingerprint}
    made_up = there("vm", "list", code=4, CAIRN_TOKEN="ck_0000.nothing", **pinned)
    assert "CAIRN_TOKEN was refused: set it to a valid access key, or unset it and `cairn login" in made_up.stderr
    expired = there("vm", "list", code=4, CAIRN_TOKEN=short, **pinned)
    assert "has expired" in expired.stderr and "CAIRN_TOKEN was refused" in expired.stderr
    token = json.loads(kept.read_text())["appliances"][served.url]["token"]
    assert "its access key is revoked" in there("logout").stdout
    assert json.loads(kept.read_text()) == {"current": None, "appliances": {}}
    revoked = there("vm", "list", code=4, CAIRN_TOKEN=token, **pinned)
    assert "was revoked" in revoked.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_names_the_console_and_its_certificate(served: Served):
    """`cairn serve` says where the console is and the fingerprint `cairn login` will show."""
    banner = (served.data_dir / "serve.log").read_text()
    assert f"Cairn console at {served.url}/ " in banner
    assert f"SHA-256 fingerprint {served.fingerprint}" in banner
