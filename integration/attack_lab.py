"""Shared ground for the attack and fault lab tests (no tests here): a one-node lab of the
real `bgpspeaker run` (integration/lab/cluster_lab.py) with the attack config — several
pools with namespace limits, a static pool, allowed communities, optionally an MD5
password — and helpers that read the router and the emulated API.

Why one node: attacks and faults are about one speaker's decisions and its recovery; a
single node keeps each lab start at ~3 s and the router's RIB equal to that node's plan,
so "nothing lost, nothing extra" is an exact set comparison.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from typing import Iterable, Optional

import yaml

from integration.lab.cluster_lab import MultiClusterLab
from integration.lab.topology import Topology, TopologySpec
from integration.lab.wait import wait_until

NODE = "east-1"

# Pool layout mirrors testkit/hardening.py (the pure attacks) in the lab's numbering.
POOLS = [
    {"name": "public", "addresses": ["203.0.113.0/28"], "autoAssign": True, "allowedCommunities": ["64512:777"]},
    {"name": "team-a", "addresses": ["198.51.100.0/28"], "autoAssign": True, "namespaces": ["team-a"]},
    {"name": "team-b-static", "addresses": ["192.0.2.64/29"], "autoAssign": False, "namespaces": ["team-b"]},
]
ALLOWED_BY_NAMESPACE = {  # what each namespace may ever be announced with (from the raw CIDRs above)
    ns: [ipaddress.ip_network(c) for p in POOLS for c in p["addresses"]
         if not p.get("namespaces") or ns in p["namespaces"]]
    for ns in ("default", "tenant", "team-a", "team-b")
}


class AttackLab(MultiClusterLab):
    """MultiClusterLab with one node (east-1) and the attack config; `password` turns on TCP MD5."""

    def __init__(self, password: Optional[str] = None, pools: Optional[list] = None, **kw):
        kw.setdefault("nodes", ((NODE, "east"),))
        kw.setdefault("asns", {"east": 64512})
        super().__init__(**kw)
        self.password = password
        self.pools = pools if pools is not None else POOLS
        self.password_file = os.path.join(self.dir, "tor.password")
        self.created: set[tuple[str, str]] = set()
        if password is not None:
            with open(self.password_file, "w") as f:
                f.write(password + "\n")
            os.chmod(self.password_file, 0o600)
            self.spec = TopologySpec(**{**self.spec.__dict__, "password": password})
            self.topo = Topology(self.spec, lab=self.lab)

    def config_of(self, node_name: str, **overrides) -> dict:
        config = super().config_of(node_name, **overrides)
        config["pools"] = [dict(p) for p in self.pools]
        if self.password is not None:
            config["peers"][0]["passwordFile"] = self.password_file
        return config

    def start(self, timeout: float = 60.0) -> "AttackLab":
        super().start(timeout)
        for ns in ("tenant", "team-a", "team-b"):
            self.emu.set_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        return self

    @property
    def emu(self):
        return self.emulators["east"]

    # ----- Kubernetes objects

    def service(self, namespace: str, name: str, annotations: Optional[dict] = None, ingress: Iterable[str] = (),
                ports: Optional[list] = None, ready: bool = True, **spec) -> None:
        body = {"type": "LoadBalancer", "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}]}
        body.update(spec)
        obj = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"namespace": namespace, "name": name, "annotations": dict(annotations or {})},
               "spec": body}
        self.created.add((namespace, name))
        ingress = list(ingress)
        if ingress:
            obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}
        self.emu.set_object(obj)
        self.emu.set_object({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": namespace, "name": f"{name}-x", "labels": {"kubernetes.io/service-name": name}},
            "endpoints": [{"addresses": ["10.244.0.9"], "nodeName": NODE, "conditions": {"ready": ready}}]})

    def remove_service(self, namespace: str, name: str) -> None:
        for api, kind, n in (("discovery.k8s.io/v1", "EndpointSlice", f"{name}-x"), ("v1", "Service", name)):
            try:
                self.emu.delete_object(api, kind, namespace, n)
            except Exception:
                pass

    def clear_services(self) -> None:
        for namespace, name in sorted(self.created):
            self.remove_service(namespace, name)
        self.created.clear()

    def ingress_of(self, namespace: str, name: str) -> list[str]:
        obj = self.emu.get_object("v1", "Service", namespace, name) or {}
        return [i.get("ip") for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]

    def events(self, namespace: str, name: str) -> list[dict]:
        return self.emu.events_for(namespace, name)

    # ----- the router

    def rib(self) -> dict[str, tuple]:
        """{prefix: (nexthop, med, aspath, communities)} of every path the router holds."""
        out = {}
        for afi in ("ipv4", "ipv6"):
            for prefix, paths in self.router.routes(afi).items():
                for p in paths:
                    out[prefix] = (p.nexthop, p.med, tuple(p.aspath), tuple(p.communities), p.stale)
        return out

    def prefixes(self) -> set[str]:
        return set(self.router.prefixes("ipv4")) | set(self.router.prefixes("ipv6"))


class RibWatcher:
    """Samples the router's prefixes every few ms in a thread: `seen` is every prefix that was
    ever in the RIB while it ran (to prove an address was *never* announced, not just not now)."""

    def __init__(self, lab: AttackLab, interval: float = 0.01):
        self.lab, self.interval = lab, interval
        self.seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rib-watcher", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen |= self.lab.prefixes()
                self.samples += 1
            except Exception:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "RibWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def wait_rib(lab: AttackLab, expected: set[str], timeout: float = 20.0, what: str = "") -> float:
    """Wait until the router's prefix set is exactly `expected`; returns the monotonic time it was."""
    try:
        return wait_until(lambda: lab.prefixes() == expected and time.monotonic(), timeout,
                          what or f"router RIB == {sorted(expected)}")
    except AssertionError:
        got = lab.prefixes()
        raise AssertionError(f"router RIB: extra {sorted(got - expected)}, missing {sorted(expected - got)}\n"
                             f"{lab.diagnostics()}") from None


def load_yaml(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)
