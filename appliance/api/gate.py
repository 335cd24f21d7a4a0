"""What every API request passes before its body is read: who calls, may they, and how much body
they may send.

FastAPI reads and parses a request's body before any dependency runs, so authentication as a
dependency comes too late: an anonymous 200 MiB request would be read, and parsed, first. The
gate is plain ASGI in front of the app (inside the audit log, which records what it refuses):
  - who calls and whether their role allows the request (api_auth.authenticate and authorize,
    roles.py), from the headers alone (through the local socket, from the kernel: socket_caller):
    a request that may not be made is answered 401 or 403 with none of its body read; the
    caller is left in request.state.principal for the routes, the visibility guard and the
    audit log;
  - a request body holds at most MAX_BODY bytes: 413 from its announced Content-Length, or as
    soon as more arrives; the app gets the body only once it is whole;
  - an image upload (UPLOADS) streams to disk through its route, up to the appliance's
    max_upload: 413 from the announced length, or BodyTooLargeError as soon as more arrives (the
    route then removes what it wrote).
"""
from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.access.auth import Principal
from appliance.errors import CairnError, UnauthorizedError
from appliance.units import human

from .answers import BodyTooLargeError, error_body
from .auth import SOCKET_PEER_UID, authenticate, authorize, socket_caller

API_PREFIX = "/api/v1/"
# What the gate guards: the API, and the metrics (they name VMs); the console's static files are public.
GUARDED = (API_PREFIX, "/metrics")
MAX_BODY = 1 << 20   # JSON requests are small; anything larger is a mistake or an attack
# Requests whose body is a file, streamed to disk by their route.
UPLOADS = (("PUT", re.compile(r"^/api/v1/images/[^/]+/?$")),)


def is_upload(method: str, path: str) -> bool:
    return any(method == upload_method and pattern.match(path) for upload_method, pattern in UPLOADS)


class RequestGate:
    def __init__(self, app: ASGIApp, appliance: Any) -> None:
        self.app = app
        self.appliance = appliance

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        upload = is_upload(scope["method"], scope["path"])
        limit = self.appliance.settings.max_upload if upload else MAX_BODY
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if (peer_uid := state.get(SOCKET_PEER_UID)) is not None:   # the local socket: the kernel says who
                principal: Principal | None = socket_caller(peer_uid)
            else:
                principal = await run_in_threadpool(authenticate, self.appliance, scope["method"], scope["path"],
                                                    headers.get("authorization"))
            if principal is not None:
                state["principal"] = principal   # also for the audit line of a refusal
                authorize(principal, scope["method"], scope["path"])
            if (length := headers.get("content-length", "")).isdigit() and int(length) > limit:
                raise too_large(limit, upload)
            if upload:
                await self.app(scope, counted(receive, limit), send)
                return
            body = await read_body(receive, limit)
        except CairnError as e:
            state["error"] = f"{type(e).__name__}: {e}"
            await error_response(e)(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)


def too_large(limit: int, upload: bool) -> BodyTooLargeError:
    if upload:
        return BodyTooLargeError(f"the upload is larger than the appliance takes ({human(limit)}, "
                                 "$CAIRN_MAX_UPLOAD): nothing was kept")
    return BodyTooLargeError(f"the request body is larger than {human(limit)}")


async def read_body(receive: Receive, limit: int) -> list[Message]:
    """The request's body messages, whole, or BodyTooLargeError once they pass `limit`."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages   # the client went away: the app will see it
        size += len(message.get("body", b""))
        if size > limit:
            raise too_large(limit, upload=False)
        if not message.get("more_body", False):
            return messages


def replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` for the app: the body already read, then the connection's own (a disconnect)."""
    pending = list(messages)

    async def next_message() -> Message:
        return pending.pop(0) if pending else await receive()
    return next_message


def counted(receive: Receive, limit: int) -> Receive:
    """`receive` that raises BodyTooLargeError as soon as the body passes `limit`."""
    size = 0

    async def next_message() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise too_large(limit, upload=True)
        return message
    return next_message


def error_response(e: CairnError) -> Any:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(e, UnauthorizedError) else None
    return error_body(e.status, type(e).__name__, str(e), headers=headers)
