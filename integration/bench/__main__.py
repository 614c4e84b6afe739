"""`python -m integration.bench [--small | --medium] [--only NAME ...] [--out DIR] [--no-profile]`

The system benchmark suite of issue 6 (as root): event → router latency, cold start at
scale, failover, resync, footprint and churn, each beside its reference (raw ExaBGP,
BIRD) in the same run. Prints the results table and writes results.md, results.json,
latency.png and scale.png into DIR (default: integration/bench/results for the full
run, a new temp dir for --small/--medium). Exit status 1 if a correctness check failed
(a route missing, a resync that sent UPDATEs, a final RIB different from the desired
state); timings never fail the run.

Modes: full (default; ~6-8 min on 2 cores), --medium (no 50,000 cold start, 20 s of
churn), --small (the smoke run: 1,000 Services at most, a few seconds of churn, ~40 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

NAMES = ("event", "cold", "failover", "resync", "churn")   # resync also yields the footprint section
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="smoke run: small N, seconds of churn")
    size.add_argument("--medium", action="store_true",
                      help="full latency/failover, cold start up to 10,000, 20 s churn")
    parser.add_argument("--only", action="append", choices=NAMES + ("footprint",),
                        help="run only this benchmark (repeatable; footprint = resync)")
    parser.add_argument("--out", type=Path,
                        help="where to write the results (default: integration/bench/results for the full run, "
                             "a new temp dir for --small/--medium, so a smoke run never overwrites the "
                             "committed results)")
    parser.add_argument("--no-profile", action="store_true", help="do not attach py-spy to the daemon")
    parser.add_argument("--profile", action="store_true", help="attach py-spy even in --small")
    parser.add_argument("--profiles", type=Path, help="keep py-spy's raw profiles here (default: a temp dir)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("integration.bench: needs root (network namespaces, FRR, BIRD)", file=sys.stderr)
        return 2

    import dataclasses

    from integration.bench import report, scenarios
    from integration.bench.system import SystemLab, machine
    from integration.lab.bytecode import compile_checkout
    from integration.lab import netns

    mode_name = "small" if args.small else "medium" if args.medium else "full"
    mode = scenarios.MODES[mode_name]
    if args.no_profile or args.profile:
        mode = dataclasses.replace(mode, profile=args.profile and not args.no_profile)
    only = {("resync" if n == "footprint" else n) for n in (args.only or NAMES)}
    out = (args.out or (DEFAULT_OUT if mode_name == "full" else
                        Path(tempfile.mkdtemp(prefix=f"bgpspeaker-bench-{mode_name}-")))).resolve()
    scenarios.SETTLE_TIMEOUT[0] = mode.settle_timeout
    tmp = tempfile.TemporaryDirectory(prefix=f"bench-profiles-{os.getpid()}-")
    profile_dir = args.profiles.resolve() if args.profiles else Path(tmp.name)
    profile_dir.mkdir(parents=True, exist_ok=True)
    netns.install_sigterm_cleanup()
    if not compile_checkout():  # the daemon as its image runs it: compiled, not compiled at each start
        print("integration.bench: some of the checkout's code did not compile (see above): "
              "the daemon's cold start includes compiling it", file=sys.stderr)
    info = machine()
    print(f"bgpspeaker system benchmarks, mode {mode_name}: {info['nproc']} × {info['cpu']}, kernel {info['kernel']}",
          flush=True)
    started = time.monotonic()
    sections: list[scenarios.Section] = []
    failed: list[str] = []

    def run(name: str, fn, nodes=(("east-1", "east"),)) -> None:
        if name not in only:
            return
        t0 = time.monotonic()
        print(f"-- {name} ...", flush=True)
        try:
            with SystemLab(nodes=nodes) as lab:
                result = fn(lab, mode, profile_dir)
        except Exception:
            failed.append(name)
            traceback.print_exc()
            return
        results = result if isinstance(result, tuple) else (result,)
        for section in results:
            section.seconds = time.monotonic() - t0
            sections.append(section)
            for row in section.rows:
                print(f"   {row.measure}: {row.value}  [{row.reference}]  {row.ratio}", flush=True)
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)

    run("event", scenarios.event_latency)
    run("cold", scenarios.cold_start)
    run("failover", scenarios.failover, nodes=(("east-1", "east"), ("west-1", "west")))
    run("resync", scenarios.steady_and_resync)
    run("churn", scenarios.churn)
    seconds = time.monotonic() - started
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

    command = "make bench" if mode_name == "full" else f"python -m integration.bench --{mode_name}"
    text = report.write(sections, info, mode_name, seconds, out, command)
    print()
    print(report.table(sections))
    print(f"\nwritten: {out / 'results.md'} ({seconds / 60:.1f} min)")
    bad = [k for s in sections for k, ok in s.checks.items() if not ok]
    for name in failed:
        print(f"FAILED to run: {name}", file=sys.stderr)
    for k in bad:
        print(f"CHECK FAILED: {k}", file=sys.stderr)
    tmp.cleanup()
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
