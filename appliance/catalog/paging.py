"""A ListQuery (appliance/catalog/query.py) run in the catalog: filtered, sorted and paged by
one SELECT, and its matches counted by another.

A resource whose fields are not all plain columns names them as SQL expressions (`fields`): a
value inside a JSON column, or a VM's live state, known outside the database, as a CASE over the
few VMs that are not stopped. So filtering, sorting and paging stay one query, and a page costs
the same whichever page it is.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import JSON, ColumnElement, Select, String, TypeDecorator, cast, func, select
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeEngine

from .query import COMPARISONS, TOTAL_HEADER, Filter, HasHeaders, ListQuery, QueryError, filter_value, known_field


def run_query(query: ListQuery, session: Session, model: type[DeclarativeBase], stmt: Select[Any] | None = None,
              response: HasHeaders | None = None, fields: Mapping[str, ColumnElement[Any]] | None = None
              ) -> list[Any]:
    """The page of `model` rows (narrowed by `stmt`, default all); sets the total header.
    `fields`: what may be filtered and sorted by, by name (default: the table's columns)."""
    return fetch_page(session, page_statement(query, model, stmt, fields), response)


def fetch_page(session: Session, page: Select[Any], response: HasHeaders | None = None) -> list[Any]:
    """The rows of a page's statement (from page_statement()); sets the total header."""
    if response is not None:
        response.headers[TOTAL_HEADER] = str(session.scalar(count_of(page)))
    return list(session.scalars(page))


def page_statement(query: ListQuery, model: type[DeclarativeBase], stmt: Select[Any] | None = None,
                   fields: Mapping[str, ColumnElement[Any]] | None = None) -> Select[Any]:
    """The page's SELECT (count_of() of it counts every match): what run_query() executes, and
    what the benchmarks run bare as the ceiling."""
    stmt = stmt if stmt is not None else select(model)
    resource: str = model.__tablename__
    columns = fields if fields is not None else {c.key: c for c in model.__table__.columns}
    for f in query.filters:
        stmt = stmt.where(_sql_condition(known_field(columns, f.field, "filter", resource), f))
    for field, descending in query.sort:
        column = known_field(columns, field, "sort by", resource)
        if isinstance(column.type, JSON):
            raise QueryError(f"cannot sort by {field!r}: it holds structured data")
        stmt = stmt.order_by(column.desc() if descending else column.asc())
    stmt = stmt.order_by(*model.__table__.primary_key)   # stable pages
    return stmt.offset(query.offset).limit(query.limit)


def count_of(page: Select[Any]) -> Select[Any]:
    """How many rows a page's query matches, before its order, offset and limit."""
    matches = page.order_by(None).limit(None).offset(None)
    return select(func.count()).select_from(matches.subquery())


def _sql_condition(column: Any, f: Filter) -> Any:
    if isinstance(column.type, JSON):
        raise QueryError(f"cannot filter {f.field!r}: it holds structured data")
    sql_type: TypeEngine[Any] = column.type.impl_instance if isinstance(column.type, TypeDecorator) else column.type
    python_type = sql_type.python_type
    if f.op == "contains":
        return cast(column, String).icontains(f.value)
    if f.op == "in":
        return column.in_([filter_value(v, python_type, f) for v in f.value.split("|")])
    value = filter_value(f.value, python_type, f)
    if value is None and f.op in ("eq", "ne"):
        return column.is_(None) if f.op == "eq" else column.is_not(None)
    return COMPARISONS[f.op](column, value)
