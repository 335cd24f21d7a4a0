#!/usr/bin/env python3
"""List queries on a large catalog: the query helper against the bare SQL it runs, in one run.

Fills a fresh SQLite catalog with 100k events and 100k jobs, then times, for each case, the
appliance's list path (`run_query`: count + page, rows turned into the API's models) and
the ceiling: the same two SQL statements through the database's own driver, rows fetched as
tuples. Prints p50/p95 in ms and the ratio ceiling/helper of the p50s (1.0: the helper adds nothing).
bench/api.py builds on this module (Ceiling, percentiles, the table) for the VM and backup lists.
Run: .venv/bin/python bench/query.py [--rows 100000] [--repeat 30]
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from sqlalchemy import Select, insert
from sqlalchemy.engine import make_url

from appliance.api.jobs import EventOut, JobOut
from appliance.catalog.engine import open_catalog
from appliance.catalog.paging import count_of, page_statement, run_query
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


class Ceiling:
    """The bare SQL of a list query: its count and page statements, values inlined, run through the
    database's own driver (sqlite3, psycopg) with rows fetched as tuples: what no helper can beat."""

    def __init__(self, catalog_url: str, dialect: Any):
        self.dialect = dialect
        url = make_url(catalog_url)
        if url.get_backend_name() == "sqlite":
            self.connection: Any = sqlite3.connect(url.database)
        else:
            import psycopg

            self.connection = psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                                              autocommit=True)

    def statements(self, page: Select[Any]) -> tuple[str, str]:
        """(count, page) as SQL text."""
        return tuple(str(stmt.compile(dialect=self.dialect, compile_kwargs={"literal_binds": True}))  # type: ignore
                     for stmt in (count_of(page), page))

    def run(self, count_sql: str, page_sql: str) -> None:
        cursor = self.connection.cursor()
        cursor.execute(count_sql)
        cursor.fetchone()
        cursor.execute(page_sql)
        cursor.fetchall()

    def close(self) -> None:
        self.connection.close()


def timed(samples: list[float], work: Callable[[], Any]) -> Any:
    began = time.perf_counter()
    result = work()
    samples.append(time.perf_counter() - began)
    return result


HEADER = f"{'case':<40} {'p50 ms':>8} {'p95':>8} {'ceiling p50':>12} {'p95':>8} {'ratio':>6}"


def row(name: str, measured: list[float], ceiling: list[float]) -> str:
    """One line of the table: the path's p50/p95, the ceiling's, and ceiling p50 / path p50."""
    m50, m95 = percentiles(measured)
    c50, c95 = percentiles(ceiling)
    return f"{name:<40} {m50 * 1e3:>8.1f} {m95 * 1e3:>8.1f} {c50 * 1e3:>12.1f} {c95 * 1e3:>8.1f} {c50 / m50:>6.2f}"


def through_helper(catalog, query: ListQuery, model, out) -> list:
    with catalog() as s:
        return [out.model_validate(r) for r in run_query(query, s, model)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-query-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'catalog.db'}"
        catalog = open_catalog(url)
        began = time.monotonic()
        fill(catalog, args.rows)
        print(f"{args.rows} events + {args.rows} jobs inserted in {time.monotonic() - began:.1f} s")
        ceiling = Ceiling(url, catalog.kw["bind"].dialect)
        print(HEADER.replace("p50 ms", "helper"))
        for name, model, out, spec in CASES:
            query = ListQuery.parse(spec.get("limit", 100), spec.get("offset", 0), spec.get("sort"),
                                    spec.get("filters", ()))
            statements = ceiling.statements(page_statement(query, model))
            helper: list[float] = []
            bare: list[float] = []
            for _ in range(args.repeat):
                timed(helper, partial(through_helper, catalog, query, model, out))
                timed(bare, partial(ceiling.run, *statements))
            print(row(name, helper, bare))
        ceiling.close()


if __name__ == "__main__":
    main()
