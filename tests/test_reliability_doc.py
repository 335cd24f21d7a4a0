"""docs/reliability.md keeps its word: each row of its fault matrix names tests that exist, are
collected and are not marked to fail or to be skipped, so every promise in it is proved by a
test that runs; each known gap names a test marked to fail strictly, which turns the suite red
the day the gap is closed. The number of rows is printed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from catalog_backends import without_catalog_backend
from matrix_collector import OUTPUT_ENV

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
ROW = re.compile(r"^\| (\d+) \|(.*)\|\s*$", re.MULTILINE)
TEST = re.compile(r"`(tests/[\w/]+\.py::[^`]+)`")
MIN_ROWS = 40
NOT_RUN = {"xfail", "skip", "skipif"}


def matrix() -> dict[int, list[str]]:
    """Row number -> the tests it names (the doc must be there and readable)."""
    text = DOC.read_text()
    gaps = text.index("## Known gaps")
    return {int(n): TEST.findall(rest) for n, rest in ROW.findall(text[:gaps])}


def known_gaps() -> list[str]:
    text = DOC.read_text()
    return TEST.findall(text[text.index("## Known gaps"):])


def collected(tests: list[str], tmp_path: Path) -> dict[str, list[str]]:
    """Test id -> its markers, as pytest collects the files the tests are in. A test that runs on
    both catalogs is found under the id the doc gives it, without the catalog's (and with the
    markers of its runs together)."""
    files = sorted({t.split("::")[0] for t in tests})
    output = tmp_path / "collected.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "matrix_collector",
                           "-p", "no:cacheprovider", *files], cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, OUTPUT_ENV: str(output),
                               "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, f"collecting the matrix's test files failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    found: dict[str, list[str]] = {}
    for test_id, markers in json.loads(output.read_text()).items():
        found.setdefault(without_catalog_backend(test_id), []).extend(markers)
    return found


def test_every_row_of_the_fault_matrix_names_tests_that_run(tmp_path: Path):
    rows = matrix()
    assert sorted(rows) == list(range(1, len(rows) + 1)), "rows are numbered 1, 2, 3, ... in order"
    assert len(rows) >= MIN_ROWS, f"{len(rows)} rows: the matrix promises at least {MIN_ROWS} scenarios"
    assert not [n for n, tests in rows.items() if not tests], "a row without a test is not a row"
    # The doc may name a run on one catalog (`t[sqlite]`): it stands for the test, run on both.
    named = sorted({without_catalog_backend(t) for tests in rows.values() for t in tests})
    gaps = [without_catalog_backend(t) for t in known_gaps()]
    found = collected(named + gaps, tmp_path)
    missing = [t for t in named + gaps if t not in found]
    assert not missing, f"named tests that do not exist or are not collected: {missing}"
    not_run = [t for t in named if NOT_RUN & set(found[t])]
    assert not not_run, f"rows proved by tests marked to fail or to be skipped: {not_run}"
    passing = [t for t in gaps if "xfail" not in found[t]]
    assert not passing, f"known gaps whose tests are not marked to fail: {passing}"
    print(f"fault matrix: {len(rows)} rows proved by {len(named)} tests; {len(gaps)} known gaps")
