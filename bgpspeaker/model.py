"""Frozen value types shared by every room: the slim views of Kubernetes objects and the routes.

Why slim views instead of the kubernetes client's models: the policy core must be a pure
function of plain values (testable without a cluster, comparable for "did anything really
change?"), and the client's model deserialisation is slow at 10,000 objects. The kube
side parses raw JSON straight into these.

Values that arrive from users (IPs in annotations, status, spec) stay *strings* here: they
are untrusted, and the allocator/planner decide — with a reason — whether they are valid.
Values that leave towards ExaBGP (RouteIntent) are *typed* (ipaddress objects, ints,
Community), so command text can only ever be built from validated values.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Union

if TYPE_CHECKING:  # records.py builds on this module's types
    from bgpspeaker.records import AddressRecord

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# (key, value) pairs sorted by key: hashable, comparable, deterministic.
Pairs = tuple[tuple[str, str], ...]

# JSON as parsed from, or about to be sent to, an API, vtysh or an HTTP client: genuinely
# any shape, checked where it is read (views.py, records.py, bfd/state.py). `Any` stands
# for data only, under a name: this, config/rules.Parsed, config/source.Value.
JSON = Any
JSONObject = Mapping[str, JSON]


def parse_ip(text: object) -> IPAddress:
    """An IP address from untrusted text, strictly: ValueError unless plain IPv4 or IPv6.

    `ipaddress` accepts IPv6 scope ids and keeps *any* text after `%` (newlines
    included), and str() prints it back: `fd00::2%x\nannounce route ...` would reach an
    ExaBGP command verbatim. Scoped addresses are link-local by nature and never a valid
    VIP or next-hop here, so they are refused outright (docs/design.md invariant 4).
    """
    if not isinstance(text, str) or "%" in text or not text.isascii():
        raise ValueError(f"{text!r} is not an IP address")
    return _parse_plain_ip(text)


@functools.lru_cache(maxsize=1 << 16)  # pure; re-parsing every Service's IPs on every event was ~10% (bench profile)
def _parse_plain_ip(text: str) -> IPAddress:
    if ":" not in text:
        # IPv4 through the C parser: 0.5 against 1.8 µs, once per Service and per record at a
        # cold start. inet_pton is as strict as ipaddress (four decimal octets, no leading
        # zero, nothing around them: tests/test_model.py checks both agree); what it
        # refuses, ipaddress is asked, so the error says why.
        try:
            return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
        except (OSError, ValueError):  # ValueError: an embedded NUL
            pass
    return ipaddress.ip_address(text)


def service_key(namespace: str, name: str) -> str:
    """A Service's `namespace/name`: its key, and its identity across clusters.

    Interned: the planner, the EndpointSlices' index and the allocator's memo each keep it
    per Service, and each asked for it anew; one string object per Service, not four (~200
    bytes a Service, tracemalloc). Interned strings are freed when nothing holds them."""
    return sys.intern(f"{namespace}/{name}")


class _HostNetwork:
    """What a route's /32 or /128 is: the ipaddress network, with two of its costs removed.

    - Its hash, computed once. ipaddress hashes a network in Python code, and a cold start
      hashed each route's prefix ~12 times (the desired, announced and in-flight keys, the
      diff's groups): 0.15 s of the loop's time at 50,000 routes (one process).
    - The hosts() closure ipaddress gives every host network in __init__: 170 of the 400
      bytes each announced address kept (8.5 MB at 50,000; tracemalloc). hosts() is
      answered by the class instead, the same answer.
    Equal, with the same hash, to the network ipaddress makes (dict keys mix both: the
    commands read back from ExaBGP are parsed plainly), and printed the same. No __slots__:
    ipaddress's networks have a __dict__ anyway."""

    _hash: int

    def __init__(self, address: object, strict: bool = True) -> None:
        super().__init__(address, strict)  # type: ignore[call-arg]
        if self.prefixlen == self.max_prefixlen:  # type: ignore[attr-defined]
            vars(self).pop("hosts", None)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def hosts(self) -> Any:  # a list for a host network, as ipaddress's closure answered
        if self.prefixlen == self.max_prefixlen:  # type: ignore[attr-defined]
            return [self.network_address]  # type: ignore[attr-defined]
        return super().hosts()  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__bases__[1].__name__}({str(self)!r})"


class _HostNetwork4(_HostNetwork, ipaddress.IPv4Network):
    pass


class _HostNetwork6(_HostNetwork, ipaddress.IPv6Network):
    pass


# The only subclasses of ipaddress's networks a command line may print (exabgp/commands.py
# checks exact types: a subclass could print anything): ours print as ipaddress does.
HOST_PREFIX_TYPES = (_HostNetwork4, _HostNetwork6)


def host_prefix(address: IPAddress) -> IPNetwork:
    """The /32 or /128 announced for `address` (from its integer: no text parsed)."""
    return (_HostNetwork4 if address.version == 4 else _HostNetwork6)((int(address), address.max_prefixlen))


def quote(value: object, limit: int = 64) -> str:
    """repr() of an untrusted value for a message, cut to `limit` characters.

    Messages end up in Events, logs and terminals: repr escapes newlines and control
    characters, and the cut keeps a megabyte annotation from becoming a megabyte Event.
    The one quoting helper for messages (config errors, refusals, skips).
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def next_hop_problem(address: IPAddress) -> Optional[str]:
    """Why routers would refuse `address` as a next-hop ("loopback, reserved"), or None if usable.

    The one home of the rule: the planner skips a Service with `invalidNextHop` for it (so
    `plan` and `explain` say so) and the command builder refuses the same addresses at send
    time. A router that gets such a next-hop resets the session, and ExaBGP re-sends it on
    every reconnect, forever (docs/reference/exabgp-api.md §9).
    """
    bad = [
        what
        for what, test in (
            ("loopback", address.is_loopback),
            ("unspecified", address.is_unspecified),
            ("multicast", address.is_multicast),
            ("link-local", address.is_link_local),
            ("reserved", address.is_reserved),
        )
        if test
    ]
    if address.version == 4 and address in _THIS_NETWORK:
        bad.append("this-network")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        bad.append("ipv4-mapped")
    return ", ".join(bad) or None


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_dns_subdomain(name: object) -> bool:
    """RFC 1123 subdomain, what Kubernetes requires of Node names (≤ 253 characters)."""
    return isinstance(name, str) and len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name) is not None


def freeze_pairs(mapping: Optional[Mapping[str, str]]) -> Pairs:
    """A dict of labels or annotations as sorted (key, value) pairs."""
    return tuple(sorted((mapping or {}).items()))


class Tier(enum.Enum):
    """A cluster's preference for one Service, most preferred first."""

    PRIMARY = "primary"
    SECONDARY = "secondary"
    TERTIARY = "tertiary"

    @property
    def rank(self) -> int:
        """0 for primary, 1 for secondary, 2 for tertiary: lower is preferred."""
        return TIERS_IN_ORDER.index(self)


TIERS_IN_ORDER = (Tier.PRIMARY, Tier.SECONDARY, Tier.TERTIARY)
LOWEST_TIER = TIERS_IN_ORDER[-1]


@dataclass(frozen=True, order=True)
class Community:
    """A standard BGP community (RFC 1997), `asn:value` with both halves 16-bit."""

    asn: int
    value: int

    def __post_init__(self) -> None:
        for half in (self.asn, self.value):
            if type(half) is not int or not 0 <= half <= 0xFFFF:
                raise ValueError(f"community halves must be integers 0..65535, got {self.asn!r}:{self.value!r}")

    @classmethod
    def parse(cls, text: str) -> "Community":
        parts = _split_community(text, 2, "community", "ASN:VALUE")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.asn}:{self.value}"


@dataclass(frozen=True, order=True)
class LargeCommunity:
    """A large BGP community (RFC 8092), `global:local1:local2`, each 32-bit."""

    global_admin: int
    local1: int
    local2: int

    def __post_init__(self) -> None:
        for part in (self.global_admin, self.local1, self.local2):
            if type(part) is not int or not 0 <= part <= 0xFFFFFFFF:
                raise ValueError(f"large community parts must be integers 0..4294967295, got {self}")

    @classmethod
    def parse(cls, text: str) -> "LargeCommunity":
        parts = _split_community(text, 3, "large community", "GLOBAL:LOCAL1:LOCAL2")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.global_admin}:{self.local1}:{self.local2}"


# RFC 8326: routers lower the preference of routes carrying it; what `drain` attaches.
GRACEFUL_SHUTDOWN = Community(65535, 0)


def parse_any_community(text: str) -> Union[Community, LargeCommunity]:
    """`a:b` is a standard community, `a:b:c` a large one; anything else is a ValueError."""
    if isinstance(text, str) and text.count(":") == 2:
        return LargeCommunity.parse(text)
    return Community.parse(text)


def _split_community(text: object, count: int, what: str, form: str) -> tuple[int, ...]:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string {form}, got {text!r}")
    parts = text.split(":")
    # isdigit() is true for non-ASCII digits such as '٣'; only 0-9 may reach a command line.
    if len(parts) != count or not all(p and p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a {what} ({form})")
    return tuple(int(p) for p in parts)


# --- slim views of Kubernetes objects -------------------------------------------------


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str  # TCP | UDP | SCTP
    port: int


@dataclass(frozen=True)
class ServiceView:
    """What the core needs of a Service. IP fields are raw strings: untrusted input."""

    namespace: str
    name: str
    uid: str = ""
    type: str = "LoadBalancer"
    created: str = ""  # metadata.creationTimestamp (RFC 3339 sorts as text): the tie-break for conflicts
    load_balancer_class: Optional[str] = None
    external_traffic_policy: str = "Cluster"  # Cluster | Local
    ip_families: tuple[str, ...] = ()  # spec.ipFamilies, e.g. ("IPv4", "IPv6")
    ip_family_policy: Optional[str] = None  # SingleStack | PreferDualStack | RequireDualStack
    ports: tuple[ServicePort, ...] = ()
    annotations: Pairs = ()
    load_balancer_ip: Optional[str] = None  # spec.loadBalancerIP (deprecated upstream, still read)
    ingress_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[*].ip, as written by whoever wrote it

    @property
    def key(self) -> str:
        return service_key(self.namespace, self.name)

    def annotation(self, *names: str) -> Optional[str]:
        """The value of the first of `names` that is present (ours first, then MetalLB's)."""
        found = dict(self.annotations)
        for name in names:
            if name in found:
                return found[name]
        return None


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool
    node_name: Optional[str] = None
    serving: Optional[bool] = None
    terminating: bool = False


@dataclass(frozen=True)
class EndpointSliceView:
    namespace: str
    name: str
    service_name: str  # label kubernetes.io/service-name
    address_type: str = "IPv4"
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str:
        return service_key(self.namespace, self.service_name)


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Pairs = ()
    addresses: tuple[tuple[str, str], ...] = ()  # (type, address), e.g. ("InternalIP", "10.0.0.2")
    ready: bool = True

    def label(self, key: str) -> Optional[str]:
        return dict(self.labels).get(key)

    def address_of(self, version: int) -> Optional[IPAddress]:
        """The node's first InternalIP (else ExternalIP) of that IP version, parsed."""
        for wanted in ("InternalIP", "ExternalIP"):
            for kind, text in self.addresses:
                if kind != wanted:
                    continue
                try:
                    address = parse_ip(text)
                except ValueError:
                    continue
                if address.version == version:
                    return address
        return None


@dataclass(frozen=True)
class Snapshot:
    """Everything the core reads from Kubernetes, keyed by `namespace/name` (nodes by name).

    Not hashable (it holds dicts); compare with ==.
    """

    services: Mapping[str, ServiceView]
    endpoint_slices: Mapping[str, EndpointSliceView]
    nodes: Mapping[str, NodeView]
    # The allocation records by store (local | shared), only of the stores read at least
    # once; None while this cluster has not imported its allocations into records yet
    # (then the allocator works from Service status, as before records).
    records: Optional[Mapping[str, Mapping[str, AddressRecord]]] = None

    @classmethod
    def of(
        cls,
        services: Iterable[ServiceView] = (),
        endpoint_slices: Iterable[EndpointSliceView] = (),
        nodes: Iterable[NodeView] = (),
    ) -> "Snapshot":
        return cls(
            services={s.key: s for s in services},
            endpoint_slices={e.key: e for e in endpoint_slices},
            nodes={n.name: n for n in nodes},
        )

    def records_identity(self) -> Optional["SameObjects"]:
        """What an allocation read of the records, compared by identity: the watcher replaces a
        store's dict when a record in it changes (copy on write), and keeps it otherwise."""
        if self.records is None:
            return None
        return SameObjects(records for _, records in sorted(self.records.items()))


class SameObjects(tuple):
    """A tuple whose == compares its items by identity (cheap, and exact for copy-on-write dicts)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, tuple) and len(self) == len(other) and all(a is b for a, b in zip(self, other))

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__


# --- what the node announces ----------------------------------------------------------


@dataclass(frozen=True)
class RouteAttributes:
    """The path attributes of one announcement, all typed and validated.

    `as_path` is the AS_PATH as sent: our ASN first, repeated for prepends (ExaBGP sends an
    explicit as-path verbatim on eBGP, see docs/reference/exabgp-api.md §9). `local_pref` is None
    toward eBGP peers, where it would be dropped anyway.
    """

    next_hop: IPAddress
    as_path: tuple[int, ...]
    med: Optional[int] = None
    local_pref: Optional[int] = None
    communities: tuple[Community, ...] = ()  # sorted, no duplicates
    large_communities: tuple[LargeCommunity, ...] = ()  # sorted, no duplicates

    def sort_key(self) -> tuple:
        """A total order for deterministic output (IPv4 and IPv6 next-hops do not compare)."""
        return (
            self.next_hop.version,
            int(self.next_hop),
            self.as_path,
            -1 if self.med is None else self.med,
            -1 if self.local_pref is None else self.local_pref,
            self.communities,
            self.large_communities,
        )


@dataclass(frozen=True)
class RouteIntent:
    """One prefix this node wants announced to one peer (by peer name), and why."""

    prefix: IPNetwork
    peer: str
    attributes: RouteAttributes
    tier: Tier
    services: tuple[str, ...]  # namespace/name of the Service(s) behind it (several when sharing an IP)

    @property
    def key(self) -> tuple[str, IPNetwork]:
        """What identifies an announcement at a router: a peer and a prefix."""
        return (self.peer, self.prefix)
