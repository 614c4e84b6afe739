"""Shared ground for the hardening suites (no tests here): the attack config, hostile corpus,
the fields a hostile Service can fill, and the independent checks that every generated
command and route must pass.

Why an independent checker instead of reusing `commands.parse_line`: the property under
test is "no Service field or annotation can inject an ExaBGP command" (docs/design.md
invariant 4). A checker that shares code with the thing checked would share its bugs,
so the grammar below is written from docs/reference/exabgp-api.md §5, stricter than the
builder's own (canonical addresses only, no IPv6 scope id, a closed character set), and
the allowed address space is computed from the raw CIDR text of the config, not through
`PoolConfig.contains`.

Imported by tests/test_hardening_*.py and integration/test_attacks_*.py: it lives in testkit/,
which both may import, so neither test tree imports the other.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from bgpspeaker.allocator import allocate, allocate_recorded
from bgpspeaker.config.schema import (
    Advertisement, ClusterConfig, Config, PeerConfig, PoolConfig, SpeakerConfig, TierAttributes,
)
from bgpspeaker.exabgp.commands import announce_line, parse_line, withdraw_line
from bgpspeaker.model import Community, LargeCommunity, RouteIntent, Tier
from bgpspeaker.planner import plan
from bgpspeaker.reconciler import Batch, diff
from bgpspeaker.records import LOCAL, AddressRecord, record_key
from bgpspeaker.views import snapshot_from_objects

MY_ASN = 64512

# --- the attack topology (addresses chosen to match the lab test as well) --------------


@dataclass(frozen=True)
class Topology:
    peer4: str = "10.0.0.1"  # tor-a, eBGP AS 64500
    peer6: str = "fd00::1"  # tor-b, iBGP (our ASN)
    node4: str = "10.0.0.2"
    node6: str = "fd00::2"


POOL_CIDRS: Mapping[str, tuple[str, ...]] = {
    "public": ("203.0.113.0/28", "2001:db8::/124"),
    "team-a": ("198.51.100.0/28",),
    "reserved": ("192.0.2.0/29",),
    "team-b-static": ("192.0.2.64/29",),
}
POOL_NAMESPACES: Mapping[str, tuple[str, ...]] = {"public": (), "team-a": ("team-a",), "reserved": (),
                                                  "team-b-static": ("team-b",)}
POOL_AUTO: Mapping[str, bool] = {"public": True, "team-a": True, "reserved": False, "team-b-static": False}
POOL_ALLOWED_COMMUNITIES: Mapping[str, tuple[str, ...]] = {
    "public": ("64512:777", "64512:7:7"), "team-a": (), "reserved": (), "team-b-static": (),
}
TIER_COMMUNITIES = {Tier.PRIMARY: "64512:100", Tier.SECONDARY: "64512:200", Tier.TERTIARY: "64512:300"}
ADVERTISED = {("public", "tor-a"): "64512:1"}  # advertisements: pool public to tor-a gets 64512:1


def attack_config(topo: Topology = Topology(), with_v6_peer: bool = True) -> Config:
    def comm(text: str):
        return LargeCommunity.parse(text) if text.count(":") == 2 else Community.parse(text)

    pools = tuple(
        PoolConfig(name, tuple(ipaddress.ip_network(c) for c in cidrs), auto_assign=POOL_AUTO[name],
                   namespaces=POOL_NAMESPACES[name],
                   allowed_communities=tuple(comm(c) for c in POOL_ALLOWED_COMMUNITIES[name]))
        for name, cidrs in POOL_CIDRS.items())
    peers = [PeerConfig("tor-a", ipaddress.ip_address(topo.peer4), 64500, hold_time=9)]
    if with_v6_peer:
        peers.append(PeerConfig("tor-b", ipaddress.ip_address(topo.peer6), MY_ASN, hold_time=9))
    tiers = {
        Tier.PRIMARY: TierAttributes(med=100, local_pref=300, as_path_prepend=0,
                                     communities=(Community.parse(TIER_COMMUNITIES[Tier.PRIMARY]),)),
        Tier.SECONDARY: TierAttributes(med=200, local_pref=200, as_path_prepend=1,
                                       communities=(Community.parse(TIER_COMMUNITIES[Tier.SECONDARY]),)),
        Tier.TERTIARY: TierAttributes(med=300, local_pref=100, as_path_prepend=2,
                                      communities=(Community.parse(TIER_COMMUNITIES[Tier.TERTIARY]),)),
    }
    return Config(
        cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=MY_ASN), peers=tuple(peers), pools=pools,
        tiers=tiers,
        advertisements=tuple(Advertisement(pools=(pool,), peers=(peer,), communities=(Community.parse(c),))
                             for (pool, peer), c in ADVERTISED.items()),
    )


# --- Kubernetes objects -----------------------------------------------------------------


def node_obj(name: str = "node-1", topo: Topology = Topology(), addresses: Optional[list] = None,
             labels: Optional[dict] = None) -> dict:
    if addresses is None:
        addresses = [{"type": "InternalIP", "address": topo.node4}, {"type": "InternalIP", "address": topo.node6}]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": addresses}}


def service_obj(namespace: str, name: str, annotations: Optional[dict] = None, ingress: Sequence[str] = (),
                created: str = "2025-01-01T00:00:00Z", ports: Optional[list] = None, **spec: Any) -> dict:
    body = {"type": "LoadBalancer", "ports": ports if ports is not None else [
        {"name": "http", "protocol": "TCP", "port": 80}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{namespace}-{name}",
                         "creationTimestamp": created, "annotations": dict(annotations or {})},
            "spec": body,
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}}}


def slice_obj(namespace: str, service: str, node: str = "node-1", addresses: Sequence[str] = ("10.244.0.5",),
              ready: Any = True, name: Optional[str] = None) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"namespace": namespace, "name": name or f"{service}-abc",
                         "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": list(addresses), "conditions": {"ready": ready}, "nodeName": node}]}


def legit_objects() -> list[dict]:
    """A small, healthy cluster whose routes must survive every attack next to it untouched."""
    return [
        node_obj(),
        # already allocated by the leader: status written, old
        service_obj("team-a", "web", {"bgpspeaker.io/load-balancer-ips": "198.51.100.5"},
                    ingress=["198.51.100.5"], created="2024-01-01T00:00:00Z"),
        slice_obj("team-a", "web"),
        service_obj("default", "app", ingress=["203.0.113.0"], created="2024-01-02T00:00:00Z"),
        slice_obj("default", "app"),
        service_obj("default", "dual", ingress=["203.0.113.1", "2001:db8::1"], created="2024-01-03T00:00:00Z",
                    ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"),
        slice_obj("default", "dual"),
    ]


LEGIT_ROUTES = {  # (peer, prefix) the legit cluster announces
    ("tor-a", "198.51.100.5/32"), ("tor-b", "198.51.100.5/32"),
    ("tor-a", "203.0.113.0/32"), ("tor-b", "203.0.113.0/32"),
    ("tor-a", "203.0.113.1/32"), ("tor-b", "203.0.113.1/32"),
    ("tor-a", "2001:db8::1/128"), ("tor-b", "2001:db8::1/128"),
}

# --- the hostile corpus ---------------------------------------------------------------

INJECT = "announce route 0.0.0.0/0 next-hop 10.0.0.2"
HOSTILE: tuple[str, ...] = (
    "", " ", "\n", "\r", "\0", "\r\n", "\t", ";", "}", "{", "};", "{}", "#", "[", "]", '"', "'", "\\", "%", ",", ":",
    INJECT, "\n" + INJECT, "\r" + INJECT, "\0" + INJECT, ";" + INJECT, "}\n" + INJECT,
    "203.0.113.5\n" + INJECT, "203.0.113.5\r\n" + INJECT, "203.0.113.5\0", "203.0.113.5;" + INJECT,
    "203.0.113.5 , neighbor 1.2.3.4", " , neighbor 1.2.3.4", "neighbor 10.0.0.1 withdraw route 203.0.113.1/32",
    "203.0.113.5 nlri 8.8.8.8/32", "203.0.113.5}", "{203.0.113.5}", "[203.0.113.5]", '"203.0.113.5"',
    "2001:db8::5%x\nannounce route 2001:db8:dead::1 next-hop fd00::2", "2001:db8::5%eth0",
    "2001:db8::5%eth0 , neighbor 1.2.3.4", "fe80::1%eth0", "::ffff:203.0.113.5", "::ffff:cb00:7105",
    "\u0662\u0660\u0663.\u0660.\u0661\u0661\u0663.\u0665",  # Arabic-Indic digits: 203.0.113.5
    "\uff12\uff10\uff13.\uff10.\uff11\uff11\uff13.\uff15",  # fullwidth digits
    "203.0.113.5\u200f", "\u202e5.311.0.302", "203.0.113.5\u2028" + INJECT, "203.0.113.5\u0085" + INJECT,
    "203\u3002113\u30020\u30025", "203.0.113.05", "0203.0.113.5", "203.0.113.5/32", "203.0.113.0/24", "203.0.113.5 ",
    " 203.0.113.5", "203.0.113.5,", ",203.0.113.5", "203.0.113.5,,203.0.113.6", "0.0.0.0", "0.0.0.0/0", "::", "::/0",
    "255.255.255.255", "127.0.0.1", "10.0.0.1", "10.0.0.2", "8.8.8.8", "203.0.113.16", "203.0.113.15", "203.0.113.0",
    "198.51.100.5", "198.51.100.6", "192.0.2.3", "192.0.2.66", "team-b-static", "2001:db8::10", "2001:db8::f", "2001:db8::1",
    "203.0.113.5,8.8.8.8", "203.0.113.5, 2001:db8::5", "3405803781", "0xcb007105", "1e100", "-1", "0", "65536",
    "4294967296", "99999999999999999999", "1.5", "NaN", "inf", "true", "null",
    "65535:666", "65535:0", "0:0", "65535:65281", "65535:65282", "64512:777", "64512:7:7", "64512:777\n65535:666",
    "64512:777 65535:666", "64512:777]", "[65535:666]", "64512:777,65535:666", "4294967295:1:1", "65536:1",
    "\u0666\u0664\u0665\u0661\u0662:\u0667\u0667\u0667", "64512:777 ] next-hop 8.8.8.8 nlri 8.8.8.8/32 [",
    "east", "west", "east,west", "east\n", "east;", "east,east", "west,central,east", "east,west,central,north",
    "EAST", "\u00e9ast", "east " + INJECT, "e\u0430st",  # Cyrillic a
    "public", "team-a", "reserved", "public\n", " public ", "public;", "nosuchpool",
    "LoadBalancer", "ClusterIP", "Local", "Cluster", "IPv4", "IPv6", "IPv4\n", "SingleStack", "RequireDualStack",
    "TCP", "UDP", "tcp", "ICMP",
    "x" * 10000, "1" * 10000, "203.0.113.5," * 1000, "a," * 5000, ("64512:777," * 2000).rstrip(","),
    "\U0001F4A9", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "\x7f", "\x1b[31m",
)

# --- independent checks ------------------------------------------------------------------

_TOKEN_CHARS = re.compile(r"^[0-9a-z.:/\[\] ,-]+$")
_OCT = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = rf"{_OCT}(?:\.{_OCT}){{3}}"
_V6 = r"[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}"
_IP = rf"(?:{_V4}|{_V6})"
_NET = rf"(?:{_V4}/(?:3[0-2]|[12]?[0-9])|{_V6}/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))"
_U32 = r"(?:0|[1-9][0-9]{0,9})"
_U16 = r"(?:0|[1-9][0-9]{0,4})"
_FILTER = rf"neighbor {_IP}(?: , neighbor {_IP})*"
STRICT_ANNOUNCE = re.compile(
    rf"^{_FILTER} announce attributes next-hop {_IP} origin igp"
    rf"(?: med {_U32})?(?: local-preference {_U32})?(?: as-path \[{_U32}(?: {_U32})*\])?"
    rf"(?: community \[{_U16}:{_U16}(?: {_U16}:{_U16})*\])?"
    rf"(?: large-community \[{_U32}:{_U32}:{_U32}(?: {_U32}:{_U32}:{_U32})*\])?"
    rf" nlri {_NET}(?: {_NET})*$")
STRICT_WITHDRAW = re.compile(rf"^{_FILTER} withdraw attributes nlri {_NET}(?: {_NET})*$")
_IP_TOKEN = re.compile(rf"(?<![0-9a-f:.]){_IP}(?:/[0-9]+)?(?![0-9a-f:.])")


def check_line(line: str) -> None:
    """One command of our grammar, canonical, and exactly what its own parse re-builds."""
    assert isinstance(line, str) and line, line
    assert line.isascii() and line.isprintable(), f"non-printable or non-ASCII command: {line!r}"
    assert "\n" not in line and "\r" not in line and "\0" not in line, f"multi-line command: {line!r}"
    assert _TOKEN_CHARS.match(line), f"unexpected characters in {line!r}"
    assert STRICT_ANNOUNCE.match(line) or STRICT_WITHDRAW.match(line), f"not of the strict grammar: {line!r}"
    for token in _IP_TOKEN.findall(line):  # every address/prefix is in canonical form (no scope, no zeros)
        parsed = ipaddress.ip_network(token) if "/" in token else ipaddress.ip_address(token)
        assert str(parsed) == token, f"non-canonical {token!r} in {line!r}"
    parsed = parse_line(line)
    rebuilt = (announce_line(parsed.peers, parsed.attributes, parsed.prefixes) if parsed.action == "announce"
               else withdraw_line(parsed.peers, parsed.prefixes))
    assert rebuilt == line, f"{line!r} re-built from its typed values is {rebuilt!r}"


def batch_line(config: Config, batch: Batch) -> str:
    """The command for one reconciler batch, as the driver builds it (peer name → address)."""
    peers = [config.peer(name).address for name in batch.peers]
    if batch.action == "announce":
        return announce_line(peers, batch.attributes, batch.prefixes)
    return withdraw_line(peers, batch.prefixes)


def _allowed_networks(namespace: str) -> list:
    return [ipaddress.ip_network(c) for pool, cidrs in POOL_CIDRS.items() for c in cidrs
            if not POOL_NAMESPACES[pool] or namespace in POOL_NAMESPACES[pool]]


def _pool_name_of(prefix) -> Optional[str]:
    for pool, cidrs in POOL_CIDRS.items():
        if any(prefix.subnet_of(ipaddress.ip_network(c)) for c in cidrs
               if ipaddress.ip_network(c).version == prefix.version):
            return pool
    return None


def check_route(route: RouteIntent, topo: Topology = Topology(), drained: bool = False) -> None:
    """Invariant 1 and community policy for one planned route, computed from the raw config text."""
    prefix = route.prefix
    assert prefix.prefixlen == prefix.max_prefixlen, f"{prefix} is not a host route"
    assert route.services, route
    for service in route.services:
        namespace = service.split("/", 1)[0]
        assert any(prefix.version == n.version and prefix.subnet_of(n) for n in _allowed_networks(namespace)), (
            f"{prefix} announced for {service}, outside every pool namespace {namespace!r} may use")
    pool = _pool_name_of(prefix)
    assert pool is not None
    expected_nh = topo.node4 if prefix.version == 4 else topo.node6
    assert str(route.attributes.next_hop) == expected_nh, route
    allowed = {TIER_COMMUNITIES[t] for t in Tier} | set(POOL_ALLOWED_COMMUNITIES[pool])
    if (pool, route.peer) in ADVERTISED:
        allowed.add(ADVERTISED[(pool, route.peer)])
    if drained:
        allowed.add("65535:0")
    got = {str(c) for c in route.attributes.communities} | {str(c) for c in route.attributes.large_communities}
    assert got <= allowed, f"{prefix} to {route.peer} carries {sorted(got - allowed)} (allowed {sorted(allowed)})"
    assert route.attributes.as_path in ((), (MY_ASN,), (MY_ASN,) * 2, (MY_ASN,) * 3), route.attributes.as_path


@dataclass
class Outcome:
    routes: tuple[RouteIntent, ...]
    lines: list[str]
    skipped: tuple
    warnings: tuple
    allocation: Any


def run_pipeline(objects: Iterable[dict], config: Optional[Config] = None, node: str = "node-1",
                 previous: Sequence[RouteIntent] = (), topo: Topology = Topology(), drained: bool = False,
                 records: Optional[Sequence[AddressRecord]] = None) -> Outcome:
    """views → allocate → plan → diff (fresh, against `previous`, and withdraw-all) → command lines, all checked.

    With `records` (the allocation records that exist before), allocation is in records
    mode, and the claims it makes are granted as the API server would (create-if-absent)
    until there are none left: what the cluster settles on.
    """
    config = config or attack_config(topo)
    snapshot = snapshot_from_objects(list(objects))
    if records is None:
        allocation = allocate(config, snapshot.services.values())
    else:
        store = {record_key(r.address): r for r in records}
        while True:
            allocation = allocate_recorded(config, snapshot.services.values(), {LOCAL: dict(store)},
                                           config.cluster.name)
            if not allocation.claims:
                break
            for claim in allocation.claims:
                store.setdefault(record_key(claim.address), claim)
    result = plan(config, snapshot, node, allocation, drained=drained)
    lines: list[str] = []
    fresh: list[str] = []
    for desired, announced in ((result.routes, ()), (result.routes, previous), ((), result.routes)):
        for batch in diff(desired, announced):
            line = batch_line(config, batch)
            check_line(line)
            lines.append(line)
            if announced == () and desired is result.routes:
                fresh.append(line)
    for route in result.routes:
        check_route(route, topo, drained)
    # the fresh lines say exactly what the plan says: same (peer address, prefix) set
    announced = set()
    for line in fresh:
        parsed = parse_line(line)
        announced |= {(str(p), str(n)) for p in parsed.peers for n in parsed.prefixes}
    assert announced == {(str(config.peer(r.peer).address), str(r.prefix)) for r in result.routes}
    return Outcome(result.routes, lines, result.skipped, result.warnings, allocation)


def route_keys(routes: Iterable[RouteIntent]) -> set[tuple[str, str]]:
    return {(r.peer, str(r.prefix)) for r in routes}


# --- hostile values in every field the core reads (the injection fuzz, tests and lab) ---------------


def hostile_base() -> tuple[dict, dict]:
    """A tenant Service that would be announced if nothing about it were wrong."""
    return (service_obj("tenant", "evil", created="2025-06-01T00:00:00Z"), slice_obj("tenant", "evil"))


def _ann(key: str) -> Callable[[dict, dict, Any], None]:
    def set_(svc: dict, sl: dict, value: Any) -> None:
        svc["metadata"]["annotations"][key] = value
    return set_


def _spec(key: str) -> Callable[[dict, dict, Any], None]:
    def set_(svc: dict, sl: dict, value: Any) -> None:
        svc["spec"][key] = value
    return set_


def _port(key: str) -> Callable[[dict, dict, Any], None]:
    def set_(svc: dict, sl: dict, value: Any) -> None:
        svc["spec"]["ports"][0][key] = value
    return set_


def _name(svc: dict, sl: dict, value: Any) -> None:
    svc["metadata"]["name"] = value
    sl["metadata"]["labels"]["kubernetes.io/service-name"] = value  # keep it endpoint-backed


def _namespace(svc: dict, sl: dict, value: Any) -> None:
    svc["metadata"]["namespace"] = value
    sl["metadata"]["namespace"] = value


def _ingress(svc: dict, sl: dict, value: Any) -> None:
    svc["status"]["loadBalancer"]["ingress"] = [{"ip": value}]


def _ingress_two(svc: dict, sl: dict, value: Any) -> None:
    svc["status"]["loadBalancer"]["ingress"] = [{"ip": "203.0.113.9"}, {"ip": value, "hostname": value}]


def _families(svc: dict, sl: dict, value: Any) -> None:
    svc["spec"]["ipFamilies"] = [value]


def _ep_addr(svc: dict, sl: dict, value: Any) -> None:
    sl["endpoints"][0]["addresses"] = [value]


def _ep_node(svc: dict, sl: dict, value: Any) -> None:
    sl["endpoints"][0]["nodeName"] = value


def _ep_ready(svc: dict, sl: dict, value: Any) -> None:
    sl["endpoints"][0]["conditions"]["ready"] = value


def _annotation_key(svc: dict, sl: dict, value: Any) -> None:
    key = value if isinstance(value, (str, int, float, bool, type(None), bytes)) else repr(value)
    svc["metadata"]["annotations"][key] = "203.0.113.5"


# Every Service field and annotation the core reads (views.service_from_dict, allocator, planner).
FIELDS: dict[str, Callable[[dict, dict, Any], None]] = {
    "metadata.name": _name,
    "metadata.namespace": _namespace,
    "metadata.uid": lambda svc, sl, v: svc["metadata"].__setitem__("uid", v),
    "annotation-key": _annotation_key,
    "spec.type": _spec("type"),
    "spec.loadBalancerClass": _spec("loadBalancerClass"),
    "spec.externalTrafficPolicy": _spec("externalTrafficPolicy"),
    "spec.ipFamilies": _families,
    "spec.ipFamilyPolicy": _spec("ipFamilyPolicy"),
    "spec.loadBalancerIP": _spec("loadBalancerIP"),
    "spec.ports[0].name": _port("name"),
    "spec.ports[0].protocol": _port("protocol"),
    "spec.ports[0].port": _port("port"),
    "status.loadBalancer.ingress[0].ip": _ingress,
    "status.loadBalancer.ingress[1].ip": _ingress_two,
    "bgpspeaker.io/load-balancer-ips": _ann("bgpspeaker.io/load-balancer-ips"),
    "metallb.io/loadBalancerIPs": _ann("metallb.io/loadBalancerIPs"),
    "metallb.universe.tf/loadBalancerIPs": _ann("metallb.universe.tf/loadBalancerIPs"),
    "bgpspeaker.io/address-pool": _ann("bgpspeaker.io/address-pool"),
    "metallb.io/address-pool": _ann("metallb.io/address-pool"),
    "bgpspeaker.io/allow-shared-ip": _ann("bgpspeaker.io/allow-shared-ip"),
    "metallb.io/allow-shared-ip": _ann("metallb.io/allow-shared-ip"),
    "bgpspeaker.io/communities": _ann("bgpspeaker.io/communities"),
    "bgpspeaker.io/cluster-preference": _ann("bgpspeaker.io/cluster-preference"),
    "bgpspeaker.io/ip-allocated-from-pool": _ann("bgpspeaker.io/ip-allocated-from-pool"),
    "endpoints[0].addresses": _ep_addr,
    "endpoints[0].nodeName": _ep_node,
    "endpoints[0].conditions.ready": _ep_ready,
}
# Non-string shapes that YAML files (offline plan) or a buggy client could carry.
ODD_VALUES: tuple[Any, ...] = (None, 0, -1, 1, True, False, 65536, 2 ** 64, 10 ** 100, 1.5, float("nan"), [], {},
                               ["203.0.113.5"], {"ip": "203.0.113.5"}, b"203.0.113.5")
