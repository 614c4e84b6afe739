"""The multi-cluster lab topology: one top-of-rack router, nodes of several clusters, a client.

Why: the end-to-end tests, the failover tests and the demo all need the same picture
(docs/reference/lab-notes.md, "Topology that worked"), described once by a small value and brought up and
torn down by one call:

    east-1    10.99.1.2 --\\
    east-2    10.99.2.2 ---+-- tor (10.99.{1..4,100}.1, forwarding; FRR+zebra or BIRD)
    west-1    10.99.3.2 ---+        -- client 10.99.100.2
    central-1 10.99.4.2 --/

Each node has its own /24 (and fd00:99:N::/64) to the tor and a default route via the
tor, so a VIP on a node's `lo` is reachable from the client as soon as the tor has a
route to it (BGP from the speaker, or a static route in tests). The tor's BGP
neighbors are the node addresses, with one ASN for all clusters or one per cluster.
Processes run "as node X" with `topo.node("east-1").popen(argv)`.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import http, netns
from .bird import BirdConfig, BirdRouter
from .frr import BfdProfile, FrrConfig, FrrRouter, Neighbor
from .wait import wait_until

DEFAULT_NODES = (("east-1", "east"), ("east-2", "east"), ("west-1", "west"), ("central-1", "central"))


@dataclass(frozen=True)
class TopologySpec:
    """What to build. `cluster_asns` overrides `node_asn` per cluster, e.g.
    `(("east", 64512), ("west", 64513))`; clusters not listed use `node_asn`."""
    nodes: tuple[tuple[str, str], ...] = DEFAULT_NODES  # (node name, cluster)
    tor_asn: int = 64500
    node_asn: int = 64512
    cluster_asns: tuple[tuple[str, int], ...] = ()
    always_compare_med: bool = False
    hold_time: int = 3
    router: str = "frr"                  # "frr" (with zebra) | "bird" (with kernel export) | "none"
    graceful_restart: bool | str = False  # see FrrConfig.graceful_restart
    maximum_paths: int | None = None     # FRR ECMP; None = FRR default
    password: str | None = None          # TCP MD5 on every tor neighbor
    passive: bool = False                # tor waits for the nodes to connect
    node_port: int | None = None         # remote port of the speakers (default 179)
    ipv6: bool = True                    # also fd00:99:N::/64 on every link
    ipv6_neighbors: bool = False         # the tor also peers with every node's IPv6 address
    subnet_base: str = "10.99"           # 10.99.N.0/24 per node, 10.99.100.0/24 client
    bfd: BfdProfile | None = None        # FRR: bfdd on the tor, `neighbor X bfd profile P` for every node
    bfd_check_control_plane_failure: bool = False
    dampening: str | None = None         # FRR: `bgp dampening ...` (None: off)

    def asn_of(self, cluster: str) -> int:
        return dict(self.cluster_asns).get(cluster, self.node_asn)

    @classmethod
    def one_asn_per_cluster(cls, first: int = 64512, **kw) -> "TopologySpec":
        """Each cluster its own ASN (64512, 64513, ... in order of first appearance)."""
        nodes = kw.get("nodes", DEFAULT_NODES)
        clusters = list(dict.fromkeys(c for _, c in nodes))
        return cls(cluster_asns=tuple((c, first + i) for i, c in enumerate(clusters)), **kw)


@dataclass
class Node:
    """One node: its namespace, addresses, and the ASN its speaker should use."""
    name: str
    cluster: str
    ns: str
    index: int
    address: str          # 10.99.N.2
    tor_address: str      # 10.99.N.1, the BGP neighbor of this node's speaker
    address6: str | None
    tor_address6: str | None
    asn: int
    iface: str = "eth0"

    def popen(self, argv, **kw) -> subprocess.Popen:
        """Start a process as this node (inside its namespace); stopped by PID at teardown."""
        return netns.popen(self.ns, argv, **kw)

    def run(self, argv, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
        return netns.run(self.ns, argv, check=check, timeout=timeout)

    def add_vip(self, vip: str) -> None:
        netns.add_lo_addr(self.ns, vip)

    def del_vip(self, vip: str) -> None:
        netns.del_lo_addr(self.ns, vip)

    def serve_http(self, body: str | None = None, port: int = 80) -> subprocess.Popen:
        """HTTP responder answering `cluster/node` on every address of the node."""
        return http.serve(self.ns, body or f"{self.cluster}/{self.name}", port=port)

    def link(self, up: bool) -> None:
        """Pull (or plug back) this node's cable. Not silent: the tor's veth loses carrier and
        FRR drops the session at once (fast-external-failover; ~0.6 s measured, hold time 3 s).

        The kernel deletes the routes through a link that goes down, and does not bring
        back the default route with the link (measured: the VIP then stopped answering):
        plugging back restores them."""
        netns.set_link(self.ns, self.iface, up)
        if up:
            # right after `link up` the IPv6 connected route may not be back yet ("No route
            # to host" on `route replace default`, measured): retry until it is
            wait_until(lambda: self._default_routes() or True, 3, f"default routes of {self.name}")

    def _default_routes(self) -> None:
        netns.add_route(self.ns, "default", via=self.tor_address)
        if self.address6:
            netns.add_route(self.ns, "default", via=self.tor_address6)

    def isolate(self, on: bool) -> None:
        """A silent failure: the node stops sending IP (blackhole default route and tor
        address) while its link stays up, so the tor only notices when the hold time expires
        (~2.4 s with hold time 3, measured). `isolate(False)` restores the default routes."""
        if on:
            netns.ip(self.ns, "route", "replace", "blackhole", f"{self.tor_address}/32")
            netns.ip(self.ns, "route", "replace", "blackhole", "default")
            if self.address6:
                netns.ip(self.ns, "-6", "route", "replace", "blackhole", f"{self.tor_address6}/128")
                netns.ip(self.ns, "-6", "route", "replace", "blackhole", "default")
        else:
            netns.del_route(self.ns, f"{self.tor_address}/32")
            if self.address6:
                netns.del_route(self.ns, f"{self.tor_address6}/128")
            self._default_routes()

    def describe(self) -> dict:
        return {"name": self.name, "cluster": self.cluster, "ns": self.ns, "address": self.address,
                "torAddress": self.tor_address, "address6": self.address6,
                "torAddress6": self.tor_address6, "asn": self.asn}


class Topology:
    """Builds a TopologySpec. `up()` returns self; `down()` removes everything.

        with Topology(TopologySpec(always_compare_med=True)).up() as topo:
            east1 = topo.node("east-1")
            proc = east1.popen(["exabgp", conf])
            topo.router.best_path("203.0.113.5/32")
            topo.probe("203.0.113.5")          # -> "east/east-1" or None
    """

    def __init__(self, spec: TopologySpec = TopologySpec(), lab: netns.Lab | None = None):
        self.spec = spec
        self._own_lab = lab is None
        self.lab = lab or netns.Lab()
        self.tor_ns = ""
        self.client_ns = ""
        self.client_address = ""
        self.client_address6: str | None = None
        self.tor_client_address = ""
        self.nodes: dict[str, Node] = {}
        self.router: FrrRouter | BirdRouter | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ build

    def up(self) -> "Topology":
        t0 = time.monotonic()
        try:
            self._build_network()
            self.timings["network"] = time.monotonic() - t0
            if self.spec.router != "none":
                t1 = time.monotonic()
                self.router = self._make_router().start()
                self.timings["router"] = time.monotonic() - t1
        except BaseException:
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def _build_network(self) -> None:
        s = self.spec
        self.tor_ns = self.lab.netns("tor")
        self.client_ns = self.lab.netns("client")
        netns.set_forwarding(self.tor_ns, True)
        for i, (name, cluster) in enumerate(s.nodes, start=1):
            ns = self.lab.netns(name)
            tor_if = f"n{i}-{name}"[:15]
            self.lab.veth(self.tor_ns, tor_if, ns, "eth0")
            node = Node(name=name, cluster=cluster, ns=ns, index=i,
                        address=f"{s.subnet_base}.{i}.2", tor_address=f"{s.subnet_base}.{i}.1",
                        address6=f"fd00:99:{i}::2" if s.ipv6 else None,
                        tor_address6=f"fd00:99:{i}::1" if s.ipv6 else None,
                        asn=s.asn_of(cluster))
            netns.add_addr(self.tor_ns, tor_if, f"{node.tor_address}/24")
            netns.add_addr(ns, "eth0", f"{node.address}/24")
            netns.add_route(ns, "default", via=node.tor_address)
            if s.ipv6:
                netns.add_addr(self.tor_ns, tor_if, f"{node.tor_address6}/64")
                netns.add_addr(ns, "eth0", f"{node.address6}/64")
                netns.add_route(ns, "default", via=node.tor_address6)
            self.nodes[name] = node
        self.lab.veth(self.tor_ns, "client", self.client_ns, "eth0")
        self.tor_client_address = f"{s.subnet_base}.100.1"
        self.client_address = f"{s.subnet_base}.100.2"
        netns.add_addr(self.tor_ns, "client", f"{self.tor_client_address}/24")
        netns.add_addr(self.client_ns, "eth0", f"{self.client_address}/24")
        netns.add_route(self.client_ns, "default", via=self.tor_client_address)
        if s.ipv6:
            self.client_address6 = "fd00:99:100::2"
            netns.add_addr(self.tor_ns, "client", "fd00:99:100::1/64")
            netns.add_addr(self.client_ns, "eth0", "fd00:99:100::2/64")
            netns.add_route(self.client_ns, "default", via="fd00:99:100::1")

    def _make_router(self):
        s = self.spec
        bfd = dict(bfd_profile=s.bfd.name, bfd_check_control_plane_failure=s.bfd_check_control_plane_failure) \
            if s.bfd is not None else {}
        neighbors = tuple(Neighbor(n.address, n.asn, password=s.password, passive=s.passive,
                                   port=s.node_port, description=n.name, **bfd)
                          for n in self.nodes.values())
        if s.ipv6 and s.ipv6_neighbors:
            neighbors += tuple(Neighbor(n.address6, n.asn, password=s.password, passive=s.passive,
                                        port=s.node_port, description=f"{n.name}-v6")
                               for n in self.nodes.values())
        router_id = f"{s.subnet_base}.100.1"
        if s.router == "frr":
            cfg = FrrConfig(asn=s.tor_asn, router_id=router_id, neighbors=neighbors,
                            always_compare_med=s.always_compare_med, graceful_restart=s.graceful_restart,
                            hold_time=s.hold_time, maximum_paths=s.maximum_paths, hostname="tor",
                            bfd_profiles=(s.bfd,) if s.bfd is not None else (), dampening=s.dampening)
            return FrrRouter(self.tor_ns, cfg, with_zebra=True, lab=self.lab)
        if s.router == "bird":
            cfg = BirdConfig(asn=s.tor_asn, router_id=router_id, neighbors=neighbors,
                             always_compare_med=s.always_compare_med,
                             graceful_restart=bool(s.graceful_restart), hold_time=s.hold_time,
                             with_kernel=True)
            return BirdRouter(self.tor_ns, cfg, lab=self.lab)
        raise ValueError(f"TopologySpec.router: {s.router!r} is not frr, bird or none")

    def down(self) -> None:
        """Stop the router and every process, delete every namespace (also after errors)."""
        t0 = time.monotonic()
        if self._own_lab:
            self.lab.close()
        else:
            if self.router is not None:
                self.router.close()
            for ns in [self.tor_ns, self.client_ns] + [n.ns for n in self.nodes.values()]:
                if ns:
                    netns.delete_netns(ns)
                    if ns in self.lab.namespaces:
                        self.lab.namespaces.remove(ns)
        self.router = None
        self.timings["down"] = time.monotonic() - t0

    def __enter__(self) -> "Topology":
        return self if self.tor_ns else self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ------------------------------------------------------------------ use

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"{name}: no such node (have {sorted(self.nodes)})") from None

    def cluster(self, cluster: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.cluster == cluster]

    def node_by_address(self, address: str) -> Node | None:
        return next((n for n in self.nodes.values() if address in (n.address, n.address6)), None)

    def probe(self, vip: str, port: int = 80, timeout: float = 0.3) -> str | None:
        """GET http://VIP:port/ from the client: the answering `cluster/node`, or None."""
        return http.probe(self.client_ns, http.url(vip, port), timeout=timeout)

    def static_route(self, vip: str, node: str | None) -> None:
        """Route `vip` at the tor to `node` (kernel static route), or remove it (node=None).
        For tests of the data path without BGP."""
        prefix = str(ipaddress.ip_interface(vip).network) if "/" in vip else \
            f"{vip}/{128 if ':' in vip else 32}"
        if node is None:
            netns.del_route(self.tor_ns, prefix)
        else:
            n = self.node(node)
            netns.add_route(self.tor_ns, prefix, via=n.address6 if ":" in vip else n.address)

    def describe(self) -> dict:
        return {"tor": {"ns": self.tor_ns, "asn": self.spec.tor_asn, "router": self.spec.router,
                        "routerID": f"{self.spec.subnet_base}.100.1"},
                "client": {"ns": self.client_ns, "address": self.client_address,
                           "address6": self.client_address6},
                "nodes": [n.describe() for n in self.nodes.values()],
                "timings": self.timings}


def main(argv: list[str] | None = None) -> None:
    """`python -m integration.lab.topology [--router frr|bird] [--per-cluster-asn]
    [--always-compare-med]`: bring the topology up, print it as JSON, keep it until
    SIGINT/SIGTERM, then tear it down (for demos and manual poking)."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--router", default="frr", choices=["frr", "bird", "none"])
    ap.add_argument("--per-cluster-asn", action="store_true")
    ap.add_argument("--always-compare-med", action="store_true")
    ap.add_argument("--hold-time", type=int, default=3)
    args = ap.parse_args(argv)
    kw = dict(router=args.router, always_compare_med=args.always_compare_med, hold_time=args.hold_time)
    spec = TopologySpec.one_asn_per_cluster(**kw) if args.per_cluster_asn else TopologySpec(**kw)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with Topology(spec).up() as topo:
        print(json.dumps(topo.describe(), indent=2), flush=True)
        try:
            while not stop:
                signal.pause() if hasattr(signal, "pause") else time.sleep(1)
        except KeyboardInterrupt:
            pass
    print("down", file=sys.stderr)


if __name__ == "__main__":
    main()
