"""The typed, validated configuration: what the rest of the program reads.

Only `config.load` builds these from YAML (with every error and its field path); tests
and the planner build them directly. Every field is already parsed (ipaddress objects,
ints, Community), so nothing downstream re-validates or re-parses text. Defaults match
the YAML defaults of docs/design.md §3.2.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from bgpspeaker.model import Community, IPAddress, IPNetwork, LargeCommunity, Pairs, Tier

AnyCommunity = Union[Community, LargeCommunity]


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    default_tier: Optional[Tier] = Tier.PRIMARY  # None: Services without a preference are not announced
    # The fleet switch (daemon.py, "maintenance"): every node of the cluster drains ("drain":
    # graceful-shutdown community and the lowest tier, kept) or drains then withdraws after
    # speaker.drainSeconds ("withdraw"). None: in service.
    maintenance: Optional[str] = None


@dataclass(frozen=True)
class SpeakerConfig:
    my_asn: int
    router_id: Optional[ipaddress.IPv4Address] = None  # None = auto: the node's IPv4 address
    load_balancer_class: str = ""  # "" = Services with no class; else only that class
    shutdown: str = "withdraw"  # withdraw | keep
    drain_seconds: float = 5.0


@dataclass(frozen=True)
class ExabgpConfig:
    graceful_restart: int = 120  # seconds; 0 = off


@dataclass(frozen=True)
class LabelRequirement:
    """One matchExpressions entry, with Kubernetes' meaning of each operator."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()  # non-empty for In/NotIn, empty otherwise (the loader enforces it)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":  # a node without the label matches, as in Kubernetes
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes LabelSelector: every matchLabels pair and every expression must hold (empty = all)."""

    match_labels: Pairs = ()
    match_expressions: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            e.matches(labels) for e in self.match_expressions
        )

    def requirements(self) -> tuple[LabelRequirement, ...]:
        """matchLabels as `In [value]` requirements, then the expressions: one form to reason about."""
        return tuple(LabelRequirement(k, "In", (v,)) for k, v in self.match_labels) + self.match_expressions


def may_overlap(a: LabelSelector, b: LabelSelector) -> bool:
    """False only when no set of labels can match both selectors (exact: keys are independent).

    Per key, the requirements of both selectors must be satisfiable together: a value that
    every In allows and no NotIn forbids, or, when nothing needs the key present, its absence.
    """
    by_key: dict[str, list[LabelRequirement]] = {}
    for requirement in a.requirements() + b.requirements():
        by_key.setdefault(requirement.key, []).append(requirement)
    for requirements in by_key.values():
        present = any(r.operator in ("In", "Exists") for r in requirements)
        absent = any(r.operator == "DoesNotExist" for r in requirements)
        if present and absent:
            return False
        allowed: Optional[set[str]] = None
        for r in requirements:
            if r.operator == "In":
                allowed = set(r.values) if allowed is None else allowed & set(r.values)
        forbidden = {v for r in requirements if r.operator == "NotIn" for v in r.values}
        if allowed is not None and not allowed - forbidden:
            return False
    return True


def effective_selectors(match_labels: Pairs, selectors: tuple[LabelSelector, ...]) -> tuple[LabelSelector, ...]:
    if not selectors:
        return (LabelSelector(match_labels),)
    return tuple(
        LabelSelector(tuple(sorted(set(match_labels) | set(s.match_labels))), s.match_expressions) for s in selectors
    )


@dataclass(frozen=True)
class PeerConfig:
    name: str
    address: IPAddress
    asn: int
    port: int = 179
    hold_time: int = 90  # 0 or 3..65535
    # ExaBGP 5.0 always sends keepalives every third of the negotiated hold time; the loader
    # accepts keepaliveTime only when it says exactly that (None = not written).
    keepalive_time: Optional[int] = None
    graceful_restart: Optional[int] = None  # seconds, 0 = off; None = exabgp.gracefulRestart
    password_file: Optional[str] = None  # TCP MD5; the secret itself is never held in config
    password_env: Optional[str] = None  # TCP MD5 from this environment variable (instead of a file)
    ebgp_multihop: Optional[int] = None  # TTL
    source_address: Optional[IPAddress] = None  # default: the node's address of the peer's family
    node_selector: Pairs = ()  # `nodeSelector`: matchLabels shorthand; empty = every node
    node_selectors: tuple[LabelSelector, ...] = ()  # `nodeSelectors` (MetalLB's shape): any may match
    bfd_profile: Optional[str] = None  # name of a BfdProfile; None = no BFD for this session

    def is_ibgp(self, my_asn: int) -> bool:
        return self.asn == my_asn

    def selectors(self) -> tuple[LabelSelector, ...]:
        """The node selectors in one form: a node is selected when any of them matches.

        The loader refuses nodeSelector and nodeSelectors together; code building a
        PeerConfig directly with both gets the shorthand added to every selector.
        """
        return effective_selectors(self.node_selector, self.node_selectors)

    def selects(self, node_labels: Pairs) -> bool:
        labels = dict(node_labels)
        return any(selector.matches(labels) for selector in self.selectors())

    def graceful_restart_time(self, default: int) -> int:
        return default if self.graceful_restart is None else self.graceful_restart


@dataclass(frozen=True)
class BfdProfile:
    """MetalLB's BFDProfile, field for field (defaults and ranges too); milliseconds.

    The router's detection time for this node is the node's detect multiplier times the
    interval the two sides agree on (max of our transmit and its receive interval).
    """

    name: str
    receive_interval: int = 300
    transmit_interval: int = 300
    detect_multiplier: int = 3
    echo_mode: bool = False
    echo_interval: int = 50
    passive_mode: bool = False
    minimum_ttl: int = 254  # multi-hop sessions only: packets with a lower TTL are dropped


@dataclass(frozen=True)
class PoolConfig:
    name: str
    addresses: tuple[IPNetwork, ...]  # CIDRs; a range a-b is stored as the CIDRs that cover exactly a..b
    auto_assign: bool = True
    avoid_buggy_ips: bool = False  # skip IPv4 addresses ending in .0 or .255 (MetalLB's meaning)
    namespaces: tuple[str, ...] = ()  # empty = every namespace may use it
    allowed_communities: tuple[AnyCommunity, ...] = ()  # what a Service may add via annotation
    # Shared by several clusters: its allocation records live in the config's sharedStore,
    # which every cluster announcing the pool uses (else in this cluster's own API).
    shared: bool = False
    # Addresses pinned to one identity (namespace/name): given to it, never to another.
    reservations: tuple[tuple[IPAddress, str], ...] = ()

    def allows_namespace(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    def contains(self, address: IPAddress) -> bool:
        return any(address in network for network in self.addresses)


@dataclass(frozen=True)
class TierAttributes:
    med: Optional[int] = None
    local_pref: Optional[int] = None
    as_path_prepend: int = 0  # extra copies of our ASN after the first
    communities: tuple[Community, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()
    # Hysteresis (planner.py, "health"): below min_ready_endpoints ready endpoints in the
    # cluster, or within rise_seconds of becoming healthy again, a Service is announced
    # with the lowest tier instead of this one. Losing health is immediate.
    min_ready_endpoints: int = 1
    rise_seconds: float = 0.0


DEFAULT_TIERS: Mapping[Tier, TierAttributes] = {
    Tier.PRIMARY: TierAttributes(med=100, local_pref=300, as_path_prepend=0),
    Tier.SECONDARY: TierAttributes(med=200, local_pref=200, as_path_prepend=1),
    Tier.TERTIARY: TierAttributes(med=300, local_pref=100, as_path_prepend=2),
}


@dataclass(frozen=True)
class Advertisement:
    """Extra attributes for routes of some pools toward some peers (empty tuple = all)."""

    pools: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    communities: tuple[Community, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()

    def applies(self, pool: str, peer: str) -> bool:
        return (not self.pools or pool in self.pools) and (not self.peers or peer in self.peers)


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "0.0.0.0"
    port: int = 7472


@dataclass(frozen=True)
class HealthConfig:
    """Probes. `address`: a second listener for /healthz and /readyz (say 127.0.0.1:7473, which
    a hostNetwork pod's probes reach); None = only on metrics.address. /healthz fails once the
    node has been unable to announce (ExaBGP not running or not connected) for
    `fail_after_seconds`, so the kubelet restarts a speaker that cannot recover by itself."""

    host: Optional[str] = None
    port: Optional[int] = None
    fail_after_seconds: float = 120.0


@dataclass(frozen=True)
class StoreConfig:
    """Where the records of shared pools live: a namespace in the API of one cluster."""

    kubeconfig: str  # a file; the store's API, reached with the credentials it holds
    namespace: str = "bgpspeaker-records"


@dataclass(frozen=True)
class Config:
    cluster: ClusterConfig
    speaker: SpeakerConfig
    peers: tuple[PeerConfig, ...] = ()
    pools: tuple[PoolConfig, ...] = ()
    tiers: Mapping[Tier, TierAttributes] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    advertisements: tuple[Advertisement, ...] = ()
    bfd_profiles: tuple[BfdProfile, ...] = ()
    exabgp: ExabgpConfig = ExabgpConfig()
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()
    shared_store: Optional[StoreConfig] = None  # the record store of pools marked `shared`

    def peer(self, name: str) -> PeerConfig:
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    def bfd_profile(self, name: str) -> BfdProfile:
        for profile in self.bfd_profiles:
            if profile.name == name:
                return profile
        raise KeyError(name)

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)
