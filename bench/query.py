#!/usr/bin/env python3
"""List queries on a large catalog: the query helper against the bare SQL it runs, in one run.

Fills a fresh SQLite catalog with 100k events and 100k jobs, then times, for each case, the
appliance's list path (`ListQuery.run`: count + page, rows turned into the API's models) and
the ceiling: the same two SQL statements through the sqlite3 module, rows fetched as tuples.
Prints p50/p95 in ms and the ratio ceiling/helper of the p50s (1.0: the helper adds nothing).
Run: .venv/bin/python bench/query.py [--rows 100000] [--repeat 30]
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from sqlalchemy import insert

from appliance.api.jobs import EventOut, JobOut
from appliance.catalog.engine import open_catalog
from appliance.catalog.query import ListQuery
from appliance.jobs.records import EventRecord, JobRecord

CASES = [
    ("events: newest page", EventRecord, EventOut, {"sort": "-id"}),
    ("events: kind+severity", EventRecord, EventOut,
     {"filters": ["kind:eq:job.failed", "severity:eq:error"], "sort": "-created_at"}),
    ("events: message contains", EventRecord, EventOut, {"filters": ["message:contains:vm-4242"]}),
    ("jobs: failed backups", JobRecord, JobOut,
     {"filters": ["state:eq:failed", "kind:in:backup|snapshot"], "sort": "-created_at"}),
    ("jobs: deep page", JobRecord, JobOut, {"sort": "created_at", "offset": 90_000}),
]


def fill(catalog, rows: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    kinds = ["job.started", "job.succeeded", "job.failed", "backup.done", "policy.run"]
    states = ["succeeded"] * 8 + ["failed", "cancelled"]
    with catalog.begin() as s:
        s.execute(insert(EventRecord), [
            {"created_at": start + timedelta(seconds=i), "kind": kinds[i % 5], "severity": "error" if i % 5 == 2
             else "info", "resource": f"vm:vm-{i % 5000}", "job_id": f"{i:016x}", "message": f"event {i} on vm-{i % 5000}",
             "data": {"n": i}} for i in range(rows)])
        s.execute(insert(JobRecord), [
            {"id": f"{i:016x}", "kind": ("backup", "snapshot", "store.verify")[i % 3], "resource": f"vm:vm-{i % 5000}",
             "state": states[i % 10], "params": {"vm": f"vm-{i % 5000}"}, "limits": {}, "memo": {},
             "steps": [{"name": "claim", "state": "done", "error": None}], "progress": 1.0, "result": None,
             "error": None, "cancel_requested": False, "policy_id": None, "runner_pid": None,
             "created_at": start + timedelta(seconds=i), "started_at": None, "finished_at": None}
            for i in range(rows)])


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-query-") as tmp:
        db = Path(tmp) / "catalog.db"
        catalog = open_catalog(f"sqlite:///{db}")
        began = time.monotonic()
        fill(catalog, args.rows)
        print(f"{args.rows} events + {args.rows} jobs inserted in {time.monotonic() - began:.1f} s")
        raw = sqlite3.connect(db)
        print(f"{'case':<26} {'helper p50':>10} {'p95':>8} {'ceiling p50':>12} {'p95':>8} {'ratio':>6}")
        for name, model, out, spec in CASES:
            query = ListQuery.parse(spec.get("limit", 100), spec.get("offset", 0), spec.get("sort"),
                                    spec.get("filters", ()))
            helper, ceiling = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                with catalog() as s:
                    [out.model_validate(r) for r in query.run(s, model)]
                helper.append(time.perf_counter() - t)
                page_sql, count_sql = _statements(catalog, query, model)
                t = time.perf_counter()
                raw.execute(count_sql).fetchone()
                raw.execute(page_sql).fetchall()
                ceiling.append(time.perf_counter() - t)
            h50, h95 = percentiles(helper)
            c50, c95 = percentiles(ceiling)
            print(f"{name:<26} {h50 * 1e3:>9.1f}  {h95 * 1e3:>7.1f}  {c50 * 1e3:>11.1f}  {c95 * 1e3:>7.1f}"
                  f"  {c50 / h50:>5.2f}")


def _statements(catalog, query: ListQuery, model) -> tuple[str, str]:
    """The SQL the helper runs, as text with its values inlined, for the bare sqlite3 ceiling."""
    captured: list = []

    class Recorder:
        def scalar(self, stmt):
            captured.append(stmt)
            return 0

        def scalars(self, stmt):
            captured.append(stmt)
            return []

    query.run(Recorder(), model)   # type: ignore[arg-type]
    count, page = captured
    dialect = catalog.kw["bind"].dialect
    return (str(page.compile(dialect=dialect, compile_kwargs={"literal_binds": True})),
            str(count.compile(dialect=dialect, compile_kwargs={"literal_binds": True})))


if __name__ == "__main__":
    main()
