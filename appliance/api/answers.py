"""What the API answers when it refuses: one error body (ErrorOut) and, for each route, the
statuses it declares in the OpenAPI.

A route names the kinds of error it raises (`raises`); the error table
(appliance/error_statuses.py) gives their statuses. What the app answers whatever the route
(the request gate's 401, 403 and 413, the visibility guard's 404, 422 for what does not
validate) is added to every route by `declare_statuses`, from the route's role and parameters.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from appliance.access.roles import Role, required_role
from appliance.error_statuses import statuses
from appliance.errors import CairnError


class ErrorDetail(BaseModel):
    code: str = Field(description="the kind of error, e.g. NotFoundError")
    message: str = Field(description="what is wrong, and what to do about it")
    details: list[dict[str, Any]] | None = Field(None, description="a request that is not valid: each field's problem")


class ErrorOut(BaseModel):
    """The body of every error the API answers."""
    error: ErrorDetail


# What each status means, said once for every route that declares it.
MEANINGS = {
    400: "refused as asked: the message says why",
    401: "not signed in, or the session or key is no longer valid",
    403: "the caller's role does not allow this (or the store's key does not open it)",
    404: "not found, or not the caller's to see",
    409: "in conflict with what is there now (its state, a name taken, a rule)",
    413: "the request body is too large",
    422: "the request is not valid: the message and details say where",
    423: "the store is locked: the appliance needs its passphrase",
    429: "too many attempts: wait and try again",
    500: "the appliance's own fault (a damaged backup or store): the message says what",
    502: "another host, or a notification's receiver, did not answer as it should",
    503: "the catalog or the store cannot be reached",
    507: "the store is full (a pool quota, a full cluster or bucket): nothing was lost",
}


class BodyTooLargeError(CairnError):
    """The request gate's (gate.py): a body over the limit. Defined here, beside `raises`, so
    that a route declaring any CairnError (raises(CairnError)) declares it too, whichever of
    the API's modules was imported first."""
    status = 413


def raises(*kinds: type[Exception]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route (or router) that raises errors of these kinds: every status the
    error table (appliance/error_statuses.py) gives them."""
    return {code: {"model": ErrorOut, "description": MEANINGS[code]} for code in sorted(statuses(*kinds))}


def declare_statuses(api: FastAPI) -> None:
    """Adds to every operation of the app's OpenAPI the answers the app gives whatever the
    route: 401 and 403 from the request gate (roles.required_role; the public routes say they
    need no credentials), 413 for a body over the
    limit, 404 for a path naming what is not there or not the caller's to see (the visibility
    guard), 422 for parameters that do not validate. Done on the published document, whose
    operations say their parameters and body, so it holds however the routes were included."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            error = ErrorOut.model_json_schema(ref_template=f"{COMPONENTS}{{model}}")
            schemas.update(error.pop("$defs", {}), ErrorOut=error)
            for path, operations in spec["paths"].items():
                for method, operation in operations.items():
                    if required_role(method.upper(), path) is None:
                        operation["security"] = []   # public: no credentials needed
                    for code in sorted(app_statuses(method.upper(), path, operation)):
                        operation["responses"].setdefault(str(code), {
                            "description": MEANINGS[code],
                            "content": {"application/json": {"schema": {"$ref": f"{COMPONENTS}ErrorOut"}}}})
        return api.openapi_schema or {}
    api.openapi = openapi  # type: ignore[method-assign]


COMPONENTS = "#/components/schemas/"


def app_statuses(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """What the app may answer to this operation before or around its route."""
    from .gate import is_upload  # the gate answers with this module's error_body
    codes: set[int] = set()
    needed = required_role(method, path)
    if needed is not None:
        codes.add(401)
    if needed in (Role.OPERATOR, Role.ADMIN):
        codes.add(403)
    places = {p["in"] for p in operation.get("parameters", [])}
    body = "requestBody" in operation or is_upload(method, path)
    if body:
        codes |= {400, 413}   # 400: a body that does not parse
    if "path" in places:
        codes.add(404)
    if places or body:
        codes.add(422)
    return codes


def error_body(status: int, code: str, message: str, details: Any = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)
