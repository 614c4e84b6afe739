"""The system benchmark suite at small N, so it cannot rot (issue 6).

Runs `python -m integration.bench --small` exactly as `make bench-smoke` does, into a
temporary folder, and checks that it produced a sane table: every benchmark ran, every
row has a number, the plots exist, and the correctness checks held (every route reached
FRR, the resync sent no UPDATE, the final RIB after churn equals the desired state).
Never a timing: speed is what the table reports, not what this test asserts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from integration.lab import netns
from integration.lab.fixtures import _require_root

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"\d")


@pytest.mark.timeout(400)
def test_bench_smoke_produces_a_sane_table(tmp_path):
    _require_root()
    proc = subprocess.Popen([sys.executable, "-m", "integration.bench", "--small", "--out", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=380)
    except subprocess.TimeoutExpired:
        proc.terminate()  # its SIGTERM handler stops what it started and deletes its namespaces
        stdout, stderr = proc.communicate(timeout=60)
        raise AssertionError(f"suite did not finish in 380 s\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"suite failed rc={proc.returncode}\n{stdout[-4000:]}\n{stderr[-4000:]}"

    data = json.loads((tmp_path / "results.json").read_text())
    sections = {s["name"]: s for s in data["sections"]}
    assert set(sections) == {"event", "cold", "failover", "footprint", "resync", "churn"}
    for section in data["sections"]:
        assert section["rows"], f"{section['name']}: no rows"
        for row in section["rows"]:
            assert NUMBER.search(row["value"]) or row["value"] in ("yes",), f"no number in {row}"
            assert "nan" not in row["value"] and "n/a" not in row["value"], row
        for check, ok in section["checks"].items():
            assert ok, f"{section['name']}: {check}"

    # the correctness behind the numbers, named
    assert sections["resync"]["numbers"]["updates_frr"] == 0, "a resync of unchanged Services sent UPDATEs"
    assert sections["churn"]["checks"]["churn: FRR's final state equals the desired state"]
    assert sections["cold"]["checks"]["cold start 1000: all routes in FRR"]
    assert len(sections["event"]["samples"]["raw ExaBGP: announce → RIB"]) == 20
    assert all(v > 0 for v in sections["event"]["samples"]["daemon, 100 Services: ready → RIB"])
    assert data["machine"]["nproc"] and data["machine"]["kernel"]

    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") >= 15 and "| 6 churn |" in table and "| 2 cold start |" in table
    assert "| # | measurement | bgpspeaker |" in stdout  # the table is printed too
    for plot in ("latency.png", "scale.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    # everything the suite started is gone (its namespaces are named bgpb-<its pid>-...)
    assert [ns for ns in netns.list_netns("bgpb") if ns.startswith(f"bgpb-{proc.pid}-")] == []
