"""The job engine on a real catalog: step order and undo, per-resource queues, capacity, cancel.

The steps here only record what they do; tests/test_jobs_backup.py runs the same engine
with real backups of a real guest."""
from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from itertools import pairwise
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from appliance.catalog.engine import open_catalog
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.engine import JobEngine, JobFailedError, JobParamsError
from appliance.jobs.events import EventLog
from appliance.jobs.plan import JobKind, JobPlan, Step, StepContext
from appliance.jobs.records import EventRecord, JobRecord
from appliance.process import start_of

TIMEOUT = 30


class Recorded(BaseModel):
    """The parameters of the recording kinds: where they run, how long, and what to tag lines with."""
    model_config = ConfigDict(extra="forbid")
    resource: str = "vm:a"
    tag: str = ""
    fail: bool = False
    seconds: float = 1.0
    limits: dict[str, int] = {}


class Journal:
    """What the steps did, in order, across threads."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)

    def step(self, name: str, fail: bool = False, seconds: float = 0.0) -> Step:
        async def run(ctx: StepContext) -> None:
            assert isinstance(ctx.params, Recorded)
            self.add(f"{ctx.params.tag}{name}")
            ctx.remember(**{name: True})
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                ctx.progress(1 - (deadline - time.monotonic()) / seconds)
                await asyncio.sleep(0.02)
            if fail:
                raise RuntimeError(f"{name} broke")

        async def undo(ctx: StepContext) -> None:
            assert ctx.memo.get(name), "undo sees what its step remembered"
            self.add(f"undo {name}")

        return Step(name, run, undo)


@pytest.fixture
def engine(catalog_backend: str | None, tmp_path: Path) -> tuple[JobEngine, Journal]:
    catalog = open_catalog(catalog_backend or f"sqlite:///{tmp_path / 'catalog.db'}")
    journal = Journal()
    kinds = {
        "three": JobKind(Recorded, lambda p: JobPlan(p.resource, [journal.step("a"), journal.step("b"),
                                                                  journal.step("c", fail=p.fail)])),
        "slow": JobKind(Recorded, lambda p: JobPlan(p.resource, [journal.step("s", seconds=p.seconds)],
                                                    limits=p.limits)),
        # Like a forced stop: it does not wait for a slow job on its resource, it cuts it short.
        "brake": JobKind(Recorded, lambda p: JobPlan(p.resource, [journal.step("brake")],
                                                     cuts_short=frozenset({"slow"}))),
    }
    return JobEngine(catalog, EventLog(catalog), kinds), journal


def test_steps_run_in_order_and_a_failure_undoes_them_in_reverse(engine):
    jobs, journal = engine
    ok = jobs.wait(jobs.submit("three", {}).id, TIMEOUT)
    assert ok.state == "succeeded" and ok.progress == 1.0
    assert [s["state"] for s in ok.steps] == ["done"] * 3
    journal.lines.clear()
    failed = jobs.wait(jobs.submit("three", {"fail": True}).id, TIMEOUT)
    assert failed.state == "failed" and "c broke" in failed.error
    assert journal.lines == ["a", "b", "c", "undo c", "undo b", "undo a"]
    assert [s["state"] for s in failed.steps] == ["undone"] * 3
    kinds = [e.kind for e in _events(jobs, failed.id)]
    assert kinds == ["job.started", "job.failed"]


def test_jobs_on_one_resource_run_one_at_a_time_and_others_in_parallel(engine):
    jobs, _ = engine
    ids = [jobs.submit("slow", {"resource": "vm:a", "seconds": 0.5, "tag": f"a{i}"}).id for i in range(3)]
    ids.append(jobs.submit("slow", {"resource": "vm:b", "seconds": 0.5, "tag": "b"}).id)
    done = [jobs.wait(i, TIMEOUT) for i in ids]
    a = sorted(done[:3], key=lambda j: j.started_at)
    assert all(x.finished_at <= y.started_at for x, y in pairwise(a)), "one VM's jobs never overlap"
    assert [j.params["tag"] for j in a] == ["a0", "a1", "a2"], "in submission order"
    b = done[3]
    assert b.started_at < a[-1].started_at, "another resource does not wait for vm:a"


def test_capacity_limits_jobs_across_resources(engine):
    jobs, _ = engine
    limits = {"host:local": 1}
    ids = [jobs.submit("slow", {"resource": f"vm:{n}", "seconds": 0.4, "limits": limits}).id for n in "xyz"]
    done = sorted((jobs.wait(i, TIMEOUT) for i in ids), key=lambda j: j.started_at)
    assert all(x.finished_at <= y.started_at for x, y in pairwise(done))


def test_cancel_a_running_job_undoes_it_and_a_queued_one_never_runs(engine):
    jobs, journal = engine
    # An hour-long step: only stopping at its next progress report ends it within the wait.
    running = jobs.submit("slow", {"seconds": 3600, "tag": "r"})
    queued = jobs.submit("slow", {"seconds": 3600, "tag": "q"})
    _until(lambda: jobs.get(running.id).state == "running")
    jobs.cancel(queued.id)
    jobs.cancel(running.id)
    r = jobs.wait(running.id, TIMEOUT)
    q = jobs.wait(queued.id, TIMEOUT)
    assert r.state == "cancelled" and r.steps[0]["state"] == "undone"
    assert r.progress < 0.01, "a long step stops at its next progress report, not at its end"
    assert q.state == "cancelled" and q.started_at is None
    assert journal.lines == ["rs", "undo s"]


def test_bad_requests_are_refused_before_anything_is_queued(engine, tmp_path):
    jobs, _ = engine
    with pytest.raises(NotFoundError, match="no job kind 'nope'"):
        jobs.submit("nope", {})
    done = jobs.wait(jobs.submit("three", {}).id, TIMEOUT)
    with pytest.raises(ConflictError, match="already succeeded"):
        jobs.cancel(done.id)
    with pytest.raises(NotFoundError):
        jobs.cancel("ghost")


def test_invalid_parameters_name_the_field(tmp_path):
    class Params(BaseModel):
        seconds: float

    catalog = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    jobs = JobEngine(catalog, EventLog(catalog), {"k": JobKind(Params, lambda params: JobPlan("r", []))})
    with pytest.raises(JobParamsError, match="seconds"):
        jobs.submit("k", {"seconds": "soon"})


def _events(jobs: JobEngine, job_id: str):
    with jobs.catalog() as s:
        return list(s.scalars(select(EventRecord).where(EventRecord.job_id == job_id).order_by(EventRecord.id)))


def _until(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


def test_recover_rolls_back_what_a_dead_process_left_and_leaves_live_ones_alone(engine):
    jobs, journal = engine
    gone = subprocess.Popen(["true"])
    gone.wait()
    steps = [{"name": n, "state": s, "error": None} for n, s in (("a", "done"), ("b", "running"), ("c", "pending"))]
    with jobs.catalog.begin() as s:
        for job_id, pid in (("dead", gone.pid), ("samepid", os.getpid()), ("alive", os.getppid())):
            s.add(JobRecord(id=job_id, kind="three", resource="vm:x", state="running", params={},
                            limits={}, memo={"a": True, "b": True}, runner_pid=pid, runner_start=start_of(pid),
                            steps=steps))
    assert sorted(jobs.recover()) == ["dead", "samepid"], "the pid of a live other process keeps its job"
    for job_id in ("dead", "samepid"):
        rec = jobs.wait(job_id, TIMEOUT)
        assert rec.state == "failed" and "interrupted" in rec.error
        assert [s["state"] for s in rec.steps] == ["undone", "undone", "pending"]
    assert journal.lines == ["undo b", "undo a"] * 2
    assert jobs.recover() == [] and jobs.get("alive").state == "running"


def test_listeners_see_progress_live_and_lifecycle_events_are_kept(engine):
    jobs, _ = engine
    with jobs.events.listen() as feed:
        job = jobs.wait(jobs.submit("slow", {"seconds": 0.6}).id, TIMEOUT)
        seen = []
        # The end is recorded before it is announced: wait() can return just ahead of the event.
        while not any(e["job_id"] == job.id and e["kind"] == "job.succeeded" for e in seen):
            seen.append(feed.get(timeout=TIMEOUT))
    mine = [e for e in seen if e["job_id"] == job.id]
    progress = [e["data"]["progress"] for e in mine if e["kind"] == "job.progress"]
    assert len(progress) > 3 and progress == sorted(progress) and progress[-1] == 1.0
    assert [e["kind"] for e in mine if e["kind"] not in ("job.progress", "job.step")] == \
        ["job.started", "job.succeeded"]
    assert [e.kind for e in _events(jobs, job.id)] == ["job.started", "job.succeeded"], "progress is not stored"


def test_cancel_from_another_process_reaches_the_running_step(engine):
    jobs, journal = engine
    elsewhere = JobEngine(jobs.catalog, EventLog(jobs.catalog), jobs.kinds)   # the CLI's engine, say
    job = jobs.submit("slow", {"seconds": 20})
    _until(lambda: jobs.get(job.id).progress > 0)
    elsewhere.cancel(job.id)
    done = jobs.wait(job.id, TIMEOUT)
    assert done.state == "cancelled" and done.steps[0]["state"] == "undone"
    assert journal.lines == ["s", "undo s"]


def test_an_awaited_job_ends_in_its_callers_hands_with_the_error_its_step_raised(engine):
    """What a route that answers once its job ended (a VM's start, stop) gets: the job, or the
    very error of the step that failed (its kind gives its status), after the undo."""
    jobs, journal = engine
    assert jobs.run_to_end("three", {"tag": "ok "}).state == "succeeded"
    with pytest.raises(RuntimeError, match="^c broke$"):
        jobs.run_to_end("three", {"fail": True})
    assert journal.lines[-4:] == ["c", "undo c", "undo b", "undo a"], "undone before the caller is told"
    waiting = jobs.submit("slow", {"seconds": 3600}, awaited=True)
    _until(lambda: jobs.get(waiting.id).state == "running")
    jobs.cancel(waiting.id)
    with pytest.raises(JobFailedError, match=f"slow job {waiting.id} cancelled"):
        asyncio.run(jobs.outcome(waiting.id))


def test_a_job_that_cuts_short_another_cancels_it_rather_than_wait(engine):
    jobs, journal = engine
    slow = jobs.submit("slow", {"seconds": 3600, "tag": "here "})
    beside = jobs.submit("slow", {"seconds": 3600, "tag": "there ", "resource": "vm:b"})
    _until(lambda: jobs.get(slow.id).state == jobs.get(beside.id).state == "running")
    brake = jobs.submit("brake", {})
    assert jobs.wait(brake.id, TIMEOUT).state == "succeeded"
    assert jobs.get(slow.id).state == "cancelled", "cut short, and undone, before the brake ran"
    assert journal.lines.index("undo s") < journal.lines.index("brake")
    assert jobs.get(beside.id).state == "running", "another resource's job is not in the way"
    jobs.cancel(beside.id)
    jobs.wait(beside.id, TIMEOUT)
    with jobs.catalog() as s:
        cut = s.scalars(select(EventRecord).where(EventRecord.kind == "job.cut_short")).all()
    assert [(e.job_id, e.message) for e in cut] == [(slow.id, f"cut short by brake job {brake.id}")]
