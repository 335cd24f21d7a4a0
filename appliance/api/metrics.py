"""GET /metrics: Prometheus' text format, behind the API's own authentication.

On the API's listener, not a separate one: it is served over the same HTTPS, and a scrape needs
a bearer token like any other read — an access key of a viewer account made for Prometheus
(docs/monitoring.md) — so the metrics, which name VMs, are never open to whoever can reach a
port, and there is no second port to secure or firewall. What a scrape shows follows the
token's visibility: VMs its user may not see are left out.

`time_requests` times every API answer (to its first byte, so a long event stream counts as
answered when it starts) by route template, never by the raw path, whose IDs would make a
series per backup.
"""
from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.access.visibility import visibility
from appliance.metrics.exposition import CONTENT_TYPE
from appliance.metrics.live import API_LATENCY

from .auth import Caller
from .dependencies import ApplianceDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
def scrape(appliance: ApplianceDep, caller: Caller) -> Response:
    return Response(appliance.metrics.render(visibility(appliance).hidden(caller)), media_type=CONTENT_TYPE)


def time_requests(api: FastAPI) -> None:
    api.add_middleware(RequestTimer)


class RequestTimer:
    """Plain ASGI, like the audit middleware: streamed answers pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")   # set by the router once it matched: its template
                API_LATENCY.labels(scope["method"], getattr(route, "path", "unmatched"),
                                   str(message["status"])).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)
