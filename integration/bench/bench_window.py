"""Benchmark: how to feed ExaBGP, the window of commands in flight × the prefixes per command.

The evidence behind the driver's `WINDOW` and `BATCH_SIZE` and the suite's raw reference
(the best feeding): a bare ExaBGP on the suite's lab, fed N /32s by the suite's own raw
feeder at each (window, batch) pair, spawn → all routes in FRR's RIB. The pairs run
interleaved, `--rounds` times, and the medians are printed side by side (single runs vary
by ±5 % on a shared machine). Prints, never asserts. Run as root:

    .venv/bin/python integration/bench/bench_window.py [--services 10000] [--rounds 3] [--pairs 4:100,8:100,32:100]

Why a shallow window wins: ExaBGP runs 50 NLRI steps per reactor loop, sleeps between
loops and scans its whole command queue each loop (docs/reference/exabgp-api.md §7), so queued work
slows the work in front of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from integration.bench import scenarios, system  # noqa: E402

DEFAULT_PAIRS = "4:100,8:100,16:50,32:100,64:100,8:200"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="WINDOW:BATCH,... (default %(default)s)")
    args = parser.parse_args()
    pairs = [tuple(int(x) for x in pair.split(":")) for pair in args.pairs.split(",")]
    totals: dict[tuple[int, int], list[float]] = {pair: [] for pair in pairs}
    with system.SystemLab(nodes=(("east-1", "east"),)) as lab:
        scenarios._feed_raw(lab, min(args.services, 1000))  # warm-up: page cache, FRR's first session
        for _ in range(args.rounds):
            for pair in pairs:
                # the raw feeder reads these module globals at each start
                system.WINDOW, system.BATCH = pair
                totals[pair].append(scenarios._feed_raw(lab, args.services)["total"])
    best = min(statistics.median(v) for v in totals.values())
    print(f"raw ExaBGP, {args.services:,} routes, spawn → all in FRR's RIB, median of {args.rounds}:")
    for (window, batch), values in totals.items():
        median = statistics.median(values)
        print(f"  window {window:3} × {batch:4} prefixes  {median:6.2f} s  {median / best:5.2f}×  "
              f"(runs {', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
