"""The catalog's side of jobs: finding a job, and listing jobs and their events.

Light on purpose (SQLAlchemy and the tables only), as backups/catalog.py is: `cairn job list`,
`job show` and `job events` use it without loading the engine that runs jobs (its claims, nodes
and queues); the engine (engine.py) is one, and answers the API's listings with it.
"""
from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.paging import run_query
from appliance.catalog.query import HasHeaders, ListQuery
from appliance.errors import NotFoundError

from .records import EventRecord, JobRecord


class JobCatalog:
    def __init__(self, catalog: sessionmaker[Session]):
        self.catalog = catalog

    def get(self, job_id: str) -> JobRecord:
        with self.catalog() as s:
            rec = s.get(JobRecord, job_id)
            if rec is None:
                raise NotFoundError(f"no job {job_id}")
            return rec

    def page(self, query: ListQuery, where: ColumnElement[bool], response: HasHeaders | None = None) -> list[JobRecord]:
        """The jobs `query` asks for among those `where` selects (the caller's visible ones)."""
        with self.catalog() as s:
            return run_query(query, s, JobRecord, select(JobRecord).where(where), response=response)

    def page_events(self, query: ListQuery, where: ColumnElement[bool],
                    response: HasHeaders | None = None) -> list[EventRecord]:
        """The events `query` asks for among those `where` selects (the caller's visible ones)."""
        with self.catalog() as s:
            return run_query(query, s, EventRecord, select(EventRecord).where(where), response=response)
