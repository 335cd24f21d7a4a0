"""The audit log: every change asked of the API (who, what, when, result), recorded in one place.

`record_changes` wraps the whole app, so the routers other modules add are covered without doing
anything: any request that is not a read is logged once it is answered, refused ones included."""
from __future__ import annotations

import logging
from datetime import datetime

from fastapi import FastAPI, Request
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.catalog.base import utcnow

from .records import AuditRecord
from .roles import READ_METHODS

log = logging.getLogger("cairn.audit")
ANONYMOUS = "anonymous"


class AuditLog:
    def __init__(self, catalog: sessionmaker[Session]) -> None:
        self.catalog = catalog

    def record(self, entry: AuditRecord) -> None:
        with self.catalog.begin() as s:
            s.add(entry)

    def list(self, *, actor: str | None = None, result: str | None = None, since: datetime | None = None,
             text: str | None = None, limit: int = 100, offset: int = 0) -> list[AuditRecord]:
        """Newest first; `text` is looked for (case aside) in the call's path and its error."""
        query = select(AuditRecord)
        if text:
            query = query.where(or_(AuditRecord.path.icontains(text, autoescape=True),
                                    AuditRecord.error.icontains(text, autoescape=True)))
        if actor is not None:
            query = query.where(AuditRecord.actor == actor)
        if result is not None:
            query = query.where(AuditRecord.result == result)
        if since is not None:
            query = query.where(AuditRecord.at >= since)
        with self.catalog() as s:
            return list(s.scalars(query.order_by(AuditRecord.id.desc()).limit(limit).offset(offset)))


def result_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403, 429):   # no credentials, no right, or too many wrong guesses
        return "denied"
    return "rejected" if status < 500 else "failed"


def record_changes(api: FastAPI, audit: AuditLog) -> None:
    """Log every non-read request under /api/v1 (see AuditMiddleware)."""
    api.add_middleware(AuditMiddleware, audit=audit)


class AuditMiddleware:
    """Plain ASGI, so streamed answers (event streams) pass through untouched. Who: the principal
    the auth dependency put in request.state, or the user a login claimed (request.state.claimed_user);
    why it failed: request.state.error, set by the error handlers."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READ_METHODS or not scope["path"].startswith("/api/v1/"):
            await self.app(scope, receive, send)
            return
        at = utcnow()
        status = 500   # unless the app answers: an unhandled error still gets its line

        async def note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        request = Request(scope)
        try:
            await self.app(scope, receive, note_status)
        except Exception as e:
            request.state.error = f"{type(e).__name__}: {e}"
            raise
        finally:
            await run_in_threadpool(_record, self.audit, request, at, status)


def _record(audit: AuditLog, request: Request, at: datetime, status: int) -> None:
    principal = getattr(request.state, "principal", None)
    actor = principal.name if principal else getattr(request.state, "claimed_user", None) or ANONYMOUS
    entry = AuditRecord(at=at, actor=actor[:64], credential=principal.credential if principal else None,
                        client=request.client.host if request.client else None, method=request.method,
                        path=request.url.path, status=status, result=result_of(status),
                        error=getattr(request.state, "error", None))
    try:
        audit.record(entry)
    except Exception:  # the change is done: losing its audit line must be loud, not fatal
        log.exception("could not write the audit line for %s %s by %s", request.method, request.url.path, actor)
