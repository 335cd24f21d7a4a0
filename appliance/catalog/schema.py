"""Every domain's tables in one metadata: what the migrations are written and checked against.

Each domain package owns its tables (`<domain>/records.py`); a process imports only those it
uses, so the whole schema is gathered here, for alembic and `cairn db check`.
"""
from __future__ import annotations

from importlib import import_module

from sqlalchemy import MetaData

from .base import Base

DOMAINS = ("access", "backups", "deletion", "hosts", "jobs", "notifications", "policies", "pools", "restores", "snapshots", "vms")


def all_tables() -> MetaData:
    for domain in DOMAINS:
        import_module(f"appliance.{domain}.records")
    return Base.metadata
