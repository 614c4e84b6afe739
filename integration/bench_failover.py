"""`python -m integration.bench_failover [--runs N]`: failover time, side by side.

What it measures, for each top-of-rack router (FRR with zebra, then BIRD with kernel
export), in the same multi-cluster lab: the time from the EndpointSlice write at east's
emulated API (east's endpoints not ready / ready again) to the router's best path for
the VIP coming from the next cluster; and, from the speakers' own histogram, how much
of it is the speaker (Kubernetes event received → ExaBGP acknowledged the update).

Why side by side: absolute milliseconds on 2 shared cores mean little; the split between
the speaker and the router, and the ratio between two routers measured in one run, do.
Prints a table; exits 0 (no thresholds: this is a measurement, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys

from integration.lab.cluster_lab import MultiClusterLab
from integration.lab.wait import WaitTimeout, wait_until

VIP = "203.0.113.9"


def measure(router: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"away": [], "back": [], "speaker": []}
    with MultiClusterLab(router=router) as lab:
        lab.create_service("bench", VIP, "east,west,central")
        lab.wait_best_cluster(VIP, "east", timeout=20)
        for _ in range(runs):
            before = [(lab.metric(n, "bgpspeaker_event_to_ack_seconds_sum") or 0.0,
                       lab.metric(n, "bgpspeaker_event_to_ack_seconds_count") or 0.0) for n in ("east-1", "east-2")]
            t0 = lab.set_cluster_ready("bench", "east", False)
            out["away"].append(lab.wait_best_cluster(VIP, "west", timeout=10) - t0)
            t0 = lab.set_cluster_ready("bench", "east", True)
            out["back"].append(lab.wait_best_cluster(VIP, "east", timeout=10) - t0)
            for n, (_, c0) in zip(("east-1", "east-2"), before):
                # the histogram is observed just after the ack: wait for both changes to land
                with contextlib.suppress(WaitTimeout):
                    wait_until(lambda: (lab.metric(n, "bgpspeaker_event_to_ack_seconds_count") or 0) >= c0 + 2, 2)
            for n, (s0, c0) in zip(("east-1", "east-2"), before):
                s1 = lab.metric(n, "bgpspeaker_event_to_ack_seconds_sum") or 0.0
                c1 = lab.metric(n, "bgpspeaker_event_to_ack_seconds_count") or 0.0
                if c1 > c0:
                    out["speaker"].append((s1 - s0) / (c1 - c0))
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"p50 {statistics.median(values) * 1000:6.1f} ms  max {max(values) * 1000:6.1f} ms  (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--routers", default="frr,bird")
    args = ap.parse_args(argv)
    results = {}
    for router in args.routers.split(","):
        print(f"measuring with {router} as the tor ({args.runs} failovers and failbacks)...", flush=True)
        results[router] = measure(router, args.runs)
    print()
    print(f"{'router':<6} {'east→west (API write → best path)':<42} {'west→east':<42} speaker share (event→ack)")
    for router, r in results.items():
        print(f"{router:<6} {fmt(r['away']):<42} {fmt(r['back']):<42} {fmt(r['speaker'])}")
    if {"frr", "bird"} <= results.keys() and results["bird"]["away"]:
        ratio = statistics.median(results["frr"]["away"]) / statistics.median(results["bird"]["away"])
        print(f"\nFRR/BIRD failover time ratio (p50): {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
