"""Benchmark: the daemon's CPU per Service on its cold-start path, stage by stage, in one process.

What a cold start costs the daemon before its first route, without the lab: the bench's
own Service and EndpointSlice objects as JSON list pages (500 a page, as the API sends
them) → decoded and parsed into views (the informer's work) → allocate → plan → the
driver's diff → the ExaBGP command lines. No HTTP, no threads, GC off (as the daemon
during its initial sync): the floor of the current code. docs/performance.md compares
it with the CPU the cold-start goal leaves per Service. Prints, never asserts; exits 1
if the plan does not hold one route per Service.

    .venv/bin/python integration/bench/bench_cold_path.py [--services 10000] [--repeat 3] [--profile]
        [--status] [--memory]

By default the path of a cluster that has imported its allocations (the daemon's, with
allocation records): the record ConfigMaps are parsed too, the allocation is made from
them (allocate_recorded, with the daemon's memo), and the record writer's first decision
(RecordUpdates) is made. `--status` takes the path before records (allocation from
Service status), the cost records are compared with. `--memory` prints, instead of
the CPU, what each stage's results keep (tracemalloc, bytes still allocated once the
stage is done, with its inputs and outputs alive as in the daemon).

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
import tracemalloc
from pathlib import Path
from typing import Callable, Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bgpspeaker import views  # noqa: E402
from bgpspeaker.allocator import RecordsMemo, RecordUpdates, allocate_snapshot  # noqa: E402
from bgpspeaker.config.load import load_config_text  # noqa: E402
from bgpspeaker.exabgp import commands  # noqa: E402
from bgpspeaker.kube.informer import ENDPOINT_SLICES, SERVICES, Resource  # noqa: E402
from bgpspeaker.kube.watcher import records_resource  # noqa: E402
from bgpspeaker.leader_writes import record_work  # noqa: E402
from bgpspeaker.records import LOCAL  # noqa: E402
from bgpspeaker.views import IMPORTED  # noqa: E402
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


def run(config, service_pages: list[bytes], slice_pages: list[bytes], record_pages: Optional[list[bytes]], n: int,
        measure: Callable[[], float] = time.process_time) -> dict[str, float]:
    """Each stage's cost by `measure` (CPU seconds, or bytes allocated and still held)."""
    seconds: dict[str, float] = {}
    # A cold start's caches are empty: a second run in this process must not find the first
    # run's addresses parsed (the fastest of three would then hide the parsing).
    forget_caches()
    clock = measure()
    kept = []  # every stage's results stay alive to the end, as in the daemon

    def lap(name: str, *results: object) -> None:
        nonlocal clock
        kept.extend(results)
        now = measure()
        seconds[name], clock = now - clock, now

    services = relist(SERVICES, service_pages)
    slices = relist(ENDPOINT_SLICES, slice_pages)
    lap("decode + parse", services, slices)
    records = None
    if record_pages is not None:
        parsed = relist(records_resource(LOCAL, system.RECORDS_NAMESPACE), record_pages)
        flat: dict = {}  # as the watcher: every block's records, by key
        for view in parsed.values():
            if view is not IMPORTED:
                flat.update(view)
        records = {LOCAL: flat}
        del parsed
        lap("records parse", records)
    node = views.node_from_dict(system.node_object(NODE))
    snapshot = Snapshot(services=services, endpoint_slices=slices, nodes={node.name: node}, records=records)
    memo = RecordsMemo()
    allocation = allocate_snapshot(config, snapshot, memo)
    lap("allocate", memo, allocation)
    result = plan(config, snapshot, NODE.name, allocation, memo=PlanMemo())
    lap("plan", result)
    batches = diff_indexed({route.key: route for route in result.routes}, {})
    peer = config.peers[0].address
    lines = [commands.announce_line([peer], batch.attributes, batch.prefixes) for batch in batches]
    lap("diff + lines")
    if record_pages is not None:
        updates = RecordUpdates()
        work = record_work(config, snapshot, allocation, updates)
        lap("record decision", updates, work)
        if work is not None:
            raise SystemExit(f"expected no record writes, got {work}")
    if len(result.routes) != n or sum(line.count("/32") for line in lines) != n:
        raise SystemExit(f"expected {n} routes, planned {len(result.routes)}")
    return seconds


def forget_caches() -> None:
    """Empty every functools cache of the daemon's modules (parsed addresses, ...)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("bgpspeaker."):
            for value in vars(module).values():
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()


def held_bytes() -> float:
    return float(tracemalloc.get_traced_memory()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is printed")
    parser.add_argument("--profile", action="store_true", help="cProfile one run, by own time")
    parser.add_argument("--status", action="store_true", help="allocate from Service status (before records)")
    parser.add_argument("--memory", action="store_true", help="bytes each stage keeps (tracemalloc), not CPU")
    args = parser.parse_args()
    n = args.services
    config = load_config_text(yaml.safe_dump(system.speaker_config(NODE)))
    service_pages = pages([system.service_object(i) for i in range(n)], "ServiceList")
    slice_pages = pages([system.slice_object(i, [NODE.name], True) for i in range(n)], "EndpointSliceList")
    record_pages = None
    if not args.status:
        record_pages = pages([system.import_marker_object()] + system.record_objects(range(n)),
                             "ConfigMapList")
    path = "status (before records)" if args.status else "records"
    gc.disable()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, config, service_pages, slice_pages, record_pages, n)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0
    if args.memory:
        tracemalloc.start()
        held = run(config, service_pages, slice_pages, record_pages, n, held_bytes)
        print(f"cold path of {n:,} Services, {path}: memory each stage keeps (tracemalloc):")
        for name, value in held.items():
            print(f"  {name:15} {value / 2**20:6.1f} MiB  {value / n:6.0f} B per Service")
        print(f"  {'total':15} {sum(held.values()) / 2**20:6.1f} MiB  {sum(held.values()) / n:6.0f} B per Service")
        return 0
    best = min((run(config, service_pages, slice_pages, record_pages, n) for _ in range(args.repeat)),
               key=lambda seconds: sum(seconds.values()))
    total = sum(best.values())
    print(f"cold path of {n:,} Services (each with its EndpointSlice), {path}, CPU, fastest of {args.repeat}:")
    for name, value in best.items():
        print(f"  {name:15} {value:6.3f} s  {value / n * 1e6:5.1f} µs per Service")
    print(f"  {'total':15} {total:6.3f} s  {total / n * 1e6:5.1f} µs per Service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
