"""The API's route handlers are module-level functions (docs/appliance.md, "How a route is
written"): each names what it needs (ApplianceDep, Caller) in its signature, so no handler
closes over one app's state and one module serves any number of apps."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

from appliance.api.app import create_app


def handlers(routes: list[Any]) -> Iterator[tuple[str, Callable[..., Any]]]:
    """(path, endpoint) of every route, those of included routers too (FastAPI keeps an included
    router as one entry that builds its routes on first use)."""
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is not None:
            yield route.path, endpoint
        router = getattr(route, "original_router", None)
        if router is not None:
            yield from handlers(router.routes)


def test_every_route_handler_of_cairn_is_a_module_level_function(appliance):
    ours = [(path, endpoint) for path, endpoint in handlers(create_app(appliance).routes)
            if endpoint.__module__.startswith("appliance.")]
    assert len(ours) > 100, "the walk over the routes found too few: has FastAPI's router changed?"
    nested = [f"{path}: {endpoint.__module__}.{endpoint.__qualname__}" for path, endpoint in ours
              if getattr(importlib.import_module(endpoint.__module__), endpoint.__qualname__, None) is not endpoint]
    assert not nested, "route handlers defined inside a function:\n" + "\n".join(nested)
