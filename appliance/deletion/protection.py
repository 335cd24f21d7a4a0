"""Deletion protection (nSSV 5.1.7): per kind of resource, deleting is immediate, delayed or never.

Delayed deletion sets the resource aside in the recycle bin, from where it can be restored
until its purge time; the scheduler purges what has expired. Before anything is deleted,
`preview` says what the deletion would take with it.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow
from appliance.catalog.paging import run_query
from appliance.catalog.query import HasHeaders, ListQuery
from appliance.errors import ConflictError, NotFoundError
from appliance.policies.service import Clock

from .records import DeletionRuleRecord, RecycledRecord

Mode = Literal["immediate", "delayed", "never"]


class DeletionRule(BaseModel):
    mode: Mode
    delay_seconds: int = Field(strict=True, default=0, ge=0, le=10 * 365 * 24 * 3600,
                               description="how long a deleted resource stays restorable (delayed), at most 10 years")

    @model_validator(mode="after")
    def _delay_fits_mode(self) -> DeletionRule:
        if (self.mode == "delayed") != (self.delay_seconds > 0):
            raise ValueError("delay_seconds is > 0 exactly when mode is delayed")
        return self


class Impact(BaseModel):
    """What deleting a resource does, said before it is done (and returned when it is)."""
    kind: str
    name: str
    mode: Mode
    takes: list[str] = Field(description="what goes with it, in words")
    frees_bytes: int | None = Field(None, description="space given back once it is gone for good")
    purge_at: datetime | None = Field(None, description="delayed: when it leaves the recycle bin for good")
    recycle_id: str | None = None
    deleted: bool = False


class RecycledOut(BaseModel):
    id: str
    kind: str
    name: str
    deleted_at: datetime
    purge_at: datetime


class Deletable(Protocol):
    """One kind of resource, as deletion protection handles it."""
    kind: str

    def impact(self, name: str) -> tuple[str, list[str], int | None]:
        """(canonical name, what goes with it, bytes freed); NotFoundError/ConflictError if it cannot go."""

    def set_aside(self, name: str) -> dict[str, Any]:
        """Hide it from use, keeping what put_back and purge need."""

    def put_back(self, payload: dict[str, Any]) -> None: ...

    def purge(self, payload: dict[str, Any]) -> None: ...


class DeletionService:
    def __init__(self, catalog: sessionmaker[Session], kinds: list[Deletable], defaults: dict[str, DeletionRule],
                 clock: Clock = utcnow):
        self.catalog = catalog
        self.kinds = {k.kind: k for k in kinds}
        self.defaults = defaults
        self.clock = clock

    def page(self, query: ListQuery, where: ColumnElement[bool],
             response: HasHeaders | None = None) -> list[RecycledRecord]:
        """What the recycle bin holds that `query` asks for, among what `where` selects (the caller's)."""
        with self.catalog() as s:
            return run_query(query, s, RecycledRecord, select(RecycledRecord).where(where), response=response)

    def rules(self) -> dict[str, DeletionRule]:
        with self.catalog() as s:
            # Validated as it is read: the mode is a string in the table.
            stored = {r.kind: DeletionRule.model_validate({"mode": r.mode, "delay_seconds": r.delay_seconds})
                      for r in s.scalars(select(DeletionRuleRecord))}
        return {kind: stored.get(kind, self.defaults[kind]) for kind in self.kinds}

    def set_rule(self, kind: str, rule: DeletionRule) -> DeletionRule:
        self._kind(kind)
        with self.catalog.begin() as s:
            s.merge(DeletionRuleRecord(kind=kind, mode=rule.mode, delay_seconds=rule.delay_seconds))
        return rule

    def preview(self, kind: str, name: str) -> Impact:
        rule = self.rules()[self._kind(kind).kind]
        canonical, takes, frees = self.kinds[kind].impact(name)
        if rule.mode == "never":
            takes = [f"nothing: deleting a {kind} is switched off (deletion rule: never)"]
        return Impact(kind=kind, name=canonical, mode=rule.mode, takes=takes, frees_bytes=frees,
                      purge_at=self.clock() + timedelta(seconds=rule.delay_seconds) if rule.mode == "delayed" else None)

    def delete(self, kind: str, name: str) -> Impact:
        impact = self.preview(kind, name)
        handler = self.kinds[kind]
        if impact.mode == "never":
            raise ConflictError(f"deleting a {kind} is switched off (deletion rule: never); change the rule with "
                                f"PUT /api/v1/deletion-rules/{kind}")
        payload = handler.set_aside(impact.name)
        if impact.mode == "immediate":
            handler.purge(payload)
            return impact.model_copy(update={"deleted": True})
        rec = RecycledRecord(id=uuid.uuid4().hex[:16], kind=kind, name=impact.name, deleted_at=self.clock(),
                             purge_at=impact.purge_at, payload=payload)
        with self.catalog.begin() as s:
            s.add(rec)
        return impact.model_copy(update={"deleted": True, "recycle_id": rec.id})

    def restore(self, recycle_id: str) -> RecycledOut:
        rec = self._recycled(recycle_id)
        self.kinds[rec.kind].put_back(rec.payload)
        self._forget(rec.id)
        return recycled_out(rec)

    def purge(self, recycle_id: str) -> RecycledOut:
        rec = self._recycled(recycle_id)
        self.kinds[rec.kind].purge(rec.payload)
        self._forget(rec.id)
        return recycled_out(rec)

    def purge_expired(self) -> list[RecycledOut]:
        now = self.clock()
        with self.catalog() as s:
            due = [r.id for r in s.scalars(select(RecycledRecord).order_by(RecycledRecord.purge_at))
                   if r.purge_at <= now]
        return [self.purge(recycle_id) for recycle_id in due]

    def _kind(self, kind: str) -> Deletable:
        if kind not in self.kinds:
            raise NotFoundError(f"no deletion rules for {kind!r}; kinds: {', '.join(sorted(self.kinds))}")
        return self.kinds[kind]

    def _recycled(self, recycle_id: str) -> RecycledRecord:
        with self.catalog() as s:
            rec = s.get(RecycledRecord, recycle_id)
            if rec is None:
                raise NotFoundError(f"nothing in the recycle bin with id {recycle_id}")
            return rec

    def _forget(self, recycle_id: str) -> None:
        with self.catalog.begin() as s:
            if rec := s.get(RecycledRecord, recycle_id):
                s.delete(rec)


def recycled_out(rec: RecycledRecord) -> RecycledOut:
    return RecycledOut(id=rec.id, kind=rec.kind, name=rec.name, deleted_at=rec.deleted_at, purge_at=rec.purge_at)
