"""ruff (lint and format) and mypy over bgpspeaker/, as part of `make test`.

Their settings are in pyproject.toml and their versions pinned in setup.cfg's test extra
(and constraints.txt), so a finding here is the same on every machine. Each runs as a
subprocess of the venv's Python, exactly as a developer would run it by hand:
`.venv/bin/ruff check`, `.venv/bin/ruff format --check` and `.venv/bin/mypy` from the
repository root.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_ruff_finds_nothing():
    done = run("ruff", "check", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_changes_nothing():
    # `ruff format` (no --check) rewrites the files; this only lists those it would change.
    done = run("ruff", "format", "--check", "--no-cache")
    assert done.returncode == 0, "run `.venv/bin/ruff format`:\n" + done.stdout + done.stderr


def test_mypy_finds_nothing():
    # mypy keeps its cache in .mypy_cache (ignored by git): ~17 s cold, ~2 s after.
    done = run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr
