"""A pytest plugin for test_reliability_doc.py, loaded with `-p matrix_collector` into a
collect-only run: writes each collected test's id and the names of its markers, as JSON, to
the file $CAIRN_MATRIX_COLLECTED names."""
from __future__ import annotations

import json
import os

import pytest

OUTPUT_ENV = "CAIRN_MATRIX_COLLECTED"


def pytest_collection_finish(session: pytest.Session) -> None:
    collected = {item.nodeid: sorted({mark.name for mark in item.iter_markers()}) for item in session.items}
    with open(os.environ[OUTPUT_ENV], "w") as out:
        json.dump(collected, out)
