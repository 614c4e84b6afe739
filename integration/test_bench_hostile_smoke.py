"""bench_hostile.py at small N (300 + 300), so it cannot rot: both versions run to their
first plan and the table has its numbers. Never a memory assertion: that is what the
benchmark reports (docs/performance.md), not what a test asserts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]


def test_bench_hostile_smoke():
    # One baseline (the version before streamed pages), not the default two: suite time.
    run = subprocess.run([sys.executable, "integration/bench/bench_hostile.py", "--small", "--baseline", "44c89ff"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("before (", "this checkout"))]
    assert len(rows) == 2, run.stdout
    for row in rows:
        assert len(re.findall(r"\d+(?:\.\d+)?", row.split("  ", 1)[-1])) >= 4, row
    assert re.search(r"now / before \(44c89ff\) pages read whole: RSS [\d.]+x, peak [\d.]+x", run.stdout), run.stdout
    assert re.search(r"goal RSS <= 150 MB: (met|NOT met)", run.stdout), run.stdout
