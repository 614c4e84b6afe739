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
    cold_note = next(r["note"] for r in sections["cold"]["rows"] if "→ all routes in FRR" in r["measure"])
    assert re.search(r"cores busy \(daemon / ExaBGP / API server / other\): spawn → lists read \([\d.]+ s\) "
                     r"[\d.]+ / [\d.]+ / [\d.]+ / [\d.]+", cold_note), cold_note
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


def test_cpu_timeline_shares_the_busy_cores_by_process():
    """The cold start's "cores busy" figures: each process's CPU over the wall time between
    the samples around a phase, and the rest of the machine's as "other"."""
    from integration.bench.system import CpuTimeline
    timeline = CpuTimeline(lambda: {})
    timeline.samples = [(10.0, 100.0, {"daemon": 5.0}), (10.5, 100.9, {"daemon": 5.5, "ExaBGP": 0.1}),
                        (11.0, 101.8, {"daemon": 5.6, "ExaBGP": 0.5})]
    assert timeline.busy(10.0, 10.5) == pytest.approx({"daemon": 1.0, "ExaBGP": 0.2, "other": 0.6})
    assert timeline.busy(10.2, 10.7) == pytest.approx({"daemon": 0.6, "ExaBGP": 0.5, "other": 0.7})  # widened
    assert timeline.busy(10.5, 10.5) == {}


def test_cold_path_component_bench_runs():
    """bench_cold_path.py at small N: it runs and plans one route per Service (no lab needed)."""
    out = subprocess.run([sys.executable, "integration/bench/bench_cold_path.py", "--services", "300", "--repeat", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"total +[\d.]+ s +[\d.]+ µs per Service", out.stdout), out.stdout


@pytest.mark.timeout(180)
def test_window_component_bench_runs():
    """bench_window.py at small N: every (window, batch) pair fed all routes to FRR and was printed."""
    _require_root()
    out = subprocess.run([sys.executable, "integration/bench/bench_window.py", "--services", "300", "--rounds", "1",
                          "--pairs", "8:100,32:50"], cwd=REPO, capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"window +8 × +100 prefixes +[\d.]+ s +1\.00×", out.stdout) or \
        re.search(r"window +32 × +50 prefixes +[\d.]+ s +1\.00×", out.stdout), out.stdout
    assert len(re.findall(r"window +\d+ × +\d+ prefixes +[\d.]+ s", out.stdout)) == 2, out.stdout
