"""Measure the lab's own costs: `python -m integration.lab.measure [--rounds N]`.

Why: tests must not assert on time (CONTRIBUTING), but the people who build on the
lab need to know what it costs (how long a topology takes to come up, how cheap a RIB
query is) to size their waits and their suites. Printed as medians, with the ratios
that matter measured side by side in the same run (vty socket vs vtysh, BIRD control
socket vs birdc): on 2 shared cores, compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from . import http, netns
from .bird import BirdConfig, BirdRouter
from .frr import FrrConfig, FrrRouter, Neighbor, Originate
from .topology import Topology, TopologySpec
from .wait import wait_until


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:8.2f} ms (min {min(samples) * 1000:.2f}, n={len(samples)})"


def _time(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    n = args.rounds
    rows: list[tuple[str, str]] = []

    # namespaces
    def ns_cycle():
        with netns.Lab() as lab:
            lab.netns("m")
    rows.append(("namespace create+delete", _median_ms(_time(ns_cycle, n * 4))))

    # topology up / down (FRR + zebra on the tor; and BIRD)
    for router in ("frr", "bird", "none"):
        ups, downs = [], []
        for _ in range(n):
            topo = Topology(TopologySpec(router=router)).up()
            ups.append(topo.timings["up"])
            topo.down()
            downs.append(topo.timings["down"])
        rows.append((f"topology up   (tor router={router})", _median_ms(ups)))
        rows.append((f"topology down (tor router={router})", _median_ms(downs)))

    with netns.Lab() as lab:
        a, b = lab.netns("a"), lab.netns("b")
        lab.veth(a, "eth0", b, "eth0")
        netns.add_addr(a, "eth0", "10.1.1.1/24")
        netns.add_addr(b, "eth0", "10.1.1.2/24")
        # FRR start: bgpd alone, and zebra + bgpd
        for zebra in (False, True):
            starts = []
            for _ in range(n):
                r = FrrRouter(a, FrrConfig(asn=64500, router_id="10.1.1.1"), with_zebra=zebra)
                r.start()
                starts.append(r.start_seconds)
                r.close()
            rows.append((f"FRR start ({'zebra+bgpd' if zebra else 'bgpd -Z'}, until vty answers)", _median_ms(starts)))
        starts = []
        for _ in range(n):
            r = BirdRouter(a, BirdConfig(asn=64500, router_id="10.1.1.1"))
            r.start()
            starts.append(r.start_seconds)
            r.close()
        rows.append(("BIRD start (until 'Daemon is up')", _median_ms(starts)))

        # sessions and queries
        tor = FrrRouter(a, FrrConfig(asn=64500, router_id="10.1.1.1", hold_time=3,
                                     neighbors=(Neighbor("10.1.1.2", 64512),)), with_zebra=True, lab=lab)
        node = FrrRouter(b, FrrConfig(asn=64512, router_id="10.1.1.2", hold_time=3,
                                      neighbors=(Neighbor("10.1.1.1", 64500),),
                                      originate=tuple(Originate(f"203.0.113.{i}/32", med=100,
                                                                communities=("64512:100",))
                                                      for i in range(1, 11))), lab=lab)
        t = time.perf_counter()
        tor.start()
        node.start()
        wait_until(lambda: tor.established(), 20, "FRR-FRR session")
        rows.append(("FRR-FRR session Established (both started)", _median_ms([time.perf_counter() - t])))
        wait_until(lambda: len(tor.prefixes()) == 10, 20, "10 routes")
        rows.append(("FRR-FRR 10 routes in the RIB (coalesce-time 0)", _median_ms([time.perf_counter() - t])))
        rows.append(("vty: show bgp summary json", _median_ms(_time(lambda: tor.show_json("show bgp summary"), 200))))
        rows.append(("vty: best_path(prefix)", _median_ms(_time(lambda: tor.best_path("203.0.113.1/32"), 200))))
        rows.append(("vty: routes() with 10 prefixes", _median_ms(_time(tor.routes, 100))))
        rows.append(("vty: neighbors()", _median_ms(_time(tor.neighbors, 100))))
        vtysh = ["vtysh", "--vty_socket", tor.dir, "-d", "bgpd", "-c", "show bgp summary json"]
        rows.append(("vtysh spawn: show bgp summary json",
                     _median_ms(_time(lambda: subprocess.run(vtysh, capture_output=True, check=True), 20))))
        rows.append(("fib_routes() (ip -j route)", _median_ms(_time(tor.fib_routes, 50))))

        bird = BirdRouter(b, BirdConfig(asn=64512, router_id="10.1.1.2"), lab=lab).start()
        rows.append(("BIRD control socket: show status", _median_ms(_time(lambda: bird.command("show status"), 200))))
        birdc = ["birdc", "-s", bird.sock_path, "show", "status"]
        rows.append(("birdc spawn: show status",
                     _median_ms(_time(lambda: subprocess.run(birdc, capture_output=True, check=True), 20))))

        netns.add_lo_addr(b, "192.0.2.1")
        netns.add_route(a, "192.0.2.1/32", via="10.1.1.2")
        t = time.perf_counter()
        http.serve(b, "east/east-1", lab=lab)
        rows.append(("http.serve() until listening", _median_ms([time.perf_counter() - t])))
        rows.append(("http.probe() answered", _median_ms(_time(lambda: http.probe(a, "192.0.2.1"), 30))))
        rows.append(("netns.run(ns, ['true'])", _median_ms(_time(lambda: netns.run(a, ["true"]), 30))))

    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
