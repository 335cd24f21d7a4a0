"""Management nodes on one catalog, with real processes: a runner on another node is judged by
that node's heartbeat, a node name is one host's, one process leads at a time and a stale
leader's writes are refused, a scheduled run is submitted once however many schedulers tick,
the events of every process reach every node's listeners, and a SQLite catalog has one node."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from catalog_backends import catalog_url, postgres_url  # noqa: F401  (fixtures)
from job_helpers import napping_engine
from sqlalchemy import func, select, text, update
from test_jobs_claims import other_process, until
from web_helpers import console_server

from appliance.catalog.engine import open_catalog
from appliance.context import Appliance
from appliance.jobs.events import EventLog, EventRelay
from appliance.jobs.nodes import LEASE, NodeNameTakenError, Nodes, NotLeaderError, Term
from appliance.jobs.records import JobRecord, LeaderLeaseRecord, NodeRecord
from appliance.policies.scheduler import Scheduler
from appliance.policies.service import BackupPolicy
from dedup import Store

MiB = 1 << 20
TIMEOUT = 60

# Another process that leads: it takes the lease (with a lease of argv[3] seconds), says its
# term, and renews until it is killed.
HOLD_LEASE = """
import sys, time, datetime
from appliance.catalog.engine import open_catalog
from appliance.jobs.nodes import Nodes
nodes = Nodes(open_catalog(sys.argv[1]), sys.argv[2], datetime.timedelta(seconds=float(sys.argv[3])))
print(nodes.lead().number, flush=True)
while True:
    time.sleep(0.2)
    nodes.lead()
"""


@pytest.fixture
def url(catalog_url: str | None, tmp_path: Path) -> str:  # noqa: F811
    return catalog_url or f"sqlite:///{tmp_path / 'catalog.db'}"


def killed(proc: subprocess.Popen[str]) -> float:
    """SIGKILL `proc`; returns when (time.monotonic()) it was gone."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.monotonic()


def test_a_runner_on_another_node_is_judged_by_its_node_heartbeat(postgres_url: str):  # noqa: F811
    """Node `far` (another process, under another name: what another host would be) runs a job;
    its pid is alive here, but it is not this node's to judge. Once `far` dies, the job is its
    node's heartbeat's: taken over when that is a lease old, and rolled back here."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CAIRN_NODE", "far")
        far, job_id = other_process(postgres_url, 60)
    near = napping_engine(postgres_url)
    try:
        until(lambda: near.get(job_id).memo.get("napping"))   # its step is under way, what its undo needs kept
        assert near.get(job_id).runner_node == "far"
        assert near.recover() == [], "a live node's job is its own"
        died = killed(far)
        with near.catalog() as s:   # its last beat's age by the catalog's clock, which judges it
            beat_age = s.scalar(select(func.now() - NodeRecord.heartbeat_at).where(NodeRecord.name == "far"))
        assert near.recover(other_nodes=False) == [], "a dead node's job is the leader's, not this node's"
        until(lambda: near.recover() == [job_id], timeout=LEASE.total_seconds() + 5)
        taken = time.monotonic() - died
        not_before = (LEASE - beat_age).total_seconds()
        assert not_before <= taken < LEASE.total_seconds() + 2, f"taken over {taken:.1f} s after, not before {not_before:.1f}"
        job = near.wait(job_id, TIMEOUT)
        assert job.state == "failed" and "interrupted" in job.error and job.steps[0]["state"] == "undone"
        assert near.recover() == [], "taken over once"
    finally:
        if far.poll() is None:
            killed(far)


def test_a_node_name_is_one_hosts(postgres_url: str):  # noqa: F811
    catalog = open_catalog(postgres_url)
    twin = Nodes(catalog, "twin")
    twin.beat()
    with catalog.begin() as s:   # as another host beating the same name would leave it
        s.execute(update(NodeRecord).values(boot_id="another-host", heartbeat_at=datetime.now(UTC)))
    with pytest.raises(NodeNameTakenError, match=r"node name twin is another host's.*\$CAIRN_NODE"):
        twin.beat()
    with catalog.begin() as s:   # that host stopped beating a lease ago
        s.execute(update(NodeRecord).values(heartbeat_at=datetime.now(UTC) - LEASE))
    twin.beat()
    with catalog() as s:
        assert s.get(NodeRecord, "twin").boot_id != "another-host"


def test_one_leader_at_a_time_and_a_stale_term_writes_nothing(url: str):
    """A leader in another process holds the lease; this one follows until the lease runs out
    after the leader died (on SQLite, one host: at once), then leads in the next term, and what
    the old term still writes is refused."""
    catalog = open_catalog(url)
    here = Nodes(catalog, "here")
    other = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, url, "there", "2"], stdout=subprocess.PIPE, text=True)
    try:
        old_term = int(other.stdout.readline())
        assert here.lead() is None and here.leader().node == "there"
        time.sleep(2.5)
        assert here.lead() is None, "a leader that renews keeps its lease"
        died = killed(other)
        until(lambda: here.lead() is not None, timeout=5)
        waited = time.monotonic() - died
        term = here.lead()
        assert term.number == old_term + 1 and here.leader().node == "here"
        assert waited < 0.5 if here.one_host else 1.0 < waited < 3.0, f"led {waited:.1f} s after"
    finally:
        if other.poll() is None:
            killed(other)
    stale = Term(old_term, "there")
    with catalog.begin() as s, pytest.raises(NotLeaderError, match=f"term {old_term} has ended.*here leads"):
        stale.confirm(s)
    here.resign(term)
    assert here.leader().node is None, "a leader that stops hands its lease back at once"


def test_a_scheduled_run_is_submitted_once_whoever_ticks(url: str, appliance_data_dir: Path):
    """Two schedulers tick at the same moment (a leader and the one taking over from it): the
    run is submitted once. A scheduler whose term has ended submits nothing."""
    Store.init(appliance_data_dir / "store")
    appliance = Appliance.open(str(appliance_data_dir), None if url.startswith("sqlite") else url)
    appliance.vms.create("once", [16 * MiB])
    created = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
    first, second = (Scheduler.for_appliance(appliance, clock=lambda: created) for _ in range(2))
    first.policies.create(BackupPolicy(name="hourly", schedule="0 * * * *", vms=["once"]))
    due = created + timedelta(hours=1, seconds=5)
    first.clock = second.clock = lambda: due
    results: queue.SimpleQueue[list[JobRecord]] = queue.SimpleQueue()
    ticks = [threading.Thread(target=lambda s=s: results.put(s.tick())) for s in (first, second)]
    for tick in ticks:
        tick.start()
    for tick in ticks:
        tick.join()
    submitted = results.get() + results.get()
    assert len(submitted) == 1, "one run, one job"
    assert appliance.jobs.wait(submitted[0].id, TIMEOUT).state == "succeeded"

    term = appliance.jobs.nodes.lead()
    with appliance.catalog.begin() as s:   # another node takes over, as its lead() would write it
        s.execute(update(LeaderLeaseRecord).values(node="other", pid=1, term=term.number + 1))
    deposed = Scheduler.for_appliance(appliance, clock=lambda: due + timedelta(hours=1), term=term)
    assert deposed.tick() == []
    with appliance.catalog() as s:
        assert len(s.scalars(select(JobRecord)).all()) == 1
        assert s.scalar(text("SELECT count(*) FROM events WHERE kind = 'policy.run'")) == 1


def test_the_events_of_every_process_reach_every_nodes_listeners(postgres_url: str):  # noqa: F811
    """A relay hands this node's listeners what another process publishes (a job's start, progress
    and end) and what another node stores, once each; after losing its connection it catches up
    with the stored events it missed."""
    catalog = open_catalog(postgres_url)
    here, elsewhere = EventLog(catalog), EventLog(catalog)
    relay = EventRelay(here)
    relay.start()
    try:
        with here.listen() as feed:
            until(lambda: _listening(catalog))
            proc, job_id = other_process(postgres_url, 1.0)
            kinds = _kinds_until(feed, lambda e: e["kind"] == "job.succeeded" and e["job_id"] == job_id)
            proc.wait()
            assert kinds[0] == "job.started" and kinds.count("job.progress") >= 2, kinds
            here.emit("note.here", "ours")
            elsewhere.emit("note.elsewhere", "theirs")
            assert _kinds_until(feed, lambda e: e["kind"] == "note.elsewhere") == ["note.here", "note.elsewhere"]

            with catalog.begin() as s:   # the relay's connection is cut (as a restart of PostgreSQL would)
                s.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE query LIKE 'LISTEN%' AND datname = current_database()"))
            elsewhere.emit("note.missed", "while the relay was away")
            assert _kinds_until(feed, lambda e: e["kind"] == "note.missed") == ["note.missed"]
            here.emit("note.after", "ours again")
            assert _kinds_until(feed, lambda e: e["kind"] == "note.after") == ["note.after"]
            with pytest.raises(queue.Empty):
                feed.get(timeout=1.5)
    finally:
        relay.stop()


def _listening(catalog) -> bool:
    with catalog() as s:
        return bool(s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
                                  "AND datname = current_database()")))


def _kinds_until(feed: queue.SimpleQueue, last) -> list[str]:
    kinds = []
    while True:
        event = feed.get(timeout=TIMEOUT)
        kinds.append(event["kind"])
        if last(event):
            return kinds


@pytest.mark.sqlite_only(reason="what SQLite refuses; several nodes on PostgreSQL: the tests above")
def test_a_sqlite_catalog_has_one_node(appliance_data_dir: Path):
    """A second `cairn serve` on a SQLite catalog is refused, with the way out; the first one leads."""
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir)}
    env.pop("CAIRN_CATALOG_URL", None)
    with console_server(appliance_data_dir) as base:
        second = subprocess.run([sys.executable, "-m", "appliance.cli", "serve", "--port", "1"], env=env,
                                capture_output=True, text=True, timeout=TIMEOUT)
        said = " ".join(second.stderr.split())
        assert second.returncode == 1, said
        assert "cairn serve already runs on this SQLite catalog" in said and "move the catalog to PostgreSQL" in said
        nodes = Appliance.open(str(appliance_data_dir)).jobs.nodes
        assert nodes.leader().node == nodes.name, base
