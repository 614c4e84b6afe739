"""`python -m integration.bench.bench_bfd [--runs N] [--reference-runs M]`: a dead cluster, with and without BFD.

What it measures: a whole cluster frozen (every process of its node's namespace
SIGSTOPped: speaker, ExaBGP, bfdd; no FIN, no BFD packet) → the tor's best path for the
VIP on the next cluster. With BFD (the tor's bfdd and the speakers' at 100 ms x 3) and a
90 s hold time, over N freezes; beside it, the figure BFD replaces: the same freeze
without BFD, which waits for the hold time (measured with a 3 s hold time, M runs, and
stated for 90 s). Prints one table; exits 0 (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

from integration.lab.cluster_lab import MultiClusterLab
from integration.lab.wait import wait_until

VIP = "203.0.113.9"
NODES = (("east-1", "east"), ("west-1", "west"))
BFD = {"name": "fast", "receiveInterval": 100, "transmitInterval": 100, "detectMultiplier": 3}


def freezes(lab: MultiClusterLab, runs: int, bfd: bool) -> list[float]:
    lab.create_service("bench", VIP, "east,west")
    lab.wait_best_cluster(VIP, "east", timeout=30)
    address = lab.nodes["east-1"].address
    out = []
    for _ in range(runs):
        if bfd:
            wait_until(lambda: lab.router.bfd_peers().get(address, {}).get("status") == "up", 30, "BFD up")
        t0 = time.monotonic()
        pids = lab.signal_node("east-1", signal.SIGSTOP)
        try:
            out.append(lab.wait_best_cluster(VIP, "west", timeout=lab.hold_time * 2 + 10) - t0)
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        # A fresh speaker for the next run: its BFD damping counts each freeze as a flap and
        # would hold BFD down from the second run on (as it should for a node that keeps
        # dying); each run here is a first incident.
        lab.restart_speaker("east-1")
        lab.wait_ready(60, ["east-1"])
        lab.wait_best_cluster(VIP, "east", timeout=60)
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {statistics.median(values) * 1000:7.0f} ms  max {max(values) * 1000:7.0f} ms  (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--reference-runs", type=int, default=3)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_bfd: needs root (network namespaces, FRR)", file=sys.stderr)
        return 2
    print(f"with BFD 100 ms x 3, hold time 90 s: {args.runs} freezes ...", flush=True)
    with MultiClusterLab(hold_time=90, bfd=BFD, nodes=NODES) as lab:
        with_bfd = freezes(lab, args.runs, bfd=True)
    hold3: list[float] = []
    if args.reference_runs:
        print(f"without BFD, hold time 3 s: {args.reference_runs} freezes ...", flush=True)
        with MultiClusterLab(hold_time=3, nodes=NODES) as lab:
            hold3 = freezes(lab, args.reference_runs, bfd=False)
    print()
    print(f"{'whole cluster frozen → best path on the next cluster':<56} {'measured':<44} figure it replaces")
    print(f"{'BFD 100 ms x 3 (hold time 90 s)':<56} {fmt(with_bfd):<44} "
          f"hold time: 90 s (lab, hold time 3 s: {fmt(hold3)})")
    if with_bfd and hold3:
        print(f"\nwithout BFD / with BFD (p50, hold time 3 s): {statistics.median(hold3) / statistics.median(with_bfd):.0f}x;"
              f" at the default hold time 90 s: {90 / statistics.median(with_bfd):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
