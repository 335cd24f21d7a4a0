"""The list query of `cairn ... list`: --filter, --sort, --limit and --offset, as the API's
?filter=&sort=&limit=&offset= (appliance/catalog/query.py has the syntax, and imports no SQLAlchemy:
a listing through an appliance's API needs no database library), and the line saying a listing
shows one page of more.
"""
from __future__ import annotations

from typing import Any

import typer

from appliance.catalog.query import FILTER_HELP, MAX_LIMIT

from .common import err

FILTER_OPT = typer.Option([], "--filter", help=f"{FILTER_HELP}; e.g. state:eq:failed (repeat for more).")
OFFSET_OPT = typer.Option(0, "--offset", min=0, help="Matches to skip: the next page is --offset LIMIT.")


def limit_option(default: int) -> Any:
    return typer.Option(default, "--limit", min=1, max=MAX_LIMIT, help="Show at most this many.")


def sort_option(default: str) -> Any:
    return typer.Option(default, "--sort", help="Fields, comma-separated; -field sorts descending.")


def say_page(shown: int, offset: int, total: int, what: str) -> None:
    """On stderr (JSON on stdout stays whole): which of how many matches are shown, if not all."""
    if offset or shown < total:
        first = f"{offset + 1}-{offset + shown}" if shown else "none"
        err.print(f"{what} {first} of {total} shown: --offset and --limit for the others, --filter to narrow",
                  highlight=False)

