"""The web console: static pages and ES modules under /ui, calling only the public /api/v1 API.

No build step and no state on the server: the browser signs in through /api/v1/auth/login and
sends the session token as a bearer header, like any script. No cookie carries it, so a page of
another site cannot make the browser act for the user (no CSRF to defend against), and the
Content-Security-Policy lets only these files run, so text shown from the API cannot turn into
script that reads the token.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_PATH = "/ui"
STATIC_DIR = Path(__file__).parent / "static"
# Swagger UI, vendored under static/vendor/swagger-ui (like noVNC): no CDN, so it shows offline too.
API_DOCS = CONSOLE_PATH + "/api-docs.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new appliance version must reach the browser at once: revalidate (ETag) every time.
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


async def _to_console(_: Request) -> RedirectResponse:
    return RedirectResponse(CONSOLE_PATH + "/")


async def _to_api_docs(_: Request) -> RedirectResponse:
    return RedirectResponse(API_DOCS)


def mount_console(app: FastAPI) -> None:
    """Serve the console at /ui (and send / there, and /api/v1/docs to the API's reference among its
    files). These are plain Starlette routes, outside the API's authorization: the files hold no
    data, and every call they make is authorized as usual."""
    app.router.routes.append(Route("/", _to_console, include_in_schema=False))
    app.router.routes.append(Route("/api/v1/docs", _to_api_docs, include_in_schema=False))
    app.mount(CONSOLE_PATH, ConsoleFiles(directory=STATIC_DIR, html=True), name="console")
