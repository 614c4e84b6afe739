"""The typed, validated configuration: what the rest of the program reads.

Only `config.load` builds these from YAML (with every error and its field path); tests
and the planner build them directly. Every field is already parsed (ipaddress objects,
ints, Community), so nothing downstream re-validates or re-parses text. Defaults match
the YAML defaults of DESIGN.md.
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
class PeerConfig:
    name: str
    address: IPAddress
    asn: int
    port: int = 179
    hold_time: int = 90  # 0 or 3..65535
    password_file: Optional[str] = None  # TCP MD5; the secret itself is never held in config
    password_env: Optional[str] = None  # TCP MD5 from this environment variable (instead of a file)
    ebgp_multihop: Optional[int] = None  # TTL
    source_address: Optional[IPAddress] = None  # default: the node's address of the peer's family
    node_selector: Pairs = ()  # matchLabels; empty = every node

    def is_ibgp(self, my_asn: int) -> bool:
        return self.asn == my_asn

    def selects(self, node_labels: Pairs) -> bool:
        labels = dict(node_labels)
        return all(labels.get(k) == v for k, v in self.node_selector)


@dataclass(frozen=True)
class PoolConfig:
    name: str
    addresses: tuple[IPNetwork, ...]  # CIDRs; a range a-b is stored as the CIDRs that cover exactly a..b
    auto_assign: bool = True
    avoid_buggy_ips: bool = False  # skip IPv4 addresses ending in .0 or .255 (MetalLB's meaning)
    namespaces: tuple[str, ...] = ()  # empty = every namespace may use it
    allowed_communities: tuple[AnyCommunity, ...] = ()  # what a Service may add via annotation

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
class Config:
    cluster: ClusterConfig
    speaker: SpeakerConfig
    peers: tuple[PeerConfig, ...] = ()
    pools: tuple[PoolConfig, ...] = ()
    tiers: Mapping[Tier, TierAttributes] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    advertisements: tuple[Advertisement, ...] = ()
    exabgp: ExabgpConfig = ExabgpConfig()
    metrics: MetricsConfig = MetricsConfig()

    def peer(self, name: str) -> PeerConfig:
        for peer in self.peers:
            if peer.name == name:
                return peer
        raise KeyError(name)

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)
