"""`bgpspeaker audit`: the addresses a fleet of clusters announces, checked across clusters (pure).

Why it exists: clusters allocate independently (each from its own Services' status), so
two clusters can hand one address to two different Services, and one Service can get a
different address in each cluster. The routers then hold one prefix for two Services, and
the day the preferred cluster fails, clients of one Service are sent to the other. No
single cluster can see this; the audit runs each cluster's own allocator and planner on
that cluster's config and object dump (exactly what the cluster computes) and compares
the results, so an operator can check an existing fleet before an upgrade.

Identity across clusters is namespace/name (namespace sameness, as in the Kubernetes
multi-cluster Services KEP). Findings:

- AddressConflict: one address assigned to two or more identities, in one cluster or
  across clusters. Services of one namespace that all carry the same allow-shared-ip key
  on disjoint ports share legally (the allocator's own sharing rule, applied across the
  fleet) and are not a conflict.
- SplitIdentity: one identity assigned different addresses in different clusters.

A finding is *real* when it holds among what the clusters announce now; it is *latent*
(lower severity) when it only involves an assignment not announced anywhere yet (the
cluster's tier for it is none, it has no endpoints, ...): it becomes real on a failover,
a preference change, or when its endpoints come up.

What "announced" means: a Service's address is announced by a cluster when the planner
puts it in at least one node's routes (the Nodes of the dump are planned in name order,
stopping once no further node can change the answer). A dump without Nodes cannot be planned; then an
assigned address counts as announced when the cluster's tier for the Service is not none
(ClusterSummary.basis says which rule was used). The reasons given for an address not
announced are the planner's reason codes from the nodes planned.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Iterable, Optional, Sequence

from bgpspeaker.allocator import allocate_snapshot, is_managed, sharing_key
from bgpspeaker.config.schema import Config
from bgpspeaker.model import JSON, IPAddress, JSONObject, ServiceView, Snapshot
from bgpspeaker.planner import plan, service_tier
from bgpspeaker.reasons import CLUSTER_WIDE

BASIS_NODES = "nodes"  # the planner ran on every Node of the dump
BASIS_TIER = "tier"  # no Nodes: assigned and the cluster's tier is not none counts as announced


@dataclass(frozen=True)
class ClusterInput:
    """One cluster: its config and a dump of its objects (`source` names them in messages)."""

    config: Config
    snapshot: Snapshot
    source: str = ""


@dataclass(frozen=True)
class Holder:
    """One identity holding an address in one cluster."""

    cluster: str
    identity: str  # namespace/name
    tier: Optional[str]  # the cluster's tier for it (primary/secondary/tertiary); None: not announced there
    announced: bool
    reason: str = ""  # why the address is not announced there (planner reason codes), "" when announced


@dataclass(frozen=True)
class AddressConflict:
    address: IPAddress
    holders: tuple[Holder, ...]  # sorted by cluster, then identity
    latent: bool  # fewer than two of the conflicting identities announce it now


@dataclass(frozen=True)
class Placement:
    """The addresses one identity is assigned in one cluster."""

    cluster: str
    addresses: tuple[IPAddress, ...]  # sorted, IPv4 first
    tier: Optional[str]
    announced: bool  # at least one of them is announced there
    reason: str = ""


@dataclass(frozen=True)
class SplitIdentity:
    identity: str
    placements: tuple[Placement, ...]  # sorted by cluster
    latent: bool  # the clusters that announce it agree; only an unannounced assignment differs


@dataclass(frozen=True)
class ClusterSummary:
    name: str
    source: str
    services: int  # LoadBalancer Services of this speaker's class
    assigned: int
    announced: int  # Services with at least one announced address
    basis: str  # BASIS_NODES or BASIS_TIER


@dataclass(frozen=True)
class Report:
    clusters: tuple[ClusterSummary, ...]
    conflicts: tuple[AddressConflict, ...]  # real ones first, then by address
    splits: tuple[SplitIdentity, ...]  # real ones first, then by identity

    @property
    def clean(self) -> bool:
        return not self.conflicts and not self.splits


# --- one cluster -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Held:
    """What one cluster computes for one assigned Service."""

    cluster: str
    service: ServiceView
    addresses: tuple[IPAddress, ...]
    announced: frozenset[IPAddress]
    tier: Optional[str]
    reason: str


def _address_order(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))


def _cluster(item: ClusterInput) -> tuple[ClusterSummary, list[_Held]]:
    config, snapshot = item.config, item.snapshot
    name = config.cluster.name
    allocation = allocate_snapshot(config, snapshot)  # as this cluster's allocator would
    wanted = {key: set(assignment.addresses) for key, assignment in allocation.assigned.items()}
    announced: dict[str, set[IPAddress]] = defaultdict(set)
    reasons: dict[str, set[str]] = defaultdict(set)
    tiers = {key: service_tier(config, snapshot.services[key])[0] for key in wanted}
    if snapshot.nodes:
        basis = BASIS_NODES
        # Addresses whose fate another node could still change: planning stops when none
        # is left (all announced, or their Service skipped for a reason no node changes),
        # which in a healthy cluster is after the first node.
        open_ = {key: set(addresses) for key, addresses in wanted.items()}
        for node in sorted(snapshot.nodes):
            result = plan(config, snapshot, node, allocation)
            for route in result.routes:
                address = route.prefix.network_address  # always a host prefix
                for key in route.services:
                    if address in wanted.get(key, ()):
                        announced[key].add(address)
                        open_.get(key, set()).discard(address)
            for skip in result.skipped:
                reasons[skip.service].add(skip.reason)
                if skip.reason in CLUSTER_WIDE:
                    open_.pop(skip.service, None)
            open_ = {key: rest for key, rest in open_.items() if rest}
            if not open_:
                break
    else:
        basis = BASIS_TIER
        for key, addresses in wanted.items():
            if tiers[key] is not None:
                announced[key] = set(addresses)
            else:
                reasons[key].add(service_tier(config, snapshot.services[key])[1])
    held = []
    for key, assignment in allocation.assigned.items():
        tier = tiers[key]
        held.append(
            _Held(
                cluster=name,
                service=snapshot.services[key],
                addresses=tuple(sorted(assignment.addresses, key=_address_order)),
                announced=frozenset(announced.get(key, ())),
                tier=None if tier is None else tier.value,
                reason=", ".join(sorted(reasons.get(key, ()))) or ("" if announced.get(key) else "notAnnounced"),
            )
        )
    summary = ClusterSummary(
        name=name,
        source=item.source,
        services=sum(1 for s in snapshot.services.values() if is_managed(config, s)),
        assigned=len(allocation.assigned),
        announced=sum(1 for h in held if h.announced),
        basis=basis,
    )
    return summary, held


# --- across clusters ---------------------------------------------------------------------


def _legal_sharing(held: Sequence[_Held]) -> bool:
    """Whether these holders of one address may share it: one identity, or the allocator's
    sharing rule across the fleet (one namespace, one allow-shared-ip key on every holder,
    no port used by two identities)."""
    identities = {h.service.key for h in held}
    if len(identities) < 2:
        return True
    if len({h.service.namespace for h in held}) > 1:
        return False
    keys = {sharing_key(h.service) for h in held}
    if len(keys) > 1 or None in keys:
        return False
    ports: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for h in held:
        ports[h.service.key].update((p.protocol, p.port) for p in h.service.ports)
    return all(not (ports[a] & ports[b]) for a, b in combinations(sorted(ports), 2))


def _holder(h: _Held, address: IPAddress) -> Holder:
    announced = address in h.announced
    return Holder(
        cluster=h.cluster,
        identity=h.service.key,
        tier=h.tier,
        announced=announced,
        reason="" if announced else h.reason,
    )


def _conflicts(everything: Iterable[_Held]) -> list[AddressConflict]:
    by_address: dict[IPAddress, list[_Held]] = defaultdict(list)
    for h in everything:
        for address in h.addresses:
            by_address[address].append(h)
    found = []
    for address, held in by_address.items():
        if _legal_sharing(held):
            continue
        live = [h for h in held if address in h.announced]
        holders = tuple(sorted((_holder(h, address) for h in held), key=lambda x: (x.cluster, x.identity)))
        found.append(AddressConflict(address=address, holders=holders, latent=_legal_sharing(live)))
    return sorted(found, key=lambda c: (c.latent, _address_order(c.address)))


def _splits(everything: Iterable[_Held]) -> list[SplitIdentity]:
    by_identity: dict[str, list[_Held]] = defaultdict(list)
    for h in everything:
        by_identity[h.service.key].append(h)
    found = []
    for identity, held in by_identity.items():
        if len({h.addresses for h in held}) < 2:
            continue
        live = {h.addresses for h in held if h.announced}
        placements = tuple(
            sorted(
                (
                    Placement(
                        cluster=h.cluster,
                        addresses=h.addresses,
                        tier=h.tier,
                        announced=bool(h.announced),
                        reason="" if h.announced else h.reason,
                    )
                    for h in held
                ),
                key=lambda p: p.cluster,
            )
        )
        found.append(SplitIdentity(identity=identity, placements=placements, latent=len(live) < 2))
    return sorted(found, key=lambda s: (s.latent, s.identity))


def audit(clusters: Sequence[ClusterInput]) -> Report:
    """What every cluster assigns and announces, and every conflict between them.

    ValueError when two inputs name the same cluster (config.cluster.name): their
    findings could not be told apart, and one cluster's dump was most likely given twice.
    """
    seen: dict[str, str] = {}
    for item in clusters:
        name = item.config.cluster.name
        if name in seen:
            raise ValueError(
                f"cluster {name!r} is given twice ({seen[name] or 'first input'} and "
                f"{item.source or 'a later input'}): each cluster once, with its own config"
            )
        seen[name] = item.source
    summaries, everything = [], []
    for item in clusters:
        summary, held = _cluster(item)
        summaries.append(summary)
        everything.extend(held)
    return Report(clusters=tuple(summaries), conflicts=tuple(_conflicts(everything)), splits=tuple(_splits(everything)))


# --- rendering ---------------------------------------------------------------------------


def _prefix(address: IPAddress) -> str:
    return f"{address}/{address.max_prefixlen}"


def _state(announced: bool, tier: Optional[str], reason: str) -> tuple[str, str]:
    """(verb, parenthesis) for one cluster's view of one identity."""
    if announced:
        return "announces", tier or "?"
    why = f"not announced: {reason}" if reason else "not announced"
    return "assigns", f"{tier}, {why}" if tier else why


def conflict_line(conflict: AddressConflict) -> str:
    """`203.0.113.0/32: east announces default/shop (primary), west announces default/payroll (secondary)`"""
    parts = []
    for h in conflict.holders:
        verb, note = _state(h.announced, h.tier, h.reason)
        parts.append(f"{h.cluster} {verb} {h.identity} ({note})")
    return ("latent: " if conflict.latent else "") + f"{_prefix(conflict.address)}: " + ", ".join(parts)


def split_line(split: SplitIdentity) -> str:
    """`default/shop: east announces 203.0.113.0 (primary), west announces 203.0.113.1 (secondary)`"""
    parts = []
    for p in split.placements:
        verb, note = _state(p.announced, p.tier, p.reason)
        parts.append(f"{p.cluster} {verb} {', '.join(map(str, p.addresses))} ({note})")
    return ("latent: " if split.latent else "") + f"{split.identity}: " + ", ".join(parts)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def report_text(report: Report) -> str:
    """One line per finding (real first, latent ones prefixed `latent:`), then a summary line."""
    lines = [conflict_line(c) for c in report.conflicts if not c.latent]
    lines += [split_line(s) for s in report.splits if not s.latent]
    lines += [conflict_line(c) for c in report.conflicts if c.latent]
    lines += [split_line(s) for s in report.splits if s.latent]
    clusters = ", ".join(f"{c.name} {c.announced}/{c.assigned} announced" for c in report.clusters)
    if report.clean:
        lines.append(
            f"ok: {_count(len(report.clusters), 'cluster')} ({clusters}): no address held by two "
            f"Services, no Service with two addresses"
        )
    else:
        latent = sum(c.latent for c in report.conflicts) + sum(s.latent for s in report.splits)
        real_conflicts = sum(not c.latent for c in report.conflicts)
        real_splits = sum(not s.latent for s in report.splits)
        lines.append(
            f"found: {_count(real_conflicts, 'address conflict')}, "
            f"{_count(real_splits, 'split Service')}, {latent} latent "
            f"({_count(len(report.clusters), 'cluster')}: {clusters})"
        )
    return "\n".join(lines) + "\n"


def report_json(report: Report) -> dict[str, JSON]:
    return {
        "clusters": [
            {
                "name": c.name,
                "source": c.source,
                "services": c.services,
                "assigned": c.assigned,
                "announced": c.announced,
                "basis": c.basis,
            }
            for c in report.clusters
        ],
        "conflicts": [
            {
                "address": str(c.address),
                "latent": c.latent,
                "holders": [
                    {
                        "cluster": h.cluster,
                        "service": h.identity,
                        "tier": h.tier,
                        "announced": h.announced,
                        "reason": h.reason,
                    }
                    for h in c.holders
                ],
            }
            for c in report.conflicts
        ],
        "splits": [
            {
                "service": s.identity,
                "latent": s.latent,
                "clusters": [
                    {
                        "cluster": p.cluster,
                        "addresses": [str(a) for a in p.addresses],
                        "tier": p.tier,
                        "announced": p.announced,
                        "reason": p.reason,
                    }
                    for p in s.placements
                ],
            }
            for s in report.splits
        ],
    }


def report_from_json(data: JSONObject) -> Report:
    """The inverse of report_json (for tools that consume `audit --format json`)."""
    ip = ipaddress.ip_address
    return Report(
        clusters=tuple(
            ClusterSummary(
                name=c["name"],
                source=c["source"],
                services=c["services"],
                assigned=c["assigned"],
                announced=c["announced"],
                basis=c["basis"],
            )
            for c in data["clusters"]
        ),
        conflicts=tuple(
            AddressConflict(
                address=ip(c["address"]),
                latent=c["latent"],
                holders=tuple(
                    Holder(
                        cluster=h["cluster"],
                        identity=h["service"],
                        tier=h["tier"],
                        announced=h["announced"],
                        reason=h["reason"],
                    )
                    for h in c["holders"]
                ),
            )
            for c in data["conflicts"]
        ),
        splits=tuple(
            SplitIdentity(
                identity=s["service"],
                latent=s["latent"],
                placements=tuple(
                    Placement(
                        cluster=p["cluster"],
                        addresses=tuple(ip(a) for a in p["addresses"]),
                        tier=p["tier"],
                        announced=p["announced"],
                        reason=p["reason"],
                    )
                    for p in s["clusters"]
                ),
            )
            for s in data["splits"]
        ),
    )
