"""`cairn policy` and `cairn job` on a real data dir: what they print, and clear errors on bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.context import Appliance

CAIRN = str(Path(sys.executable).with_name("cairn"))


@pytest.fixture
def cairn(appliance: Appliance):
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance.settings.data_dir)}

    def call(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], check=False, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, (proc.stdout, proc.stderr)
        return proc
    return call


def test_policy_commands(cairn, appliance: Appliance):
    appliance.vms.create("web1", [8 << 20])
    cairn("policy", "create", "nightly", "--schedule", "0 2 * * *", "--vm", "web*", "--keep-last", "3",
          "--full-every", "2", "--max-per-host", "1")
    cairn("policy", "create", "snaps", "--schedule", "@hourly", "--vm", "web1", "--snapshot", "--keep", "2")
    (nightly, snaps) = json.loads(cairn("policy", "list", "--json").stdout)
    assert nightly["policy"]["retention"]["keep_last"] == 3 and nightly["policy"]["max_per_host"] == 1
    assert snaps["policy"]["kind"] == "snapshot" and snaps["policy"]["keep"] == 2
    preview = json.loads(cairn("policy", "preview", "nightly", "--count", "2", "--json").stdout)
    assert preview["vms"] == {"web1": "full"} and len(preview["next_runs"]) == 2
    assert "it selects 1 VM(s) today: web1" in cairn("policy", "delete", "nightly", "--dry-run").stdout
    cairn("policy", "delete", "nightly")
    assert [p["policy"]["name"] for p in json.loads(cairn("policy", "list", "--json").stdout)] == ["snaps"]

    assert "not a cron expression" in cairn("policy", "create", "x", "--schedule", "soon", "--vm", "a",
                                            code=2).stderr
    assert "selects VMs" in cairn("policy", "create", "x", "--schedule", "@daily", code=2).stderr
    assert "already exists" in cairn("policy", "create", "snaps", "--schedule", "@daily", "--vm", "a",
                                     code=1).stderr
    assert "no policy ghost" in cairn("policy", "preview", "ghost", code=1).stderr


def test_job_commands(cairn, appliance: Appliance):
    appliance.vms.create("db1", [8 << 20])
    job = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": "db1"}).id, 240)
    (listed,) = json.loads(cairn("job", "list", "--json", "--filter", "kind:eq:backup").stdout)
    assert listed["id"] == job.id and listed["state"] == "succeeded"
    shown = cairn("job", "show", job.id).stdout
    assert "claim" in shown and "copy" in shown and "succeeded" in shown
    events = json.loads(cairn("job", "events", job.id, "--json").stdout)
    assert [e["kind"] for e in events] == ["job.succeeded", "backup.done", "job.started"]
    assert "no job was left behind" in cairn("job", "recover").stdout
    assert "already succeeded" in cairn("job", "cancel", job.id, code=1).stderr
    assert "no job nope" in cairn("job", "show", "nope", code=1).stderr
    assert "cannot filter 'colour'" in cairn("job", "list", "--filter", "colour:eq:red", code=2).stderr


def test_a_command_runs_its_work_as_a_job_and_ctrl_c_cancels_it(cairn, appliance: Appliance):
    """`cairn backup create` is a job like the API's (listed, same steps, `--json` its result); Ctrl-C
    cancels it, and its steps are undone before the command ends."""
    spec = appliance.vms.create("big", [1024 << 20])
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x3c 0 {64 << 20}", spec.disks[0].path],
                   check=True, capture_output=True)
    done = json.loads(cairn("backup", "create", "big", "--json").stdout)
    (listed,) = json.loads(cairn("job", "list", "--json", "--filter", "kind:eq:backup").stdout)
    assert listed["state"] == "succeeded" and listed["result"] == done and listed["resource"] == "vm:big"

    # New data the store lacks, random (stored as it is, each block written out), so that the next
    # backup is still copying when it is interrupted.
    noise = appliance.settings.data_dir / "noise.raw"
    with open(noise, "wb") as out:
        subprocess.run(["head", "-c", str(1024 << 20), "/dev/urandom"], stdout=out, check=True)
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(noise), spec.disks[0].path],
                   check=True)
    noise.unlink()

    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance.settings.data_dir)}
    # As a terminal's foreground command: Ctrl-C's default action, even when this suite runs where
    # SIGINT is ignored (a background job inherits SIG_IGN, and Python then never raises KeyboardInterrupt).
    proc = subprocess.Popen([CAIRN, "backup", "create", "big", "--full"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    # Interrupted once it copies (a quick machine copies the disk in a few seconds).
    while not any(j.state == "running" and j.steps[1]["state"] == "running" for j in appliance.jobs.active()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, said = proc.communicate(timeout=120)
    assert proc.returncode == 130, said
    assert "cancelling job" in said and "cancelled" in said
    job = appliance.jobs.get(json.loads(cairn("job", "list", "--json", "--limit", "1").stdout)[0]["id"])
    # The copy may have ended as the signal came: then the announcing step is the one cancelled.
    states = [s["state"] for s in job.steps]
    assert job.state == "cancelled" and states[:2] == ["undone", "undone"] and states[2] in ("pending", "cancelled"), \
        job.steps
    assert [b.id for b in appliance.backups.list("big")] == [done["backup_id"]], "nothing is left of it"
