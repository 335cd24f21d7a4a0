"""The list query of a request: `?limit=&offset=&sort=&filter=` parsed into a ListQuery.

    def list_jobs(query: Query, response: Response) -> ...:   # Query = Annotated[ListQuery, Depends(list_query)]

The syntax and its errors are appliance/catalog/query.py's; this module only tells FastAPI where
the values come from, so that nothing below the API imports FastAPI.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi import Query as FromQuery

from appliance.catalog.query import DEFAULT_LIMIT, FILTER_HELP, MAX_INTEGER, MAX_LIMIT, ListQuery

# A page of a list that takes no sort or filter (alarms, the outbox, the audit log) is bounded as
# this one: a number the catalog cannot store is the request's error, not the server's.
PageSize = Annotated[int, FromQuery(ge=1, le=MAX_LIMIT, description="page size")]
Skip = Annotated[int, FromQuery(ge=0, le=MAX_INTEGER, description="matches to skip")]


def list_query(
    limit: PageSize = DEFAULT_LIMIT,
    offset: Skip = 0,
    sort: Annotated[str | None, FromQuery(description="fields, comma-separated; -field sorts descending")] = None,
    filters: Annotated[list[str] | None, FromQuery(alias="filter", description=FILTER_HELP)] = None,
) -> ListQuery:
    """The FastAPI dependency: `query: Annotated[ListQuery, Depends(list_query)]`."""
    return ListQuery.parse(limit, offset, sort, filters or ())


Query = Annotated[ListQuery, Depends(list_query)]
