#!/usr/bin/env python3
"""The VM and backup lists at scale, through the real HTTP API, beside the bare SQL of the same query.

For each catalog backend (SQLite; PostgreSQL too when --postgres or $CAIRN_TEST_POSTGRES_URL names a
role that may create databases), fills 10k VMs and 100k backups: every VM has a run directory (it ran
once), 1% run (a stand-in process carrying the VM's pidfile in its command line, as QEMU does) and 1%
crashed; an operator sees a third of the VMs and their backups, plus those shared with everyone and
with her group. Then starts `cairn serve` on it and times each case, interleaved, `--repeat` times:

  API      GET over HTTPS with one kept-alive connection, the JSON read: what a client waits for;
  ceiling  the count and page statements the appliance builds for that request (visibility and live
           states included), values inlined, through the database's own driver, rows as tuples.

ratio = ceiling p50 / API p50: the share of a request that is the database's own work.

A real `cairn serve` process rather than the ASGI app in-process: a client meets uvicorn, TLS and the
app's whole middleware (authentication, visibility, audit, metrics) in a process of its own, and the
benchmark's own work (the client, the ceiling) does not share its interpreter. `GET /api/v1/health`
(no catalog) gives the floor of any request.
Run: .venv/bin/python bench/api.py [--vms 10000] [--backups 100000] [--repeat 30] [--postgres URL]
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import httpx
from query import HEADER, Ceiling, percentiles, row, timed
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from appliance.access.records import VMAccessRecord
from appliance.access.roles import Role
from appliance.access.visibility import vm_visible
from appliance.backups.catalog import BackupCatalog
from appliance.backups.records import BackupRecord
from appliance.catalog.query import ListQuery
from appliance.context import Appliance
from appliance.vms.listing import VMListing
from appliance.vms.records import VMRecord
from vmm.rundir import VMState, write_state
from vmm.spec import DiskSpec, VMSpec

CAIRN = str(Path(sys.executable).with_name("cairn"))
PASSWORD = "bench-password-1"
OPERATOR = "alice"

# (case, path, query parameters, caller)
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("vms: first page", "/vms", {}, "admin"),
    ("vms: name contains, by memory", "/vms", {"filter": ["name:contains:vm01"], "sort": "-memory_mib"}, "admin"),
    ("vms: running (live state)", "/vms", {"filter": ["state:eq:running"]}, "admin"),
    ("vms: sorted by state, deep", "/vms", {"sort": "-state", "offset": 5000}, "admin"),
    ("vms: deep page", "/vms", {"offset": 9900}, "admin"),
    ("vms: operator's first page", "/vms", {}, OPERATOR),
    ("vms: operator's deep page", "/vms", {"offset": 3300}, OPERATOR),
    ("backups: first page", "/backups", {}, "admin"),
    ("backups: newest page", "/backups", {"sort": "-started_at"}, "admin"),
    ("backups: failed, newest", "/backups", {"filter": ["status:eq:failed"], "sort": "-started_at"}, "admin"),
    ("backups: one VM's", "/backups", {"vm": "vm04242", "sort": "-started_at"}, "admin"),
    ("backups: deep page", "/backups", {"offset": 99_900}, "admin"),
    ("backups: latest of 1000 VMs", "/backups", {"latest": True, "sort": "vm_name", "limit": 1000,
                                                 "filter": ["vm_name:ge:vm01000", "vm_name:lt:vm02000"]}, "admin"),
    ("backups: operator's newest", "/backups", {"sort": "-started_at"}, OPERATOR),
    ("backups: operator's deep page", "/backups", {"offset": 33_000}, OPERATOR),
]


def fill(appliance: Appliance, vms: int, backups: int) -> list[subprocess.Popen]:
    """The catalog's rows and the VMs' run directories; returns the stand-ins of the running VMs."""
    memories, start = (256, 512, 1024, 2048, 4096), datetime(2026, 1, 1, tzinfo=UTC)
    names = [f"vm{i:05d}" for i in range(vms)]
    with appliance.catalog.begin() as s:
        s.execute(insert(VMRecord), [
            {"name": name, "created_at": start, "spec": VMSpec(
                name, memory_mib=memories[i % 5], vcpus=1 + i % 8,
                disks=[DiskSpec("vda", f"/var/lib/cairn/vms/{name}/vda.qcow2")]).to_dict()}
            for i, name in enumerate(names)])
        # A third each: the operator's, someone else's (every tenth of those shared with her group), nobody's.
        s.execute(insert(VMAccessRecord), [
            {"vm_name": name, "owner": OPERATOR if i % 3 == 0 else "bob", "group": "red" if i % 30 == 1 else None}
            for i, name in enumerate(names) if i % 3 != 2])
        s.execute(insert(BackupRecord), [
            {"id": f"{i:016x}", "vm_name": names[i % vms], "store": "bench", "kind": "full" if i < vms else "incremental",
             "status": "failed" if i % 20 == 7 else "ok", "parent": None, "checkpoint": None,
             "started_at": start + timedelta(minutes=i), "finished_at": start + timedelta(minutes=i, seconds=30),
             "sequence": i + 1,   # as the column's default numbers them, without its max() per row
             "bytes_read": i * 4096, "bytes_stored": i * 1024, "size": 10 << 30,
             "error": "bench: failed" if i % 20 == 7 else None, "notes": [], "runner_pid": None, "verified_at": None,
             "damage": []} for i in range(backups)])
    return _run_dirs(appliance, names)


def _run_dirs(appliance: Appliance, names: list[str]) -> list[subprocess.Popen]:
    driver = appliance.driver
    live = driver.run_root / ".live"
    live.mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen(["true"])
    gone.wait()   # a pid nothing holds now: the crashed VMs' pidfiles name it
    running = []
    for i, name in enumerate(names):
        rundir = driver.paths(name)
        rundir.path.mkdir(parents=True)
        state = "running" if i % 100 == 1 else "crashed" if i % 100 == 2 else "stopped"
        write_state(rundir, VMState("stopped" if state == "stopped" else "running", False, "tcg", {}, []))
        if state == "stopped":
            continue
        if state == "running":   # two commands: sh stays, with the pidfile in its command line
            running.append(subprocess.Popen(["sh", "-c", "sleep 100000; :", "sh", "-pidfile", str(rundir.pidfile)],
                                            start_new_session=True))
        rundir.pidfile.write_text(f"{running[-1].pid if state == 'running' else gone.pid}\n")
        rundir.live_marker.touch()
    return running


@contextmanager
def catalog_database(backend: str, postgres: str | None) -> Iterator[str | None]:
    """None (the data dir's SQLite file) or the URL of a new PostgreSQL database, dropped afterwards."""
    if backend == "sqlite":
        yield None
        return
    admin_url = make_url(postgres).set(drivername="postgresql+psycopg")
    name = f"cairn_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def served(data_dir: Path, catalog_url: str | None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`cairn serve` on the data dir, answering: its base URL and its process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir), **({"CAIRN_CATALOG_URL": catalog_url} if catalog_url else {})}
    log = (data_dir / "serve.log").open("w")
    server = subprocess.Popen([CAIRN, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    base = f"https://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", verify=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cairn serve did not answer: {(data_dir / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield base, server
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def ceiling_statement(appliance: Appliance, path: str, params: dict[str, Any], who: Any) -> Any:
    """The page statement the appliance builds for this request (bare of its session and models)."""
    query = ListQuery.parse(params.get("limit", 100), params.get("offset", 0), params.get("sort"),
                            params.get("filter", ()))
    if path == "/vms":
        return VMListing.statement(query, appliance.driver.active(), vm_visible(VMRecord.name, who))
    return BackupCatalog.statement(query, vm_visible(BackupRecord.vm_name, who), params.get("vm"),
                                   params.get("latest", False))


def bench_backend(backend: str, postgres: str | None, args: argparse.Namespace) -> None:
    with catalog_database(backend, postgres) as catalog_url, \
            tempfile.TemporaryDirectory(prefix="cairn-bench-api-") as tmp:
        data_dir = Path(tmp)
        appliance = Appliance.open(str(data_dir), catalog_url)
        began = time.monotonic()
        stand_ins = fill(appliance, args.vms, args.backups)
        try:
            print(f"\n{backend}: {args.vms} VMs ({len(stand_ins)} running, as many crashed) and {args.backups} backups"
                  f" filled in {time.monotonic() - began:.1f} s")
            appliance.users.create("bench-admin", PASSWORD, Role.ADMIN)
            appliance.users.create(OPERATOR, PASSWORD, Role.OPERATOR)
            appliance.users.update(OPERATOR, groups=["red"])
            tokens = {"admin": appliance.auth.login("bench-admin", PASSWORD).token,
                      OPERATOR: appliance.auth.login(OPERATOR, PASSWORD).token}
            who = {caller: appliance.auth.authenticate(token) for caller, token in tokens.items()}
            ceiling = Ceiling(appliance.settings.catalog_url, appliance.catalog.kw["bind"].dialect)
            with served(data_dir, catalog_url) as (base, _), httpx.Client(base_url=base, verify=False) as client:
                floor: list[float] = []
                for _ in range(args.repeat):
                    timed(floor, partial(client.get, "/health"))
                print(f"GET /health (the floor of a request): p50 {percentiles(floor)[0] * 1e3:.1f} ms, "
                      f"p95 {percentiles(floor)[1] * 1e3:.1f} ms")
                print(HEADER.replace("p50 ms", "API p50"))
                for name, path, params, caller in CASES:
                    statements = ceiling.statements(ceiling_statement(appliance, path, params, who[caller]))
                    request = partial(_get, client, path, params, tokens[caller])
                    total = request().headers["X-Total-Count"]
                    api: list[float] = []
                    bare: list[float] = []
                    for _ in range(args.repeat):
                        timed(api, request)
                        timed(bare, partial(ceiling.run, *statements))
                    print(row(f"{name} ({total})", api, bare))
            ceiling.close()
        finally:
            for stand_in in stand_ins:
                os.killpg(stand_in.pid, signal.SIGKILL)
                stand_in.wait()


def _get(client: httpx.Client, path: str, params: dict[str, Any], token: str) -> httpx.Response:
    answer = client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    answer.raise_for_status()
    answer.json()
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--backups", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--postgres", default=os.environ.get("CAIRN_TEST_POSTGRES_URL"),
                        help="a PostgreSQL URL whose role may create databases (default $CAIRN_TEST_POSTGRES_URL)")
    args = parser.parse_args()
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} on {os.cpu_count()} CPUs")
    bench_backend("sqlite", None, args)
    if args.postgres:
        bench_backend("postgresql", args.postgres, args)
    else:
        print("\npostgresql: skipped (give --postgres URL or set $CAIRN_TEST_POSTGRES_URL)")
    print(f"\nload average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
