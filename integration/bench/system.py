"""The system-benchmark lab: real `bgpspeaker run` processes, their emulated APIs, raw ExaBGP
and BIRD beside them, one FRR top-of-rack router with zebra.

    tor (FRR bgpd + zebra, AS 64500) ── 10.99.1.2 east-1   (cluster east, AS 64512)
                                     └─ 10.99.2.2 west-1   (cluster west, AS 64512; failover only)

Why it is built this way, and not on the test harnesses:
- The measuring process must stay out of the measured path. So each node's emulated
  API is its own process *inside the node's namespace* (127.0.0.1:6443 there, a port in
  a namespace we created, never in the root one): the daemon's watches reach it
  directly, not through relay threads of this process (nsforward.Forwarder, what the
  tests use, would put this process's GIL between the API and the daemon). This process
  only talks to the emulator's hooks, over one keep-alive connection created inside the
  namespace (nsforward.connect_in), and to FRR's vty socket.
- The time of an API change is taken just *before* the hook request is sent: the hook
  returns once the store has committed and emitted the watch event, so the HTTP round
  trip (~0.3 ms) is counted against us, never for us.
- The references run on the same node address, against the same FRR, in the same run:
  a bare ExaBGP fed through the same relay with the same config text
  (`render_config`), and BIRD announcing from static config. FRR sees one neighbor,
  10.99.1.2, whoever speaks for it.
- Everything is stopped by PID (netns.Lab) and every namespace deleted, also on error.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import yaml

from bgpspeaker.config.schema import ClusterConfig, Config, ExabgpConfig, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp import commands
from bgpspeaker.exabgp.render import exabgp_environment, render_config
from bgpspeaker.model import Community, NodeView, RouteAttributes
from integration.bench.bench_driver import BATCH, WINDOW
from integration.kubeapi import RemoteEmulator
from integration.lab import netns, nsforward
from integration.lab.bird import BirdConfig, BirdRouter
from integration.lab.frr import Neighbor, Originate
from integration.lab.topology import Node, Topology, TopologySpec
from integration.lab.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
EXABGP = str(Path(sys.executable).parent / "exabgp")
PYSPY = str(Path(sys.executable).parent / "py-spy")
TOR_ASN, NODE_ASN = 64500, 64512
API_PORT = 6443            # inside the node's namespace
METRICS_PORT = 7472        # inside the node's namespace
HOLD_TIME = 9              # a busy 2-core machine must not lose sessions to a 3 s hold time
POOL = ipaddress.ip_network("100.64.0.0/16")   # room for the 50,000-Service cold start
NAMESPACES = 50


def vip(i: int) -> str:
    """The address of Service number i (the pool's first address is never used)."""
    return str(POOL.network_address + 1 + i)


def prefix(i: int) -> str:
    return f"{vip(i)}/32"


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


# --------------------------------------------------------------------------- Kubernetes objects

def node_object(node: Node, ready: bool = True) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "addresses": [{"type": "InternalIP", "address": node.address}]}}


def service_object(i: int, preference: Optional[str] = None) -> dict:
    """Service i, shaped like a real one, its address requested and already in its status
    (a steady cluster: the allocator has nothing to write)."""
    annotations = {"bgpspeaker.io/load-balancer-ips": vip(i), "bgpspeaker.io/ip-allocated-from-pool": "public"}
    if preference:
        annotations["bgpspeaker.io/cluster-preference"] = preference
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(i), "namespace": f"team-{i % NAMESPACES}",
                         "labels": {"app": service_name(i)}, "annotations": annotations},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "selector": {"app": service_name(i)},
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": vip(i)}]}}}


RECORDS_NAMESPACE = "bgpspeaker-system"  # the daemon's own namespace (POD_NAMESPACE's default): its records
# What a cold start lists (the Nodes are one object): see NodeEmulator.warm
WARM_PATHS = ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices",
              f"/api/v1/namespaces/{RECORDS_NAMESPACE}/configmaps")


def record_objects(indices: Iterable[int], cluster: str = "east",
                   stored: Optional[Callable[[str], Optional[dict]]] = None) -> list[dict]:
    """The address blocks recording Services `indices` (a cluster that has imported its
    allocations). `stored(name)`: a block already there, whose entries are kept beside them."""
    from bgpspeaker.records import AddressRecord, blocks_of

    records = [AddressRecord(ipaddress.ip_address(vip(i)), "public", f"team-{i % NAMESPACES}", service_name(i),
                             clusters=frozenset({cluster})) for i in indices]
    blocks = blocks_of(records, RECORDS_NAMESPACE)
    for block in blocks if stored is not None else ():
        known = stored(block["metadata"]["name"])
        if known is not None:
            block["data"] = {**(known.get("data") or {}), **block["data"]}
    return blocks


def import_marker_object(cluster: str = "east") -> dict:
    from bgpspeaker.records import import_marker_body

    return import_marker_body(RECORDS_NAMESPACE, cluster, 0)


def slice_object(i: int, nodes: Iterable[str], ready: bool, cluster: str = "east") -> dict:
    """The EndpointSlice of Service i: one endpoint per node, all `ready` or all not."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name(i)}-{cluster}", "namespace": f"team-{i % NAMESPACES}",
                         "labels": {"kubernetes.io/service-name": service_name(i)}},
            "endpoints": [{"addresses": [f"10.244.{k}.{i % 250 + 1}"], "nodeName": n,
                           "conditions": {"ready": ready, "serving": ready, "terminating": False}}
                          for k, n in enumerate(nodes)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def speaker_config(node: Node) -> dict:
    """The daemon's config: one peer (the tor), the /16 pool, the tiers of docs/design.md §3.2.
    `shutdown: keep` without graceful restart: a SIGTERM closes the session and FRR drops
    the routes at once (a 50,000-route withdraw would only slow the runs down)."""
    return {
        "cluster": {"name": node.cluster, "defaultTier": "primary"},
        "speaker": {"myASN": node.asn, "routerID": "auto", "shutdown": "keep", "drainSeconds": 1},
        "exabgp": {"gracefulRestart": 0},
        "peers": [{"name": "tor", "address": node.tor_address, "asn": TOR_ASN, "holdTime": HOLD_TIME}],
        # The pool's first address is never a Service's (vip): reserved, so that an autoAssign
        # Service's lowest free address lies past every recorded one (the event bench's row).
        "pools": [{"name": "public", "addresses": [str(POOL)], "autoAssign": True,
                   "reservations": [{"address": str(POOL.network_address), "service": "bench/reserved"}]}],
        "tiers": {
            "primary": {"med": 100, "localPref": 300, "asPathPrepend": 0, "communities": [f"{node.asn}:100"]},
            "secondary": {"med": 200, "localPref": 200, "asPathPrepend": 1, "communities": [f"{node.asn}:200"]},
            "tertiary": {"med": 300, "localPref": 100, "asPathPrepend": 2, "communities": [f"{node.asn}:300"]},
        },
        "metrics": {"address": f"127.0.0.1:{METRICS_PORT}"},
    }


# --------------------------------------------------------------------------- /proc

def proc_cpu_seconds(pid: Optional[int]) -> float:
    """utime + stime of the whole process (every thread), from /proc/PID/stat."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: Optional[int]) -> float:
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine_busy_seconds() -> float:
    """CPU seconds every core together spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class CpuTimeline:
    """Each named process's CPU and the whole machine's, sampled every `interval` s in a
    thread: which process kept the cores busy in each phase of a run. `pids()` names the
    processes to read at each sample (a process not started yet is left out)."""

    def __init__(self, pids: Callable[[], dict[str, Optional[int]]], interval: float = 0.05):
        self._pids, self._interval = pids, interval
        self.samples: list[tuple[float, float, dict[str, float]]] = []  # (monotonic, machine busy s, {name: cpu s})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-timeline", daemon=True)

    def _run(self) -> None:
        while True:
            cpu = {name: proc_cpu_seconds(pid) for name, pid in self._pids().items() if pid is not None}
            self.samples.append((time.monotonic(), machine_busy_seconds(),
                                 {name: value for name, value in cpu.items() if value == value}))  # not NaN
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> "CpuTimeline":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def busy(self, start: float, end: float) -> dict[str, float]:
        """Average cores each process kept busy from `start` to `end` (monotonic), and "other"
        (the rest of the machine: FRR, the bench itself)."""
        before = [x for x in self.samples if x[0] <= start] or self.samples[:1]
        after = [x for x in self.samples if x[0] >= end] or self.samples[-1:]
        (t0, busy0, cpu0), (t1, busy1, cpu1) = before[-1], after[0]
        if t1 <= t0:
            return {}
        cores = {name: (value - cpu0.get(name, 0.0)) / (t1 - t0) for name, value in cpu1.items()}
        cores["other"] = max(0.0, (busy1 - busy0) / (t1 - t0) - sum(cores.values()))
        return cores


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(x) for x in open(f"/proc/{pid}/task/{tid}/children").read().split()]
    return out


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def source_state() -> str:
    """The commit measured, and the files of the package that differ from it (the
    working tree is shared: a benchmark measures what is on disk)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bgpspeaker"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "?"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine() -> dict:
    model = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    versions = {}
    for name, argv in (("frr", ["/usr/lib/frr/bgpd", "--version"]), ("bird", ["bird", "--version"]),
                       ("exabgp", [EXABGP, "version"])):
        with contextlib.suppress(Exception):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            text = (r.stdout + r.stderr).strip().splitlines()
            versions[name] = text[0] if text else "?"
    return {"nproc": os.cpu_count(), "cpu": model, "source": source_state(), "kernel": os.uname().release,
            "memory": mem,
            "python": sys.version.split()[0], **versions,
            "loadavg": open("/proc/loadavg").read().split()[:3]}


# --------------------------------------------------------------------------- the emulated API

class EmulatorError(netns.LabError):
    """An emulator's hook answered with an HTTP error."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class NodeEmulator(RemoteEmulator):
    """`python -m integration.kubeapi` in a node's namespace, at 127.0.0.1:6443 there;
    its hooks (RemoteEmulator's) over one keep-alive connection made inside the namespace."""

    def __init__(self, lab: netns.Lab, node: Node, workdir: Path):
        super().__init__(f"http://127.0.0.1:{API_PORT}")
        self.node = node
        self.log_path = workdir / f"kubeapi-{node.name}.log"
        self.proc = lab.popen(node.ns, [PYTHON, "-m", "integration.kubeapi", "--host", "127.0.0.1",
                                        "--port", str(API_PORT), "--history", "400000",
                                        "--bookmark-interval", "3600"],
                              cwd=str(REPO), stdout=subprocess.PIPE, stderr=open(self.log_path, "ab"))
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready"):
            raise netns.LabError(f"emulator in {node.ns} did not start: {self.log_path.read_text()[-2000:]}")
        self._conn: Optional[http.client.HTTPConnection] = None
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", API_PORT, timeout=120)
            conn.sock = nsforward.connect_in(self.node.ns, ("127.0.0.1", API_PORT), timeout=5)
            conn.sock.settimeout(120)
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def _call(self, method: str, op: str, body: object = None, **query) -> object:
        import urllib.parse
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        path = f"/__emulator__/{op}" + (f"?{qs}" if qs else "")
        data = json.dumps(body).encode() if body is not None else None
        with self._lock:
            for attempt in (1, 2):  # a keep-alive connection the server closed: reconnect once
                try:
                    conn = self._connection()
                    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    payload = response.read()
                    break
                except (OSError, http.client.HTTPException):
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        if response.status >= 400:
            raise EmulatorError(f"emulator {op}: HTTP {response.status}: {payload[:300]!r}", response.status)
        return json.loads(payload)

    def get_object(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[dict]:
        """The object, or None when there is none (as RemoteEmulator's)."""
        try:
            return super().get_object(api_version, kind, namespace, name)
        except EmulatorError as error:
            if error.status == 404:
                return None
            raise

    def load_many(self, objects: list[dict], chunk: int = 2000) -> None:
        for start in range(0, len(objects), chunk):
            self.load_objects(objects[start:start + chunk])

    def warm(self, paths: Iterable[str] = WARM_PATHS) -> None:
        """List every object once, so that the emulator has encoded each: it encodes an object
        the first time it serves it, and that first list was charged to the next cold start
        (at 50,000 Services, records and slices: ~1.5 core-seconds of the emulator on the same
        two cores, and the 50,000 row has only one run). A real API server runs elsewhere."""
        with self._lock:
            for path in paths:
                conn = self._connection()
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    raise netns.LabError(f"emulator GET {path}: HTTP {response.status}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        netns.stop(self.proc)


# --------------------------------------------------------------------------- the daemon

_speakers = itertools.count(1)


class SpeakerProcess:
    """One `bgpspeaker run` in a node's namespace, as an operator runs it."""

    def __init__(self, lab: netns.Lab, node: Node, workdir: Path, name: str = "speaker",
                 log_level: str = "INFO"):
        self.lab, self.node = lab, node
        self.dir = workdir / f"{name}-{node.name}-{next(_speakers)}"  # one log per daemon run
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "speaker.yaml"
        self.config_path.write_text(yaml.safe_dump(speaker_config(node)))
        self.kubeconfig = self.dir / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "lab", "cluster": {"server": f"http://127.0.0.1:{API_PORT}"}}],
            "users": [{"name": "lab", "user": {"token": "bench"}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}]}))
        self.log_path = self.dir / "speaker.log"
        self.log_level = log_level
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0

    def start(self) -> "SpeakerProcess":
        # the run dir must be short: the relay's unix socket path lives in it (108 bytes)
        run_dir = Path(tempfile.mkdtemp(prefix=f"bs{os.getpid()}-"))
        self.lab.on_close(lambda: shutil.rmtree(run_dir, ignore_errors=True))
        self.started_at = time.monotonic()
        self.proc = self.lab.popen(
            self.node.ns, [PYTHON, "-m", "bgpspeaker", "run", "--config", str(self.config_path),
                           "--node-name", self.node.name, "--kubeconfig", str(self.kubeconfig),
                           "--run-dir", str(run_dir), "--log-level", self.log_level],
            cwd=str(REPO), stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def exabgp_pid(self) -> Optional[int]:
        if self.pid is None:
            return None
        for child in children(self.pid):
            line = cmdline(child)
            if "exabgp" in line and "relay" not in line:
                return child
        return None

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> float:
        return proc_rss_mb(self.pid)

    def http(self, path: str) -> str:
        sock = nsforward.connect_in(self.node.ns, ("127.0.0.1", METRICS_PORT), timeout=5)
        conn = http.client.HTTPConnection("127.0.0.1", METRICS_PORT, timeout=10)
        conn.sock = sock
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        """A sample summed over its label sets (0 when absent)."""
        total = 0.0
        for line in self.http("/metrics").splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{", 1)[0] == name:
                total += float(value)
        return total

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the daemon only (it stops its ExaBGP: with `shutdown: keep` and no
        graceful restart the session closes and FRR drops the routes at once)."""
        if self.proc is not None:
            netns.stop(self.proc, timeout=15, group=False)
            self.proc = None


# --------------------------------------------------------------------------- raw ExaBGP

class RawExabgp:
    """A bare ExaBGP on a node, fed by hand: the reference. Same rendered config and relay
    as the daemon's child, commands built by the same `commands` module, a bounded window
    of WINDOW commands of ≤ BATCH prefixes (the best feeding measured, bench_window.py).
    The relay's socket is served by two plain threads here (accept + a reader that always
    drains), so feeding never waits on this process's other work."""

    def __init__(self, lab: netns.Lab, node: Node, workdir: Path):
        self.lab, self.node = lab, node
        self.dir = Path(tempfile.mkdtemp(prefix=f"bx{os.getpid()}-"))
        lab.on_close(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.sock_path = str(self.dir / "x.sock")
        view = NodeView(node.name, addresses=(("InternalIP", node.address),))
        config = Config(cluster=ClusterConfig(node.cluster), speaker=SpeakerConfig(my_asn=node.asn),
                        peers=(PeerConfig("tor", ipaddress.ip_address(node.tor_address), TOR_ASN,
                                          hold_time=HOLD_TIME),),
                        exabgp=ExabgpConfig(graceful_restart=0))
        self.conf = self.dir / "exabgp.conf"
        self.conf.write_text(render_config(config, view, self.sock_path, mask_secrets=False))
        self.peer = ipaddress.ip_address(node.tor_address)
        # the attributes the daemon sends for a primary route (docs/design.md §3.2 tiers)
        self.attrs = RouteAttributes(next_hop=ipaddress.ip_address(node.address), as_path=(node.asn,), med=100,
                                     communities=(Community(node.asn, 100),))
        self.window = threading.Semaphore(WINDOW)
        self.acks = 0
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        self._conn: Optional[socket.socket] = None
        self._connected = threading.Event()
        self._server: Optional[socket.socket] = None

    def start(self) -> "RawExabgp":
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.sock_path)
        self._server.listen(4)
        threading.Thread(target=self._accept, name="raw-accept", daemon=True).start()
        env = dict(os.environ, **exabgp_environment())
        self.started_at = time.monotonic()
        self.proc = self.lab.popen(self.node.ns, [EXABGP, str(self.conf)], env=env,
                                   stdout=open(self.dir / "exabgp.log", "ab"), stderr=subprocess.STDOUT)
        if not self._connected.wait(30):
            raise netns.LabError("raw ExaBGP: the relay never connected")
        return self

    def _accept(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        self._conn = conn
        self._connected.set()
        reader = conn.makefile("rb")
        for line in reader:
            if line in (b"done\n", b"error\n"):
                self.acks += 1
                self.window.release()

    def send(self, line: str) -> None:
        self.window.acquire()
        self._conn.sendall(line.encode() + b"\n")

    def announce(self, prefixes: list) -> None:
        nets = [ipaddress.ip_network(p) for p in prefixes]
        for i in range(0, len(nets), BATCH):
            self.send(commands.announce_line([self.peer], self.attrs, nets[i:i + BATCH]))

    def withdraw(self, prefixes: list) -> None:
        nets = [ipaddress.ip_network(p) for p in prefixes]
        for i in range(0, len(nets), BATCH):
            self.send(commands.withdraw_line([self.peer], nets[i:i + BATCH]))

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        if self.proc is not None:
            netns.stop(self.proc, timeout=5, group=False)  # ExaBGP stops its relay
            self.proc = None
        for s in (self._conn, self._server):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        self._conn = self._server = None


# --------------------------------------------------------------------------- BIRD as a speaker

def bird_speaker(lab: netns.Lab, node: Node, prefixes: list[str]) -> BirdRouter:
    """BIRD on the node announcing `prefixes` from static config (the native limit)."""
    cfg = BirdConfig(asn=node.asn, router_id=node.address, hold_time=HOLD_TIME,
                     neighbors=(Neighbor(node.tor_address, TOR_ASN),),
                     originate=tuple(Originate(p) for p in prefixes))
    return BirdRouter(node.ns, cfg, lab=lab)


# --------------------------------------------------------------------------- the lab

@dataclass
class Rib:
    """Fast looks at FRR's RIB and FIB through its vty socket."""
    router: object

    def received(self, address: str) -> int:
        """Prefixes received from `address` (-1 while the session is not established)."""
        data = self.router.show_json("show bgp ipv4 unicast summary").get("peers", {}).get(address, {})
        return int(data.get("pfxRcd", 0)) if data.get("state") == "Established" else -1

    def has(self, pfx: str) -> bool:
        data = self.router.show_json(f"show bgp ipv4 unicast {pfx}")
        return bool(data.get("paths"))

    def best_peer(self, pfx: str) -> Optional[str]:
        data = self.router.show_json(f"show bgp ipv4 unicast {pfx}")
        for p in data.get("paths") or ():
            best = p.get("bestpath")
            if isinstance(best, dict) and best.get("overall"):
                peer = p.get("peer") or {}
                return peer.get("peerId")
        return None

    def prefixes(self) -> set[str]:
        return set((self.router.show_json("show bgp ipv4 unicast").get("routes") or {}).keys())

    def updates_received(self, address: str) -> int:
        data = self.router.show_json(f"show bgp neighbors {address}").get(address, {})
        return int((data.get("messageStats") or {}).get("updatesRecv", 0))

    def fib_routes_via(self, gateway: str) -> int:
        """How many routes the router's kernel FIB holds via `gateway` (installed by zebra)."""
        return netns.ip(self.router.ns, "-4", "route", "show", "proto", "bgp", "via", gateway).count("\n")

    def fib_gateway(self, pfx: str) -> Optional[str]:
        out = netns.ip(self.router.ns, "-j", "route", "show", pfx)
        routes = json.loads(out or "[]")
        return routes[0].get("gateway") if routes else None


class SystemLab:
    """The topology (tor + nodes), one emulator per node, helpers to start daemons and references."""

    def __init__(self, nodes=(("east-1", "east"),), log: Callable[[str], None] = print):
        self.log = log
        self.lab = netns.Lab(prefix="bgpb")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{os.getpid()}-"))
        self.topo = Topology(TopologySpec(nodes=tuple(nodes), tor_asn=TOR_ASN, node_asn=NODE_ASN,
                                          always_compare_med=True, hold_time=HOLD_TIME, router="frr",
                                          ipv6=False), lab=self.lab)
        self.emulators: dict[str, NodeEmulator] = {}
        self.rib: Optional[Rib] = None
        self.established_seen: Optional[float] = None  # set by wait_count: session first seen up
        self.first_route_seen: Optional[float] = None  # set by wait_count: the first route seen

    def __enter__(self) -> "SystemLab":
        try:
            netns.reap_stale("bgpb")
            self.topo.up()
            self.rib = Rib(self.topo.router)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            for emu in self.emulators.values():
                with contextlib.suppress(Exception):
                    emu.close()
            for node in self.topo.nodes.values():
                nsforward.forget_netns(node.ns)
            self.lab.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def node(self, name: str = "east-1") -> Node:
        return self.topo.node(name)

    def emulator(self, node_name: str = "east-1", fresh: bool = True) -> NodeEmulator:
        """The node's emulator; `fresh` replaces it with an empty one holding only the Node."""
        old = self.emulators.pop(node_name, None)
        if old is not None:
            if not fresh:
                self.emulators[node_name] = old
                return old
            old.close()
        node = self.node(node_name)
        emu = NodeEmulator(self.lab, node, self.workdir)
        emu.set_object(node_object(node))
        self.emulators[node_name] = emu
        return emu

    def speaker(self, node_name: str = "east-1", **kw) -> SpeakerProcess:
        return SpeakerProcess(self.lab, self.node(node_name), self.workdir, **kw)

    def wait_empty(self, node_name: str = "east-1", timeout: float = 60.0) -> None:
        """Until FRR holds nothing from the node (its speaker is gone or announces nothing):
        not in bgpd's RIB, and not in the kernel FIB either. zebra removes a withdrawn
        table from the kernel after bgpd has dropped it (50,000 routes BIRD withdrew: 0.8 s
        later, two cores busy), and a run started meanwhile paid for it."""
        address = self.node(node_name).address
        wait_until(lambda: self.rib.received(address) <= 0, timeout, f"FRR empty of {node_name}'s routes",
                   interval=0.05)
        wait_until(lambda: not self.rib.fib_routes_via(address), timeout,
                   f"the router's kernel FIB empty of {node_name}'s routes", interval=0.05)

    def wait_count(self, node_name: str, n: int, timeout: float, what: str = "routes",
                   interval: float = 0.01, proc: Optional[subprocess.Popen] = None) -> float:
        """Until FRR has received exactly `n` prefixes from the node; the monotonic time seen."""
        address = self.node(node_name).address
        deadline = time.monotonic() + timeout
        self.established_seen = None
        self.first_route_seen = None
        while True:
            now = time.monotonic()
            got = self.rib.received(address)
            if got >= 0 and self.established_seen is None:
                # FRR's peerUptimeMsec has a resolution of 1 s (measured): poll instead
                self.established_seen = now
            if got > 0 and self.first_route_seen is None:
                self.first_route_seen = now
            if got == n:
                return now
            if proc is not None and proc.poll() is not None:
                raise netns.LabError(f"{what}: the process exited rc={proc.returncode}")
            if now > deadline:
                raise netns.LabError(f"timed out after {timeout:.0f}s waiting for {n} {what} "
                                     f"(have {self.rib.received(address)})")
            time.sleep(interval)


# --------------------------------------------------------------------------- py-spy

class Profiler:
    """`py-spy record` attached to a running daemon, in raw (collapsed stacks) format so the
    suite can say which functions took the time; an SVG flame graph beside it on demand."""

    def __init__(self, pid: int, out: Path, rate: int = 100, svg: bool = False, idle: bool = False):
        self.out = out
        fmt = ["--format", "flamegraph"] if svg else ["--format", "raw"]
        # --idle: sleeping threads too, so the event loop's share in epoll says how busy it is
        self.proc = subprocess.Popen([PYSPY, "record", "--pid", str(pid), "--rate", str(rate), "--threads",
                                      "--nonblocking", "-o", str(out), *fmt, *(["--idle"] if idle else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> Optional[Path]:
        """SIGINT makes py-spy write its file; returns the file (None if nothing was written)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.out if self.out.exists() and self.out.stat().st_size else None


# py-spy (without --idle) records only threads the OS shows running, but it catches the
# event loop's epoll now and then as it enters or leaves: those are not work
IDLE_MARKERS = ("EpollSelector.select (selectors.py", "select (selectors.py")
# frames every stack has: they say nothing about where the time goes
WRAPPERS = ("<module>", "_run_code", "_run_module_as_main", "run_command", "main (bgpspeaker/cli.py",
            "Thread.run", "Thread._bootstrap", "Runner.run", "run (asyncio/runners.py", "run_until_complete",
            "run_forever", "_run_once", "Handle._run", "Daemon._reconcile_loop")


def _stacks(path: Path, thread: Optional[str] = None):
    """(frames without the process/thread header, count) per line of py-spy raw output;
    only the thread named `thread` when given."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        header = next((p for p in parts if p.startswith("thread ")), "")
        if thread is not None and not header.endswith(f": {thread}"):
            continue
        frames = [f for f in parts if f and not f.startswith(("process ", "thread "))]
        if frames:
            yield frames, int(count)


def loop_busy(path: Path) -> float:
    """Share of the event loop thread's samples (profile taken with idle=True) outside
    epoll: how much of the wall time the loop was working or waiting for the GIL."""
    total = idle = 0
    for frames, n in _stacks(path, "MainThread"):
        total += n
        if any(m in frames[-1] for m in IDLE_MARKERS):
            idle += n
    return (total - idle) / total if total else float("nan")


def summarize_profile(path: Path, top: int = 12, thread: Optional[str] = None) -> list[tuple[str, float, float]]:
    """[(function (file), self %, inclusive %)] from py-spy raw output: the project's own
    functions by inclusive time first, then the hottest leaf functions anywhere; % of the
    samples py-spy took of running threads (a lock or queue wait in that set is a spin,
    not idle: measured in the EventRecorder)."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for frames, n in _stacks(path, thread):
        if any(m in frames[-1] for m in IDLE_MARKERS):
            continue
        total += n
        names = [re.sub(r":\d+\)$", ")", f) for f in frames]  # per function, not per line
        self_counts[names[-1]] = self_counts.get(names[-1], 0) + n
        for f in set(names):
            incl_counts[f] = incl_counts.get(f, 0) + n
    if not total:
        return []
    ours = sorted(((f, c) for f, c in incl_counts.items()
                   if "bgpspeaker/" in f and not any(w in f for w in WRAPPERS)), key=lambda kv: -kv[1])[:top]
    hot = sorted(self_counts.items(), key=lambda kv: -kv[1])[:max(4, top // 2)]
    rows = [(f, 100 * self_counts.get(f, 0) / total, 100 * incl_counts[f] / total) for f, _ in ours]
    rows += [(f"(leaf) {f}", 100 * c / total, 100 * incl_counts[f] / total) for f, c in hot
             if f not in dict(ours)]
    return rows


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    return wait_until(condition, timeout, what, interval=interval)
