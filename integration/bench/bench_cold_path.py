"""Benchmark: the daemon's CPU per Service on its cold-start path, stage by stage, in one process.

What a cold start costs the daemon before its first route, without the lab: the bench's
own Service and EndpointSlice objects as JSON list pages (500 a page, as the API sends
them) → decoded and parsed into views (the informer's work) → allocate → plan → the
driver's diff → the ExaBGP command lines. No HTTP, no threads, GC off (as the daemon
during its initial sync): the floor of the current code. docs/performance.md compares
it with the CPU the cold-start goal leaves per Service. Prints, never asserts; exits 1
if the plan does not hold one route per Service.

    .venv/bin/python integration/bench/bench_cold_path.py [--services 10000] [--repeat 3] [--profile]

Timings on a shared machine vary by ±5 % from run to run, more than a small change
gains. To compare two versions of the code, count instructions instead: they are
deterministic with a fixed hash seed. Run the script under callgrind at two sizes; the
difference, divided by the difference in Services, is the cost per Service (the imports
and the one-off set-up cancel out). Building the input pages costs 217,000 instructions
per Service of that; the rest is the cold path, 542,000 at `18b69ad`.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python integration/bench/bench_cold_path.py --services 1000 --repeat 1   # then 3000
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bgpspeaker import views  # noqa: E402
from bgpspeaker.allocator import allocate  # noqa: E402
from bgpspeaker.config.load import load_config_text  # noqa: E402
from bgpspeaker.exabgp import commands  # noqa: E402
from bgpspeaker.kube.informer import ENDPOINT_SLICES, SERVICES, Resource  # noqa: E402
from bgpspeaker.model import Snapshot  # noqa: E402
from bgpspeaker.planner import PlanMemo, plan  # noqa: E402
from bgpspeaker.reconciler import diff_indexed  # noqa: E402
from integration.bench import system  # noqa: E402
from integration.lab.topology import Node  # noqa: E402

PAGE = 500
NODE = Node("east-1", "east", "bench", 1, "10.99.1.2", "10.99.1.1", None, None, system.NODE_ASN)


def pages(objects: list[dict], kind: str) -> list[bytes]:
    return [json.dumps({"kind": kind, "metadata": {"resourceVersion": "1"}, "items": objects[i:i + PAGE]}).encode()
            for i in range(0, len(objects), PAGE)]


def relist(resource: Resource, raw_pages: list[bytes]) -> dict:
    """What Informer._relist does with each page of a first list (no cache to compare with)."""
    fresh = {}
    for raw in raw_pages:
        for obj in json.loads(raw).get("items") or ():
            fresh[resource.key(obj)] = resource.parse(obj)
    return fresh


def run(config, service_pages: list[bytes], slice_pages: list[bytes], n: int) -> dict[str, float]:
    seconds: dict[str, float] = {}
    clock = time.process_time()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.process_time()
        seconds[name], clock = now - clock, now

    services = relist(SERVICES, service_pages)
    slices = relist(ENDPOINT_SLICES, slice_pages)
    lap("decode + parse")
    node = views.node_from_dict(system.node_object(NODE))
    snapshot = Snapshot(services=services, endpoint_slices=slices, nodes={node.name: node})
    allocation = allocate(config, snapshot.services.values())
    lap("allocate")
    result = plan(config, snapshot, NODE.name, allocation, memo=PlanMemo())
    lap("plan")
    batches = diff_indexed({route.key: route for route in result.routes}, {})
    peer = config.peers[0].address
    lines = [commands.announce_line([peer], batch.attributes, batch.prefixes) for batch in batches]
    lap("diff + lines")
    if len(result.routes) != n or sum(line.count("/32") for line in lines) != n:
        raise SystemExit(f"expected {n} routes, planned {len(result.routes)}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is printed")
    parser.add_argument("--profile", action="store_true", help="cProfile one run, by own time")
    args = parser.parse_args()
    n = args.services
    config = load_config_text(yaml.safe_dump(system.speaker_config(NODE)))
    service_pages = pages([system.service_object(i) for i in range(n)], "ServiceList")
    slice_pages = pages([system.slice_object(i, [NODE.name], True) for i in range(n)], "EndpointSliceList")
    gc.disable()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, config, service_pages, slice_pages, n)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0
    best = min((run(config, service_pages, slice_pages, n) for _ in range(args.repeat)),
               key=lambda seconds: sum(seconds.values()))
    total = sum(best.values())
    print(f"cold path of {n:,} Services (each with its EndpointSlice), CPU, fastest of {args.repeat}:")
    for name, value in best.items():
        print(f"  {name:15} {value:6.3f} s  {value / n * 1e6:5.1f} µs per Service")
    print(f"  {'total':15} {total:6.3f} s  {total / n * 1e6:5.1f} µs per Service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
