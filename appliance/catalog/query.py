"""Pagination, filtering and sorting for every list resource of the API: the syntax.

    GET /api/v1/jobs?limit=50&offset=100&sort=-created_at,kind&filter=state:eq:failed&filter=kind:in:backup|snapshot

`sort` names fields, a leading `-` sorts descending; `filter` (repeatable, all must hold) is
`field:op:value` with op one of eq, ne, lt, le, gt, ge, in (values split by `|`) and contains
(case-insensitive substring); `null` as value of eq/ne matches a missing value. The total
number of matches, before limit and offset, is in the `X-Total-Count` header.

A ListQuery runs on SQLAlchemy models in the database (appliance/catalog/paging.py) and on lists
of dicts (resources assembled in Python: `apply`, here), with the same syntax and errors.

Neither SQLAlchemy nor FastAPI here: the CLI parses its listings' options with it, and through an
appliance's API (appliance/cli/remote.py) it needs no database library at all (the API's
dependency that parses a request into a ListQuery is appliance/api/listing.py).
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from appliance.errors import CairnError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_INTEGER = 2**63 - 1   # what SQLite and PostgreSQL store
TOTAL_HEADER = "X-Total-Count"
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
                                                      "le": operator.le, "gt": operator.gt, "ge": operator.ge}
OPERATORS = (*COMPARISONS, "in", "contains")
FILTER_HELP = "field:op:value, repeatable; op: " + ", ".join(OPERATORS)


class Headers(Protocol):
    def __setitem__(self, key: str, value: str) -> None: ...


class HasHeaders(Protocol):
    """Where the total goes: a FastAPI/Starlette Response, or anything with settable headers."""
    @property
    def headers(self) -> Headers: ...


class Total:
    """Where the total goes for a caller that is no HTTP route (the CLI): `.count` after the query."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    @property
    def count(self) -> int:
        return int(self.headers[TOTAL_HEADER])


class QueryError(CairnError):
    status = 422


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Filter:
        field, sep, rest = text.partition(":")
        op, sep2, value = rest.partition(":")
        if not (sep and sep2 and field):
            raise QueryError(f"filter {text!r} is not field:op:value (e.g. state:eq:failed)")
        if op not in OPERATORS:
            raise QueryError(f"filter {text!r}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
        return cls(field, op, value)


@dataclass(frozen=True)
class ListQuery:
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    sort: tuple[tuple[str, bool], ...] = ()   # (field, descending)
    filters: tuple[Filter, ...] = ()

    @classmethod
    def parse(cls, limit: int = DEFAULT_LIMIT, offset: int = 0, sort: str | None = None,
              filters: Sequence[str] = ()) -> ListQuery:
        keys = tuple((key.lstrip("-"), key.startswith("-")) for key in (sort or "").split(",") if key.strip("- "))
        return cls(limit, offset, keys, tuple(Filter.parse(f) for f in filters))

    def sorted_by_default(self, sort: str) -> ListQuery:
        """This query, sorted by `sort` (same syntax) if it names no order of its own."""
        return self if self.sort else replace(self, sort=ListQuery.parse(sort=sort).sort)

    def names(self, field: str) -> bool:
        """Whether the query filters or sorts by `field` (a costly field is then worth computing)."""
        return any(f.field == field for f in self.filters) or any(key == field for key, _ in self.sort)

    # -- in Python -------------------------------------------------------------------------------

    def apply(self, items: list[dict[str, Any]], resource: str, response: HasHeaders | None = None
              ) -> list[dict[str, Any]]:
        fields = set().union(*(item.keys() for item in items)) if items else set()
        for f in self.filters:
            if items:
                known_field(fields, f.field, "filter", resource)
            items = [item for item in items if _matches(item.get(f.field), f)]
        for field, descending in reversed(self.sort):   # stable sorts, last key first
            if items:
                known_field(fields, field, "sort by", resource)
            try:
                items = sorted(items, key=_missing_first(field), reverse=descending)
            except TypeError as e:
                raise QueryError(f"cannot sort by {field!r}: its values do not compare ({e})") from e
        if response is not None:
            response.headers[TOTAL_HEADER] = str(len(items))
        return items[self.offset:self.offset + self.limit]


def _missing_first(field: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    return lambda item: (item.get(field) is not None, item.get(field))


def known_field(fields: Any, field: str, action: str, resource: str) -> Any:
    """`field` of `fields` (a name's column when a mapping), or the error naming the fields there are."""
    if field not in fields:
        raise QueryError(f"cannot {action} {field!r}: {resource} have the fields {', '.join(sorted(fields))}")
    return fields[field] if isinstance(fields, Mapping) else field


def _matches(actual: Any, f: Filter) -> bool:
    if f.op == "contains":
        return actual is not None and f.value.lower() in str(actual).lower()
    python_type = type(actual) if actual is not None else str
    if f.op == "in":
        return actual in [filter_value(v, python_type, f) for v in f.value.split("|")]
    value = filter_value(f.value, python_type, f)
    if value is None or actual is None:
        return (actual is value) == (f.op == "eq") if f.op in ("eq", "ne") else False
    return COMPARISONS[f.op](actual, value)


def filter_value(text: str, python_type: type, f: Filter) -> Any:
    """A filter's value as the field's Python type (None for `null`), or the error saying why not."""
    if text == "null":
        return None
    try:
        if python_type is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        if python_type is datetime:
            return datetime.fromisoformat(text)
        value = python_type(text)
        if python_type is int and abs(value) > MAX_INTEGER:
            raise ValueError("out of range")
        return value
    except (TypeError, ValueError) as e:
        raise QueryError(f"filter {f.field}:{f.op}:{text}: {text!r} is not a valid {python_type.__name__} ({e})") \
            from e
