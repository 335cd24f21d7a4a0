"""Errors of the exports."""
from __future__ import annotations


class ExportError(Exception):
    """The VM cannot be exported as asked (unknown disk, export already active, a tool failed)."""
