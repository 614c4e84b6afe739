"""The multi-cluster lab: one top-of-rack FRR router, three clusters of `bgpspeaker run`
processes, one emulated Kubernetes API per cluster, and a client that sends real HTTP.

    tor (FRR bgpd + zebra, AS 64500, forwarding)
     ├─ 10.99.1.0/24 ─ east-1     ┐ cluster east   (API: emulator #1)
     ├─ 10.99.2.0/24 ─ east-2     ┘
     ├─ 10.99.3.0/24 ─ west-1       cluster west   (API: emulator #2)
     ├─ 10.99.4.0/24 ─ central-1    cluster central (API: emulator #3)
     └─ 10.99.100.0/24 ─ client

Why it is built this way:
- The namespaces, links and the FRR router come from `topology.Topology` (the lab's
  shared picture); this module adds what makes them clusters: APIs, speakers, Services.
- Each speaker runs exactly as an operator runs it (`python -m bgpspeaker run --config
  --node-name --kubeconfig --run-dir`), in its node's namespace, with its ExaBGP child;
  the tests judge it only from outside: the router's RIB/best path, real HTTP answers,
  and the daemon's HTTP API.
- The emulators run in this process (root namespace, random ports: never a fixed port
  in the root namespace); each node reaches its cluster's API at 127.0.0.1:6443 inside
  its own namespace through a relay (nsforward), and the test reaches each daemon's
  127.0.0.1:7472 through a reverse relay. An API outage (emulator hook) therefore looks
  from the node exactly like an apiserver that went away.
- Every VIP is on `lo` of every node (what kube-proxy does; the kernel has no `dummy`
  links) and an HTTP responder on every node answers "<cluster>/<node>": whichever
  node the router picks answers, and the answer says which cluster is serving.
- Everything started here is stopped by PID and every namespace deleted on `close()`,
  also when a test failed (the netns atexit hook is the safety net).

Use:

    with MultiClusterLab() as lab:                       # ~3-5 s; everything ready
        lab.create_service("web", "203.0.113.5", "east,west,central")
        lab.wait_best_cluster("203.0.113.5", "east")     # the router's own best path
        lab.curl_from_client("203.0.113.5")              # -> "east/east-1"
        t0 = lab.set_cluster_ready("web", "east", False) # EndpointSlice written in east's API
        lab.wait_best_cluster("203.0.113.5", "west") - t0  # failover time

Trade-off: responders and probes are threads of the test process (sockets created in
the node/client namespaces), not processes: a probe every 20 ms costs no fork, and the
speakers under test are the only real processes besides FRR.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Optional

import yaml

from . import netns, nsforward
from .frr import BfdProfile, FrrRouter, Path
from .topology import Node, Topology, TopologySpec
from .wait import wait_until

ROUTER_ASN = 64500
DEFAULT_ASNS = {"east": 64512, "west": 64512, "central": 64512}
DEFAULT_NODES = (("east-1", "east"), ("east-2", "east"), ("west-1", "west"), ("central-1", "central"))
POOL = "203.0.113.0/28"
API_PORT_IN_NODE = 6443
STORE_PORT_IN_NODE = 6444  # the record store's API (shared_store=True), inside every node
RECORDS_NAMESPACE = "bgpspeaker-records"
METRICS_PORT_IN_NODE = 7472
HTTP_PORT = 80
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


MEASUREMENTS: list[tuple[str, list[float]]] = []   # printed in pytest's terminal summary (conftest)


def record_measurement(name: str, values: Iterable[float]) -> None:
    MEASUREMENTS.append((name, list(values)))


def summarize(values: list[float]) -> str:
    """"n=10 p50=120ms p90=... max=... min=..." (seconds in, milliseconds out)."""
    if not values:
        return "n=0"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return (f"n={len(values)} p50={statistics.median(values) * 1000:.0f}ms "
            f"p90={p90 * 1000:.0f}ms max={max(values) * 1000:.0f}ms min={min(values) * 1000:.0f}ms")


@dataclass
class Speaker:
    """One `bgpspeaker run` process and everything about it."""
    node: Node
    ns: str
    dir: str
    config_path: str
    kubeconfig: str
    log_path: str
    api: nsforward.Forwarder            # root 127.0.0.1:<port> -> node 127.0.0.1:7472
    overrides: dict = field(default_factory=dict)
    proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass(frozen=True)
class Freeze:
    """Nodes frozen by `MultiClusterLab.frozen`: when the freeze began, and what was stopped."""
    started: float
    pids: tuple[int, ...]


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass(frozen=True)
class Answer:
    """One HTTP request from the client to a VIP: `who` is "<cluster>/<node>" or None."""
    at: float
    who: Optional[str]
    error: Optional[str] = None

    @property
    def cluster(self) -> Optional[str]:
        return self.who.split("/")[0] if self.who else None


# --------------------------------------------------------------------------- speaker config

def tier_table(asn: int, prepends: tuple[int, int, int] = (0, 1, 2)) -> dict:
    return {
        "primary": {"med": 100, "localPref": 300, "asPathPrepend": prepends[0], "communities": [f"{asn}:100"]},
        "secondary": {"med": 200, "localPref": 200, "asPathPrepend": prepends[1], "communities": [f"{asn}:200"]},
        "tertiary": {"med": 300, "localPref": 100, "asPathPrepend": prepends[2], "communities": [f"{asn}:300"]},
    }


def speaker_config(node: Node, asn: int, *, hold_time: int = 3, graceful_restart: int = 0,
                   shutdown: str = "withdraw", drain_seconds: float = 3,
                   prepends: tuple[int, int, int] = (0, 1, 2), maintenance: Optional[str] = None,
                   bfd: Optional[dict] = None, store_kubeconfig: Optional[str] = None,
                   pool: str = POOL) -> dict:
    """The YAML config (as a dict) of one node's speaker, in the schema of docs/design.md §3.2.
    `bfd`: a bfdProfiles entry (MetalLB's shape) used by the speaker's peer.
    `store_kubeconfig`: the pool is shared, its records in the lab's record store (README,
    "Multi-cluster addresses"); else each cluster records its addresses in its own API."""
    config = {
        "cluster": {"name": node.cluster, "defaultTier": "primary",
                    **({"maintenance": maintenance} if maintenance else {})},
        "speaker": {"myASN": asn, "routerID": "auto", "shutdown": shutdown, "drainSeconds": drain_seconds},
        "exabgp": {"gracefulRestart": graceful_restart},
        "peers": [{"name": "tor", "address": node.tor_address, "asn": ROUTER_ASN, "holdTime": hold_time}],
        "pools": [{"name": "public", "addresses": [pool], "autoAssign": True}],
        "tiers": tier_table(asn, prepends),
        "metrics": {"address": f"127.0.0.1:{METRICS_PORT_IN_NODE}"},
    }
    if bfd is not None:
        config["bfdProfiles"] = [bfd]
        config["peers"][0]["bfdProfile"] = bfd["name"]
    if store_kubeconfig is not None:
        config["pools"][0]["shared"] = True
        config["sharedStore"] = {"kubeconfig": store_kubeconfig, "namespace": RECORDS_NAMESPACE}
    return config


def node_object(node: Node, ready: bool = True) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                                                   "topology.kubernetes.io/zone": node.cluster}},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                   "reason": "KubeletReady" if ready else "KubeletNotReady"}],
                   "addresses": [{"type": "InternalIP", "address": node.address},
                                 {"type": "Hostname", "address": node.name}]},
    }


def service_object(name: str, vip: Optional[str], preference: Optional[str], etp: str = "Cluster",
                   namespace: str = "default", annotations: Optional[Mapping[str, str]] = None) -> dict:
    """A LoadBalancer Service; `vip` None: it asks for no address (the allocator picks one)."""
    annotations = {**(annotations or {}), **({"bgpspeaker.io/load-balancer-ips": vip} if vip is not None else {})}
    if preference is not None:
        annotations["bgpspeaker.io/cluster-preference"] = preference
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "externalTrafficPolicy": etp,
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP", "targetPort": 8080}]},
    }


def endpoint_slice_object(service: str, cluster: str, ready: Mapping[str, bool], namespace: str = "default") -> dict:
    endpoints = []
    for i, (node, is_ready) in enumerate(sorted(ready.items())):
        endpoints.append({"addresses": [f"10.244.{i}.{10 + i}"], "nodeName": node,
                          "conditions": {"ready": is_ready, "serving": is_ready, "terminating": False}})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-{cluster}", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


# --------------------------------------------------------------------------- HTTP responder / probe

class Responder:
    """Answers every HTTP request on port 80 of a node (any local address, so every VIP on
    its `lo`) with "<cluster>/<node>"; the listening socket lives in the node's namespace."""

    def __init__(self, ns: str, text: str, port: int = HTTP_PORT):
        self.ns, self.text, self.port = ns, text, port
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Responder":
        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", self.port))
            s.listen(256)
            return s

        self._sock = nsforward.in_netns(self.ns, listen)
        self._thread = threading.Thread(target=self._loop, name=f"responder-{self.text}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        body = (self.text + "\n").encode()
        reply = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(1.0)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(reply)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()


def http_get(ns: str, address: str, port: int = HTTP_PORT, timeout: float = 0.5) -> str:
    """GET / from namespace `ns`; the body, stripped. Raises OSError on failure."""
    sock = nsforward.connect_in(ns, (address, port), timeout=timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise OSError(f"bad answer: {data[:80]!r}")
    return body.decode().strip()


class Prober:
    """Sends a request to `vip` every `interval` seconds from the client until stopped;
    records every Answer. `failures()` and `clusters()` summarise what the client saw."""

    def __init__(self, lab: "MultiClusterLab", vip: str, interval: float = 0.02, timeout: float = 0.3):
        self.lab, self.vip, self.interval, self.timeout = lab, vip, interval, timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"probe-{vip}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.answers.append(self.lab.request(self.vip, timeout=self.timeout))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_cluster(self, cluster: str, timeout: float = 10.0) -> None:
        """Wait until this probe's own latest answer comes from `cluster` (so a sequence
        asserted afterwards with `clusters()` includes it)."""
        wait_until(lambda: self.answers and self.answers[-1].cluster == cluster, timeout,
                   f"the probe of {self.vip} answered by {cluster}")

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.who is None]

    def unexpected_failures(self, windows: Iterable[tuple[float, float]]) -> list[Answer]:
        """Failed requests that are not a connection reset inside one of the `windows`
        (monotonic start, end) during which the route to the VIP moved.

        Why resets are expected there: a connection in flight when the router switches
        the VIP's next hop sends its next packets to a node that never saw its SYN, and
        that node answers with a RST (measured: 3 of 833 requests at one every 3 ms over
        40 route changes). No speaker can avoid it; anything else (unreachable, timeouts,
        or a reset outside a route change) is a gap in the routing and a failure."""
        windows = list(windows)
        return [a for a in self.failures()
                if not (a.error and a.error.startswith("ConnectionResetError")
                        and any(t0 - self.timeout <= a.at <= t1 for t0, t1 in windows))]

    def clusters(self) -> list[Optional[str]]:
        """The serving cluster of each answer, consecutive duplicates folded: e.g. [east, west, east]."""
        out: list[Optional[str]] = []
        for a in self.answers:
            if not out or out[-1] != a.cluster:
                out.append(a.cluster)
        return out

    def served_by(self) -> list[str]:
        """Like clusters(), but of the answered requests only: for tests that check failures
        separately (unexpected_failures), so a tolerated reset at a route switch, which
        answered nothing, does not show up as a `None` step (seen once in CI: east, None, west)."""
        out: list[str] = []
        for a in self.answers:
            if a.cluster is not None and (not out or out[-1] != a.cluster):
                out.append(a.cluster)
        return out

    def longest_outage(self) -> float:
        """Longest time between the first and last of consecutive failed requests (+1 interval)."""
        worst, start, last = 0.0, None, None
        for a in self.answers:
            if a.who is None:
                start = a.at if start is None else start
                last = a.at
                worst = max(worst, last - start + self.interval)
            else:
                start = None
        return worst


# --------------------------------------------------------------------------- the lab

class LabStartError(RuntimeError):
    pass


class MultiClusterLab:
    """Bring the whole lab up with `start()` (or `with MultiClusterLab() as lab:`).

    asns: cluster -> speaker ASN. always_compare_med: FRR's `bgp always-compare-med`.
    hold_time: BGP hold time on both sides (3 s: failover tests). speaker_options: default
    keyword arguments of `speaker_config` for every node (graceful_restart, shutdown, ...).
    """

    def __init__(self, asns: Optional[Mapping[str, int]] = None, always_compare_med: bool = True,
                 hold_time: int = 3, nodes: Iterable[tuple[str, str]] = DEFAULT_NODES,
                 speaker_options: Optional[Mapping] = None, allocator: bool = True, router: str = "frr",
                 log: Callable[[str], None] = lambda s: None, bfd: Optional[Mapping] = None,
                 bfd_check_control_plane_failure: bool = False, graceful_restart: bool | str = False,
                 dampening: Optional[str] = None, shared_store: bool = False):
        # shared_store: one more emulated API holds the records of the shared pool, used by
        # every cluster (self.store); without it each cluster records in its own API.
        self.shared_store = shared_store
        self.store = None
        self.allocator = allocator  # False: `run --no-allocator` (announce only, never write Service status)
        self.asns = dict(DEFAULT_ASNS if asns is None else asns)
        self.always_compare_med = always_compare_med
        self.hold_time = hold_time
        # bfd: one profile (MetalLB's shape, milliseconds) on the tor's bfdd and every speaker
        tor_bfd = None if bfd is None else BfdProfile(bfd["name"], bfd.get("receiveInterval", 300),
                                                      bfd.get("transmitInterval", 300), bfd.get("detectMultiplier", 3))
        self.spec = TopologySpec(nodes=tuple(nodes), tor_asn=ROUTER_ASN, cluster_asns=tuple(self.asns.items()),
                                 always_compare_med=always_compare_med, hold_time=hold_time, router=router,
                                 ipv6=False, bfd=tor_bfd, bfd_check_control_plane_failure=bfd_check_control_plane_failure,
                                 graceful_restart=graceful_restart, dampening=dampening)
        self.clusters = list(dict.fromkeys(c for _, c in self.spec.nodes))
        self.speaker_options = dict(speaker_options or {})
        if bfd is not None:
            self.speaker_options.setdefault("bfd", dict(bfd))
        self.log = log
        self.lab = netns.Lab()
        self.topo = Topology(self.spec, lab=self.lab)
        self.dir = tempfile.mkdtemp(prefix=f"mclab-{os.getpid()}-")
        os.chmod(self.dir, 0o711)  # a speaker's bfdd runs as user frr: it must reach <run-dir>/bfd
        self.nodes: dict[str, Node] = {}
        self.ns: dict[str, str] = {}
        self.tor = ""
        self.client = ""
        self.router: Optional[FrrRouter] = None  # or a BirdRouter (router="bird"): the same query API
        self.emulators: dict[str, object] = {}
        self._emu_cms: list = []
        self.forwarders: list[nsforward.Forwarder] = []
        self.responders: list[Responder] = []
        self.speakers: dict[str, Speaker] = {}
        self.services: dict[str, dict] = {}          # name -> {"vip":..., "endpoints": {cluster: {node: ready}}}
        self._closed = False

    # ----- lifecycle

    def __enter__(self) -> "MultiClusterLab":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> "MultiClusterLab":
        if os.geteuid() != 0:
            raise LabStartError("the lab needs root (network namespaces, FRR)")
        netns.reap_stale()
        # runs before netns's own atexit hook (LIFO): speakers get their SIGTERM (and
        # withdraw) before their namespaces go, even when a script forgot close()
        atexit.register(self.close)
        t0 = time.monotonic()
        self.topo.up()
        self.nodes = dict(self.topo.nodes)
        self.ns = {name: n.ns for name, n in self.nodes.items()}
        self.tor, self.client, self.router = self.topo.tor_ns, self.topo.client_ns, self.topo.router
        what = "FRR (bgpd + zebra)" if self.spec.router == "frr" else self.spec.router.upper()
        self.log(f"namespaces, links and {what} on the tor up in {time.monotonic() - t0:.1f}s: "
                 f"AS {ROUTER_ASN}, always-compare-med {'on' if self.always_compare_med else 'off'}, "
                 f"hold time {self.hold_time}s")
        self._emulators()
        self.log(f"emulated Kubernetes API per cluster: "
                 + ", ".join(f"{c} {e.url}" for c, e in self.emulators.items()))
        for node in self.nodes.values():
            self.responders.append(Responder(self.ns[node.name], f"{node.cluster}/{node.name}").start())
        for node in self.nodes.values():
            self._make_speaker(node)
        for name in self.speakers:
            self.start_speaker(name)
        self.wait_ready(timeout)
        self.log(f"{len(self.speakers)} speakers ready, BGP sessions established ({time.monotonic() - t0:.1f}s)")
        return self

    def _emulators(self) -> None:
        from integration.kubeapi import run_emulator

        for cluster in self.clusters:
            cm = run_emulator()
            emu = cm.__enter__()
            self._emu_cms.append(cm)
            self.emulators[cluster] = emu
            emu.set_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
            for node in self.nodes.values():
                if node.cluster == cluster:
                    emu.set_object(node_object(node))
        for node in self.nodes.values():
            fwd = nsforward.Forwarder(self.ns[node.name], ("127.0.0.1", API_PORT_IN_NODE),
                                      None, ("127.0.0.1", self.emulators[node.cluster].port),
                                      name=f"api-{node.name}").start()
            self.forwarders.append(fwd)
        if self.shared_store:
            cm = run_emulator()
            self.store = cm.__enter__()
            self._emu_cms.append(cm)
            self.store.set_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RECORDS_NAMESPACE}})
            for node in self.nodes.values():
                self.forwarders.append(nsforward.Forwarder(
                    self.ns[node.name], ("127.0.0.1", STORE_PORT_IN_NODE), None, ("127.0.0.1", self.store.port),
                    name=f"store-{node.name}").start())

    def _make_speaker(self, node: NodeSpec) -> Speaker:
        d = os.path.join(self.dir, node.name)
        os.makedirs(d, exist_ok=True)
        kubeconfig = os.path.join(d, "kubeconfig")
        for path, port, name in ((kubeconfig, API_PORT_IN_NODE, node.cluster),
                                 (os.path.join(d, "store.kubeconfig"), STORE_PORT_IN_NODE, "store")):
            with open(path, "w") as f:
                yaml.safe_dump({
                    "apiVersion": "v1", "kind": "Config", "current-context": name,
                    "clusters": [{"name": name, "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "bgpspeaker", "user": {"token": "lab-token"}}],
                    "contexts": [{"name": name, "context": {"cluster": name, "user": "bgpspeaker",
                                                            "namespace": "default"}}]}, f)
        api = nsforward.Forwarder(None, ("127.0.0.1", 0), self.ns[node.name], ("127.0.0.1", METRICS_PORT_IN_NODE),
                                  name=f"http-{node.name}").start()
        self.forwarders.append(api)
        sp = Speaker(node=node, ns=self.ns[node.name], dir=d, config_path=os.path.join(d, "speaker.yaml"),
                     kubeconfig=kubeconfig, log_path=os.path.join(d, "speaker.log"), api=api)
        self.speakers[node.name] = sp
        self.write_config(node.name)
        return sp

    def config_of(self, node_name: str, **overrides) -> dict:
        sp = self.speakers[node_name]
        options = {"hold_time": self.hold_time, **self.speaker_options, **sp.overrides, **overrides}
        if self.shared_store:
            options.setdefault("store_kubeconfig", os.path.join(sp.dir, "store.kubeconfig"))
        return speaker_config(sp.node, self.asns[sp.node.cluster], **options)

    def write_config(self, node_name: str, **overrides) -> None:
        sp = self.speakers[node_name]
        sp.overrides.update(overrides)
        tmp = sp.config_path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(self.config_of(node_name), f, sort_keys=False)
        os.replace(tmp, sp.config_path)  # atomic: the daemon's reload poller never reads half a file

    def start_speaker(self, node_name: str, allocator: Optional[bool] = None, **overrides) -> Speaker:
        """Start the node's speaker; `allocator` False: `run --no-allocator` (default: the lab's)."""
        sp = self.speakers[node_name]
        if sp.running:
            raise RuntimeError(f"speaker {node_name} already running (pid {sp.proc.pid})")
        if overrides:
            self.write_config(node_name, **overrides)
        run_dir = os.path.join(sp.dir, "run")
        os.makedirs(run_dir, exist_ok=True)
        with open(sp.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                       PYTHONUNBUFFERED="1")
            sp.proc = self.lab.popen(sp.ns, [sys.executable, "-m", "bgpspeaker", "run",
                                             "--config", sp.config_path, "--node-name", node_name,
                                             "--kubeconfig", sp.kubeconfig, "--run-dir", run_dir]
                                     + ([] if (self.allocator if allocator is None else allocator)
                                        else ["--no-allocator"]),
                                     stdout=log, stderr=subprocess.STDOUT, env=env, cwd=sp.dir)
        return sp

    def stop_speaker(self, node_name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Optional[int]:
        """Signal the speaker (SIGKILL: it and every descendant, ExaBGP included, as when the
        host dies) and wait for it; returns its exit code."""
        sp = self.speakers[node_name]
        if sp.proc is None:
            return None
        proc = sp.proc
        if proc.poll() is None:
            if sig == signal.SIGKILL:
                self.signal_speaker(node_name, signal.SIGKILL)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                netns.stop(proc)
                raise AssertionError(f"speaker {node_name} did not stop within {timeout}s after signal {sig}:\n"
                                     + sp.log_tail())
        netns.stop(proc)  # reaps the rest of its process group and unregisters it
        with contextlib.suppress(ValueError):
            self.lab.processes.remove(proc)
        return proc.returncode

    def signal_speaker(self, node_name: str, sig: int) -> None:
        """Send `sig` to the speaker and every descendant (ExaBGP runs in its own session,
        so the speaker's process group alone would miss it): SIGSTOP freezes the node's BGP
        without closing its sessions, like a hung host; SIGKILL is a host that died."""
        sp = self.speakers[node_name]
        if sp.running:
            for pid in process_tree(sp.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def restart_speaker(self, node_name: str, sig: int = signal.SIGTERM, **overrides) -> Speaker:
        self.stop_speaker(node_name, sig)
        return self.start_speaker(node_name, **overrides)

    def wait_ready(self, timeout: float = 60.0, nodes: Optional[Iterable[str]] = None) -> None:
        names = list(nodes or self.speakers)
        deadline = time.monotonic() + timeout

        def exited() -> Optional[str]:
            for n in names:
                sp = self.speakers[n]
                if not sp.running:
                    return f"speaker {n} exited rc={sp.proc.returncode if sp.proc else None}"
            return None

        while True:
            # a speaker that exited fails at once: no point waiting out the deadline
            problem = exited()
            if problem is None and all(self.ready(n) for n in names) and self.router.established(
                    *(self.nodes[n].address for n in names)):
                return
            if problem is not None or time.monotonic() > deadline:
                problem = problem or (f"timed out after {timeout:.0f}s waiting for speakers {names} to be "
                                      f"ready with their BGP sessions established")
                raise LabStartError(f"{problem}\n{self.diagnostics()}")
            time.sleep(0.05)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors = []
        for sp in self.speakers.values():
            if sp.running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(sp.proc.pid, signal.SIGTERM)
        for sp in self.speakers.values():
            if sp.proc is not None:
                try:
                    netns.stop(sp.proc, timeout=8)
                except Exception as exc:
                    errors.append(exc)
        for r in self.responders:
            r.close()
        for f in self.forwarders:
            f.close()
        for cm in self._emu_cms[::-1]:
            try:
                cm.__exit__(None, None, None)
            except Exception as exc:
                errors.append(exc)
        for ns in self.ns.values():
            nsforward.forget_netns(ns)
        if self.client:
            nsforward.forget_netns(self.client)
        try:
            self.lab.close()
        except Exception as exc:
            errors.append(exc)
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise netns.LabError(f"multi-cluster lab cleanup: {errors!r}")

    # ----- Kubernetes side

    def create_service(self, name: str, vip: str, preference: Optional[str] = "east,west,central",
                       etp: str = "Cluster", endpoints: Optional[Mapping[str, Mapping[str, bool]]] = None,
                       clusters: Optional[Iterable[str]] = None, namespace: str = "default",
                       annotations: Optional[Mapping[str, str]] = None) -> None:
        """The Service (LoadBalancer, requested IP `vip`, cluster preference) in every cluster
        of `clusters` (default all), with one EndpointSlice per cluster: `endpoints` maps
        cluster -> {node: ready}; default: a ready endpoint on every node of the cluster."""
        clusters = list(clusters or self.clusters)
        for node in self.nodes.values() if vip is not None else ():  # None: the allocator picks it
            with contextlib.suppress(netns.LabError):  # already there (another Service on the same VIP)
                netns.add_lo_addr(self.ns[node.name], vip)
        eps = {c: dict((endpoints or {}).get(c) or {n.name: True for n in self.nodes.values() if n.cluster == c})
               for c in clusters}
        self.services[name] = {"vip": vip, "namespace": namespace, "endpoints": eps}
        for c in clusters:
            emu = self.emulators[c]
            emu.set_object(service_object(name, vip, preference, etp, namespace, annotations))
            emu.set_object(endpoint_slice_object(name, c, eps[c], namespace))

    def set_endpoints(self, name: str, cluster: str, ready: Mapping[str, bool]) -> float:
        """Rewrite the Service's EndpointSlice in `cluster` ({node: ready}); returns the
        monotonic time just before the write (the start of a failover measurement)."""
        svc = self.services[name]
        svc["endpoints"][cluster] = dict(ready)
        obj = endpoint_slice_object(name, cluster, ready, svc["namespace"])
        t = time.monotonic()
        self.emulators[cluster].set_object(obj)
        return t

    def set_cluster_ready(self, name: str, cluster: str, ready: bool) -> float:
        """Every endpoint of the Service in `cluster` ready / not ready."""
        nodes = self.services[name]["endpoints"][cluster]
        return self.set_endpoints(name, cluster, {n: ready for n in nodes})

    def delete_service(self, name: str) -> None:
        svc = self.services.pop(name)
        for c in svc["endpoints"]:
            emu = self.emulators[c]
            with contextlib.suppress(Exception):
                emu.delete_object("discovery.k8s.io/v1", "EndpointSlice", svc["namespace"], f"{name}-{c}")
            with contextlib.suppress(Exception):
                emu.delete_object("v1", "Service", svc["namespace"], name)
        if svc["vip"] is not None and not any(s["vip"] == svc["vip"] for s in self.services.values()):
            for node in self.nodes.values():
                with contextlib.suppress(netns.LabError):
                    netns.del_lo_addr(self.ns[node.name], svc["vip"])

    def service_ingress(self, cluster: str, name: str, namespace: str = "default") -> list[str]:
        """status.loadBalancer.ingress IPs of the Service in `cluster`'s API (what its allocator wrote)."""
        svc = self.emulators[cluster].get_object("v1", "Service", namespace, name) or {}
        return [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]

    def set_node_ready(self, node_name: str, ready: bool) -> None:
        node = self.nodes[node_name]
        self.emulators[node.cluster].set_object(node_object(node, ready))

    def outage(self, cluster: str, seconds: float) -> None:
        """The cluster's API refuses connections and cuts every open one for `seconds`."""
        self.emulators[cluster].outage(seconds)

    # ----- router side

    def cluster_of_peer(self, peer: Optional[str]) -> Optional[str]:
        for n in self.nodes.values():
            if n.address == peer:
                return n.cluster
        return None

    def node_of_peer(self, peer: Optional[str]) -> Optional[str]:
        for n in self.nodes.values():
            if n.address == peer:
                return n.name
        return None

    def paths(self, vip: str) -> list[Path]:
        return self.router.paths(f"{vip}/32")

    def best_path(self, vip: str) -> Optional[Path]:
        return self.router.best_path(f"{vip}/32")

    def best_cluster(self, vip: str) -> Optional[str]:
        best = self.best_path(vip)
        return self.cluster_of_peer(best.peer) if best else None

    def announcing_nodes(self, vip: str) -> set[str]:
        return {self.node_of_peer(p.peer) for p in self.paths(vip) if p.peer}

    def fib_next_hops(self, vip: str) -> list[str]:
        return self.router.fib_routes(4).get(f"{vip}/32", [])

    def wait_best_cluster(self, vip: str, cluster: Optional[str], timeout: float = 10.0, interval: float = 0.002) -> float:
        """Wait until the router's best path for `vip` comes from `cluster` (None: no route);
        returns the monotonic time at which it was first seen."""
        def check():
            return self.best_cluster(vip) == cluster and time.monotonic()
        try:
            return wait_until(check, timeout, f"best path of {vip} from {cluster}", interval=interval)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nrouter paths: {self.describe_paths(vip)}") from None

    def describe_paths(self, vip: str) -> str:
        out = []
        for p in self.paths(vip):
            out.append(f"{'*' if p.best else ' '} {self.node_of_peer(p.peer)} med={p.med} aspath={p.aspath} "
                       f"communities={p.communities}{' stale' if p.stale else ''}")
        return "; ".join(out) or "(no path)"

    def table(self) -> str:
        """The router's BGP table for every VIP: one line per path, best first, with its cluster."""
        lines = [f"{'':1} {'PREFIX':<18} {'NEXT HOP':<12} {'NODE':<10} {'CLUSTER':<8} {'MED':>4}  "
                 f"{'AS PATH':<24} COMMUNITIES"]
        for prefix in sorted(self.router.prefixes("ipv4"), key=lambda p: ipaddress.ip_network(p)):
            for p in sorted(self.router.paths(prefix), key=lambda p: (not p.best, p.med or 0)):
                node = self.node_of_peer(p.peer) or "-"
                lines.append(f"{'*' if p.best else ' '} {prefix:<18} {p.nexthop or '-':<12} {node:<10} "
                             f"{self.cluster_of_peer(p.peer) or '-':<8} {'-' if p.med is None else p.med:>4}  "
                             f"{' '.join(map(str, p.aspath)):<24} {' '.join(p.communities)}"
                             f"{' (stale)' if p.stale else ''}")
        if len(lines) == 1:
            lines.append("  (empty)")
        return "\n".join(lines)

    # ----- client side

    def request(self, vip: str, timeout: float = 0.5) -> Answer:
        t = time.monotonic()
        try:
            return Answer(t, http_get(self.client, vip, timeout=timeout))
        except OSError as exc:
            return Answer(t, None, f"{type(exc).__name__}: {exc}")

    def curl_from_client(self, vip: str, timeout: float = 0.5) -> Optional[str]:
        """"<cluster>/<node>" of whoever answered GET http://VIP/ from the client, or None."""
        return self.request(vip, timeout).who

    def curl_cli(self, vip: str, timeout: float = 1.0) -> str:
        """The same with the real `curl` in the client namespace (what the demo shows)."""
        r = netns.run(self.client, ["curl", "-s", "--max-time", str(timeout), f"http://{vip}/"], check=False,
                      timeout=timeout + 5)
        return r.stdout.strip() if r.returncode == 0 else f"(curl failed: rc={r.returncode})"

    def wait_served_by(self, vip: str, cluster: str, timeout: float = 10.0) -> str:
        return wait_until(lambda: (lambda w: w if w and w.startswith(cluster + "/") else None)(
            self.curl_from_client(vip, timeout=0.3)), timeout, f"{vip} answered by cluster {cluster}")

    def probe(self, vip: str, interval: float = 0.02, timeout: float = 0.3) -> Prober:
        return Prober(self, vip, interval, timeout)

    # ----- speaker HTTP API

    def _http(self, node_name: str, path: str, method: str = "GET", timeout: float = 3.0) -> tuple[int, bytes]:
        sp = self.speakers[node_name]
        req = urllib.request.Request(sp.url + path, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ready(self, node_name: str) -> bool:
        try:
            return self._http(node_name, "/readyz", timeout=1.0)[0] == 200
        except OSError:
            return False

    def _control(self, node_name: str, path: str, method: str = "GET") -> tuple[int, bytes]:
        """The speaker's control socket (status, drain, undrain): a file, reachable from any netns."""
        from bgpspeaker.client import control_request
        return control_request(os.path.join(self.speakers[node_name].dir, "run", "control.sock"), path, method)

    def status(self, node_name: str) -> dict:
        code, body = self._control(node_name, "/status")
        if code != 200:
            raise AssertionError(f"{node_name} /status: HTTP {code}: {body[:200]!r}")
        return json.loads(body)

    def drain(self, node_name: str) -> dict:
        return json.loads(self._control(node_name, "/drain", "POST")[1])

    def undrain(self, node_name: str) -> dict:
        return json.loads(self._control(node_name, "/undrain", "POST")[1])

    def metric(self, node_name: str, name: str, labels: Optional[Mapping[str, str]] = None) -> Optional[float]:
        """One sample of the speaker's /metrics (summed over series matching `labels`)."""
        code, body = self._http(node_name, "/metrics")
        total, found = 0.0, False
        for line in body.decode().splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)", line)
            if not m or m.group(1) != name:
                continue
            series = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            if labels and any(series.get(k) != v for k, v in labels.items()):
                continue
            total += float(m.group(4))
            found = True
        return total if found else None

    def bfdd_pid(self, node_name: str) -> Optional[int]:
        """PID of the bfdd the node's speaker supervises (a direct child running /usr/lib/frr/bfdd)."""
        sp = self.speakers[node_name]
        for child in _children(sp.proc.pid) if sp.running else ():
            with contextlib.suppress(OSError):
                if open(f"/proc/{child}/cmdline", "rb").read().split(b"\0")[0].endswith(b"/bfdd"):
                    return child
        return None

    @contextlib.contextmanager
    def frozen(self, *node_names: str) -> Iterator["Freeze"]:
        """Every process of the nodes stopped for the block (SIGSTOP: a host that hangs, with
        no FIN and no BFD packet), thawed (SIGCONT) after it. The pids are read before the
        freeze begins: `Freeze.started` is the instant just before the first stop, so what a
        failover is measured from is the failure, not the lab's bookkeeping."""
        pids = tuple(pid for name in node_names for pid in netns.netns_pids(self.ns[name]))
        started = time.monotonic()
        _signal_all(pids, signal.SIGSTOP)
        try:
            yield Freeze(started, pids)
        finally:
            _signal_all(pids, signal.SIGCONT)

    def exabgp_pid(self, node_name: str) -> Optional[int]:
        """PID of the ExaBGP child of the node's speaker (a direct child whose command line says exabgp)."""
        sp = self.speakers[node_name]
        if not sp.running:
            return None
        for child in _children(sp.proc.pid):
            try:
                cmdline = open(f"/proc/{child}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "exabgp" in cmdline and "relay" not in cmdline:
                return child
        return None

    # ----- resets and diagnostics

    def reset(self, timeout: float = 30.0) -> None:
        """Back to the freshly started state: no Services, nothing drained, nodes ready,
        every speaker running with the lab's default config, every session up, no routes."""
        for name in list(self.services):
            self.delete_service(name)
        for node in self.nodes.values():
            self.emulators[node.cluster].set_object(node_object(node))
        for name, sp in self.speakers.items():
            if sp.overrides or not sp.running:
                if sp.running:
                    self.stop_speaker(name)
                sp.overrides.clear()
                self.write_config(name)
                self.start_speaker(name)
        self.wait_ready(timeout)
        for name in self.speakers:
            if self.status(name).get("drain"):
                self.undrain(name)
        wait_until(lambda: not self.router.prefixes("ipv4"), timeout, "the router's table to be empty")

    def diagnostics(self, lines: int = 30) -> str:
        out = ["---- router ----"]
        try:
            out.append(self.table())
            out.append(json.dumps({a: n.state for a, n in self.router.neighbors().items()}))
        except Exception as exc:
            out.append(f"(router unreadable: {exc})")
        if self.router is not None:
            with contextlib.suppress(Exception):
                out.append(self.router.log_tail("bgpd", 15) if isinstance(self.router, FrrRouter)
                           else self.router.log_tail(15))
        for name, sp in self.speakers.items():
            state = "running" if sp.running else f"exited rc={sp.proc.returncode if sp.proc else None}"
            out.append(f"---- speaker {name} ({state}) log {sp.log_path} ----")
            out.append(sp.log_tail(lines))
        return "\n".join(out)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(x) for x in open(f"/proc/{pid}/task/{tid}/children").read().split()]
    except OSError:
        pass
    return out


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in _children(pid):
        out += [child] + _descendants(child)
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (a speaker, its ExaBGP, the relay): for signals and CPU counts."""
    return [pid] + _descendants(pid)
