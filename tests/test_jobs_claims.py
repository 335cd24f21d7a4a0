"""Jobs on one resource run one at a time across processes, in submission order, on SQLite and
PostgreSQL: the resource is claimed in the catalog. A job whose process died is taken over by
the next process that needs its resource, rolled back there, and the claim moves on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from catalog_backends import catalog_url  # noqa: F401  (fixture)
from job_helpers import Nap, napping_engine

from appliance.jobs.engine import PROGRESS_INTERVAL
from appliance.jobs.records import JobRecord, ResourceClaimRecord

TIMEOUT = 60
TESTS = str(Path(__file__).parent)


@pytest.fixture
def url(catalog_url: str | None, tmp_path: Path) -> str:  # noqa: F811
    return catalog_url or f"sqlite:///{tmp_path / 'catalog.db'}"


def other_process(url: str, seconds: float, resource: str = "vm:a") -> tuple[subprocess.Popen[str], str]:
    """Another process that submits a nap job and runs it; returns it and its job's id."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "job_helpers", url, str(seconds), resource], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def until(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def one_after_the_other(first: JobRecord, second: JobRecord) -> None:
    assert first.state == second.state == "succeeded", (first.error, second.error)
    assert first.finished_at <= second.started_at, "jobs on one resource never overlap"


def test_a_job_waits_while_another_process_runs_one_on_its_resource(url: str):
    jobs = napping_engine(url)
    proc, theirs = other_process(url, seconds=1.5)
    until(lambda: jobs.get(theirs).state == "running")
    ours = jobs.submit("nap", Nap(seconds=0.2))
    time.sleep(0.5)
    assert jobs.get(ours.id).state == "queued", "it waits for the other process's job"
    elsewhere = jobs.submit("nap", Nap(seconds=0.2, resource="vm:b"))
    assert jobs.wait(elsewhere.id, TIMEOUT).finished_at < jobs.wait(theirs, TIMEOUT).finished_at, \
        "another resource does not wait"
    one_after_the_other(jobs.wait(theirs, TIMEOUT), jobs.wait(ours.id, TIMEOUT))
    assert proc.wait(TIMEOUT) == 0


def test_another_process_waits_while_a_job_here_runs_and_order_is_kept(url: str):
    jobs = napping_engine(url)
    ours = jobs.submit("nap", Nap(seconds=1.5))
    queued_here = jobs.submit("nap", Nap(seconds=0.2))
    until(lambda: jobs.get(ours.id).state == "running")
    proc, theirs = other_process(url, seconds=0.2)
    done = [jobs.wait(j, TIMEOUT) for j in (ours.id, queued_here.id, theirs)]
    for first, second in pairwise(done):
        one_after_the_other(first, second)
    assert proc.wait(TIMEOUT) == 0
    with jobs.catalog() as s:
        claim = s.get(ResourceClaimRecord, "vm:a")
    assert claim.job_id is None and claim.token == 3, "each claim has a token of its own"
    assert [j.fence for j in done] == [1, 2, 3]


def test_the_next_process_on_a_resource_takes_over_the_job_of_one_that_died(url: str):
    jobs = napping_engine(url)
    proc, theirs = other_process(url, seconds=60)
    until(lambda: jobs.get(theirs).progress > 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert jobs.get(theirs).state == "running", "nobody has looked at it yet"
    ours = jobs.wait(jobs.submit("nap", Nap(seconds=0.2)).id, TIMEOUT)
    dead = jobs.get(theirs)
    assert dead.state == "failed" and "interrupted" in dead.error, dead.error
    assert dead.steps[0]["state"] == "undone" and dead.fence == 2, "taken over under a new token"
    assert ours.state == "succeeded" and dead.finished_at <= ours.started_at
    assert jobs.recover() == [], "nothing is left to take over"


def test_a_job_running_while_the_catalog_is_upgraded_keeps_its_resource(url: str):
    """Revision 0005 gives each running job its resource's claim, so the jobs the next process
    submits wait for it to be taken over and rolled back."""
    from alembic import command
    from sqlalchemy import text

    from appliance.catalog.engine import catalog_engine
    from appliance.catalog.migrate import _config

    gone = subprocess.Popen(["true"])
    gone.wait()
    engine = catalog_engine(url)
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0004")
        conn.execute(text("INSERT INTO jobs (id, kind, resource, state, params, limits, steps, memo, progress, "
                          "cancel_requested, runner_pid, created_at) VALUES ('old', 'nap', 'vm:a', 'running', "
                          "'{\"seconds\": 60}', '{}', '[{\"name\": \"nap\", \"state\": \"running\", "
                          "\"error\": null}]', '{\"napping\": true}', 0, false, :pid, CURRENT_TIMESTAMP)"), {"pid": gone.pid})
    engine.dispose()
    jobs = napping_engine(url)
    with jobs.catalog() as s:
        assert (s.get(ResourceClaimRecord, "vm:a").job_id, s.get(JobRecord, "old").fence) == ("old", 1)
    ours = jobs.wait(jobs.submit("nap", Nap(seconds=0.1)).id, TIMEOUT)
    old = jobs.get("old")
    assert old.state == "failed" and old.steps[0]["state"] == "undone" and old.finished_at <= ours.started_at


def test_a_runner_whose_token_is_stale_stops_writing(url: str):
    """What a node that took over a job would do (issue 18): it claims anew, with the next token.
    The runner still at work finds its token stale at its next write and leaves the job alone."""
    jobs = napping_engine(url)
    job = jobs.submit("nap", Nap(seconds=30))
    until(lambda: jobs.get(job.id).progress > 0)
    with jobs.catalog.begin() as s:
        claim = s.get(ResourceClaimRecord, "vm:a")
        claim.token += 1
        s.get(JobRecord, job.id).fence = claim.token
    time.sleep(2 * PROGRESS_INTERVAL + 0.5)
    taken = jobs.get(job.id)
    assert (taken.state, taken.fence, taken.finished_at) == ("running", 2, None), "the old runner wrote nothing"
    with jobs.catalog() as s:
        assert s.get(ResourceClaimRecord, "vm:a").job_id == job.id, "nor did it free the resource"
