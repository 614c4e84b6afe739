"""`python -m integration.bench.bench_bfd [--runs N] [--reference-runs M]`: a dead cluster, with and without BFD.

What it measures: a whole cluster frozen (every process of its node's namespace
SIGSTOPped: speaker, ExaBGP, bfdd; no FIN, no BFD packet) → the tor's best path for the
VIP on the next cluster, from the instant the freeze began. With BFD and a 90 s hold
time, over N freezes at each of two profiles (50 ms x 3 and 100 ms x 3), split into the
router's BFD detection (its bfdd reports the session down) and what its bgpd takes after
that; beside them, the figure BFD replaces: the same freeze without BFD, which waits for
the hold time (measured with a 3 s hold time, M runs, and stated for 90 s). Prints one
table; exits 0 (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from integration.lab.cluster_lab import MultiClusterLab
from integration.lab.wait import wait_until

VIP = "203.0.113.9"
NODES = (("east-1", "east"), ("west-1", "west"))
PROFILES = (50, 100)  # ms: transmit = receive interval, detect multiplier 3


def profile(interval_ms: int) -> dict:
    return {"name": "fast", "receiveInterval": interval_ms, "transmitInterval": interval_ms, "detectMultiplier": 3}


@dataclass(frozen=True)
class Failover:
    best_path: float  # s from the freeze to the next cluster's best path
    bfd_down: Optional[float]  # s from the freeze to the router's bfdd reporting the session down


class BfdDownWatch:
    """The instant the router's bfdd first reports `address` not up (vty polls, 2 ms apart)."""

    def __init__(self, lab: MultiClusterLab, address: str) -> None:
        self.lab, self.address, self.down_at = lab, address, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.down_at is None:
            if self.lab.router.bfd_peers().get(self.address, {}).get("status") != "up":
                self.down_at = time.monotonic()
            time.sleep(0.002)

    def __enter__(self) -> "BfdDownWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def freezes(lab: MultiClusterLab, runs: int, bfd: bool) -> list[Failover]:
    lab.create_service("bench", VIP, "east,west")
    lab.wait_best_cluster(VIP, "east", timeout=30)
    address = lab.nodes["east-1"].address
    out = []
    for _ in range(runs):
        if bfd:
            wait_until(lambda: lab.router.bfd_peers().get(address, {}).get("status") == "up", 30, "BFD up")
        with BfdDownWatch(lab, address) if bfd else contextlib.nullcontext() as watch, lab.frozen("east-1") as freeze:
            best = lab.wait_best_cluster(VIP, "west", timeout=lab.hold_time * 2 + 10)
        down = watch.down_at if watch is not None else None
        out.append(Failover(best - freeze.started, None if down is None else down - freeze.started))
        # A fresh speaker for the next run: its BFD damping counts each freeze as a flap and
        # would hold BFD down from the second run on (as it should for a node that keeps
        # dying); each run here is a first incident.
        lab.restart_speaker("east-1")
        lab.wait_ready(60, ["east-1"])
        lab.wait_best_cluster(VIP, "east", timeout=60)
    return out


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {statistics.median(values) * 1000:4.0f} ms  max {max(values) * 1000:5.0f} ms"


def row(label: str, runs: list[Failover]) -> str:
    downs = [r.bfd_down for r in runs if r.bfd_down is not None]
    after = [r.best_path - r.bfd_down for r in runs if r.bfd_down is not None]
    return (f"{label:<34} {ms([r.best_path for r in runs]):<32} {ms(downs):<32} "
            f"{ms(after):<32} n={len(runs)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="freezes per BFD profile")
    parser.add_argument("--reference-runs", type=int, default=3, help="freezes without BFD (hold time 3 s)")
    parser.add_argument("--intervals", type=int, nargs="+", default=list(PROFILES),
                        help="BFD intervals (ms) to measure")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_bfd: needs root (network namespaces, FRR)", file=sys.stderr)
        return 2
    with_bfd: dict[int, list[Failover]] = {}
    for interval in args.intervals:
        print(f"with BFD {interval} ms x 3, hold time 90 s: {args.runs} freezes ...", flush=True)
        with MultiClusterLab(hold_time=90, bfd=profile(interval), nodes=NODES) as lab:
            with_bfd[interval] = freezes(lab, args.runs, bfd=True)
    hold3: list[Failover] = []
    if args.reference_runs:
        print(f"without BFD, hold time 3 s: {args.reference_runs} freezes ...", flush=True)
        with MultiClusterLab(hold_time=3, nodes=NODES) as lab:
            hold3 = freezes(lab, args.reference_runs, bfd=False)
    print()
    print("whole cluster frozen (hold time 90 s)")
    print(f"{'':<34} {'→ best path on the next cluster':<32} {'→ the router sees BFD down':<32} "
          f"{'BFD down → best path (bgpd)':<32}")
    for interval, runs in with_bfd.items():
        print(row(f"BFD {interval} ms x 3 (hold time 90 s)", runs))
    print(f"{'without BFD (the figure replaced)':<34} hold time: 90 s; in the lab with hold time 3 s: "
          f"{ms([r.best_path for r in hold3])} (n={len(hold3)})")
    if hold3:
        for interval, runs in with_bfd.items():
            p50 = statistics.median(r.best_path for r in runs)
            print(f"without BFD / with BFD {interval} ms x 3 (p50): hold time 3 s "
                  f"{statistics.median(r.best_path for r in hold3) / p50:.0f}x, hold time 90 s {90 / p50:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
