"""Snapshot + allocation → the routes one node announces, each decision with its reason (pure).

Why one pass that records reasons instead of a filter pipeline: `plan` (what the daemon
announces) and `explain` (what a user reads) must never disagree. Both run the same
per-Service decision code; `explain` merely asks it to keep the step-by-step trail for
one Service, and `plan` drops it.

Safety (docs/design.md invariant 1): the planner announces only addresses the allocation
assigned, and re-checks each against the pools the Service's namespace may use — so
whatever a Service's status says, and even if the allocation were wrong, an address
outside an allowed pool is never planned.

Time: the tier hysteresis (minReadyEndpoints, riseSeconds; `_health`) needs history, yet
the planner stays a pure function: the caller passes `now` and the health records the
last plan returned, and the plan says when to plan again (`wake_at`). The daemon keeps
both; offline `plan`/`explain` have no history and see every healthy Service as settled.

Trade-off: routes are built per (peer, prefix) with fully typed attributes (RouteIntent),
which costs a little memory at 10,000 Services but lets the reconciler diff by plain
equality; identical attribute sets are built once and shared through a cache.
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass, field
from itertools import chain
from typing import Iterable, Mapping, Optional, Sequence, Union

from bgpspeaker.allocator import Allocation, is_managed, pool_of
from bgpspeaker.annotations import (
    COMMUNITIES_ANNOTATION,
    EXCLUDE_LABEL,
    MIN_READY_ANNOTATION,
    PREFERENCE_ANNOTATION,
    RISE_ANNOTATION,
    parse_preference,
)
from bgpspeaker.config.schema import Config, PeerConfig, PoolConfig
from bgpspeaker.model import (
    GRACEFUL_SHUTDOWN,
    LOWEST_TIER,
    TIERS_IN_ORDER,
    Community,
    EndpointSliceView,
    IPAddress,
    LargeCommunity,
    NodeView,
    RouteAttributes,
    RouteIntent,
    ServiceView,
    Snapshot,
    Tier,
    host_prefix,
    next_hop_problem,
    parse_any_community,
    quote,
)
from bgpspeaker.reasons import (
    ALLOCATION_PENDING,
    COMMUNITY_NOT_ALLOWED,
    INVALID_COMMUNITY,
    INVALID_NEXT_HOP,
    INVALID_PREFERENCE,
    NO_DEFAULT_TIER,
    NO_ENDPOINTS,
    NO_LOCAL_ENDPOINTS,
    NO_NODE_ADDRESS,
    NO_PEERS,
    NODE_EXCLUDED,
    NODE_NOT_FOUND,
    NODE_NOT_READY,
    NOT_ALLOCATED,
    INVALID_THRESHOLD,
    NOT_IN_POOL,
    NOT_LISTED,
    POOL_NOT_ALLOWED,
)
from bgpspeaker.reconciler import Routes, replaced_keys

_THRESHOLD_ANNOTATIONS = frozenset((MIN_READY_ANNOTATION, RISE_ANNOTATION))


@dataclass(frozen=True)
class Skip:
    """A Service (or one of its addresses) not announced from this node, or a warning about it."""

    service: str
    reason: str
    message: str


# A Service's health record (see `Health`): None = unhealthy; a float = healthy since then,
# still rising. Absent = healthy and settled, or not tracked (riseSeconds 0).
HealthRecord = Optional[float]
Health = Mapping[str, HealthRecord]
_ABSENT = object()


@dataclass(frozen=True)
class Plan:
    routes: tuple[RouteIntent, ...]  # sorted by prefix, then peer
    skipped: tuple[Skip, ...]  # sorted by service, reason, message
    # Announced anyway, but something in the Service was ignored (e.g. communityNotAllowed).
    warnings: tuple[Skip, ...] = ()
    # For the next plan: the health records (pass them back as `health`), and the time (on
    # the caller's `now` clock) at which a rising Service's riseSeconds ends: plan again then.
    health: Health = field(default_factory=dict, compare=False)
    wake_at: Optional[float] = field(default=None, compare=False)


@dataclass(frozen=True)
class Step:
    """One step of the decision for one Service, as `explain` prints it."""

    name: str  # class, allocation, pool, preference, communities, node, endpoints, nextHop, peers, sharing
    ok: bool  # False: this step stopped (part of) the announcement
    detail: str
    reason: str = ""
    warning: bool = False  # ok, but something the Service asked for was ignored (reason says what)


@dataclass(frozen=True)
class Explanation:
    service: str
    node: str
    announced: bool
    steps: tuple[Step, ...]
    routes: tuple[RouteIntent, ...]  # this Service's routes from the very same plan
    skipped: tuple[Skip, ...]
    warnings: tuple[Skip, ...]


# --- parsing of the Service's own wishes -----------------------------------------------


def service_tier(config: Config, service: ServiceView) -> tuple[Optional[Tier], str, str]:
    """(tier, reason if none, why) for this cluster."""
    text = dict(service.annotations).get(PREFERENCE_ANNOTATION)
    cluster = config.cluster.name
    if text is None:
        tier = config.cluster.default_tier
        if tier is None:
            return (
                None,
                NO_DEFAULT_TIER,
                (f"no {PREFERENCE_ANNOTATION} annotation and cluster {cluster!r} has defaultTier none"),
            )
        return tier, "", f"no {PREFERENCE_ANNOTATION} annotation: cluster {cluster!r} default tier {tier.value}"
    try:
        names = parse_preference(text)
    except ValueError as error:
        return None, INVALID_PREFERENCE, f"annotation {PREFERENCE_ANNOTATION}: {error}"
    if cluster not in names:
        return None, NOT_LISTED, f"cluster {cluster!r} is not listed in {PREFERENCE_ANNOTATION} {quote(text)}"
    tier = TIERS_IN_ORDER[names.index(cluster)]
    return tier, "", f"cluster {cluster!r} is #{names.index(cluster) + 1} in {quote(text)}: {tier.value}"


def service_communities(
    service: ServiceView, pool: PoolConfig
) -> tuple[tuple[Union[Community, LargeCommunity], ...], list[tuple[str, str]]]:
    """The Service's extra communities that its pool allows, and [(warning reason, message)]."""
    text = dict(service.annotations).get(COMMUNITIES_ANNOTATION)
    if text is None:
        return (), []
    allowed, warnings = [], []
    for item in (part.strip() for part in text.split(",")):
        try:
            community = parse_any_community(item)
        except ValueError as error:
            # The model's message quotes the whole item: use it only when the item is short.
            why = str(error) if len(item) <= 48 else f"{quote(item)} is not a community"
            warnings.append((INVALID_COMMUNITY, f"annotation {COMMUNITIES_ANNOTATION}: {why}; not added"))
            continue
        if community not in pool.allowed_communities:
            warnings.append(
                (
                    COMMUNITY_NOT_ALLOWED,
                    f"annotation {COMMUNITIES_ANNOTATION}: {community} is not in "
                    f"pool {pool.name!r} allowedCommunities; not added",
                )
            )
            continue
        if community not in allowed:
            allowed.append(community)
    return tuple(allowed), _capped(warnings)


# Warnings per Service and source: the first few say what is wrong, one more says how many
# were left out. 20,000 bad communities in one annotation made 20,000 warnings, log lines
# and Event requests (issue 14).
MAX_WARNINGS = 3


def _capped(warnings: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if len(warnings) <= MAX_WARNINGS + 1:
        return warnings
    more = len(warnings) - MAX_WARNINGS
    reason = warnings[MAX_WARNINGS][0]
    return warnings[:MAX_WARNINGS] + [
        (
            reason,
            f"annotation {COMMUNITIES_ANNOTATION}: {more} more items not added "
            f"(only the first {MAX_WARNINGS} problems are listed)",
        )
    ]


def service_thresholds(config: Config, tier: Tier, service: ServiceView) -> tuple[int, float, str, list[str]]:
    """(minReadyEndpoints, riseSeconds, where they come from, [warnings]) for a Service of `tier`:
    the tier's config values, each overridden by the Service's annotation when it parses."""
    attributes = config.tiers[tier]
    minimum, rise = attributes.min_ready_endpoints, attributes.rise_seconds
    origin, problems = f"tier {tier.value}", []
    annotations = dict(service.annotations)
    text = annotations.get(MIN_READY_ANNOTATION)
    if text is not None:
        try:
            value = int(text.strip())
            if not 1 <= value <= 100_000:
                raise ValueError
            minimum, origin = value, "annotation"
        except ValueError:
            problems.append(
                f"annotation {MIN_READY_ANNOTATION}: {quote(text)} is not a whole number 1..100000; "
                f"using {minimum} from the {tier.value} tier"
            )
    text = annotations.get(RISE_ANNOTATION)
    if text is not None:
        try:
            number = float(text.strip())
            if not (math.isfinite(number) and 0 <= number <= 86_400):
                raise ValueError
            rise, origin = number, "annotation"
        except ValueError:
            problems.append(
                f"annotation {RISE_ANNOTATION}: {quote(text)} is not a number of seconds 0..86400; "
                f"using {rise:g} from the {tier.value} tier"
            )
    return minimum, rise, origin, problems


# --- the per-node, per-Service decision ----------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    address: IPAddress
    pool: PoolConfig
    tier: Tier
    service: str
    communities: tuple[Union[Community, LargeCommunity], ...]


class _Context:
    """What is the same for every Service on this node: computed once per plan."""

    def __init__(
        self,
        config: Config,
        snapshot: Snapshot,
        node_name: str,
        allocation: Allocation,
        drained: bool,
        now: float = 0.0,
        health: Optional[Health] = None,
    ):
        self.config, self.snapshot, self.allocation, self.drained = config, snapshot, allocation, drained
        self.now, self.health = now, health
        # what the Service being decided leaves for the next plan: (its health record, or
        # _ABSENT; the time its rise ends, or None). Set by _decide, read by _run.
        self.outcome: tuple[object, Optional[float]] = (_ABSENT, None)
        self.node_name = node_name
        self.node: Optional[NodeView] = snapshot.nodes.get(node_name)
        self.node_problem: Optional[tuple[str, str]] = None
        self.peers: tuple[PeerConfig, ...] = ()
        if self.node is None:
            self.node_problem = (NODE_NOT_FOUND, f"node {node_name!r} is not among the Nodes")
        else:
            if not self.node.ready:
                self.node_problem = (NODE_NOT_READY, f"node {node_name!r} is not Ready")
            elif self.node.label(EXCLUDE_LABEL) is not None:
                self.node_problem = (NODE_EXCLUDED, f"node {node_name!r} is labelled {EXCLUDE_LABEL}")
            self.peers = tuple(p for p in config.peers if p.selects(self.node.labels))
        self.next_hops: dict[int, tuple[Optional[IPAddress], str, str]] = {}
        for version in (4, 6):
            address = self.node.address_of(version) if self.node is not None else None
            if address is None:
                self.next_hops[version] = (None, NO_NODE_ADDRESS, f"node {node_name!r} has no IPv{version} address")
                continue
            problem = next_hop_problem(address)
            if problem:
                self.next_hops[version] = (
                    None,
                    INVALID_NEXT_HOP,
                    f"node {node_name!r} IPv{version} address {address} is {problem}: not a next-hop",
                )
            else:
                self.next_hops[version] = (address, "", f"next-hop {address}")
        self.slices: Mapping[str, list[EndpointSliceView]] = {}  # by Service key: _run sets the memo's index
        # the tiers with hysteresis configured (usually none): the others skip service_thresholds
        self.hysteresis = frozenset(
            t for t, a in config.tiers.items() if a.min_ready_endpoints > 1 or a.rise_seconds > 0
        )
        self._attributes: dict[tuple, RouteAttributes] = {}

    def attributes(
        self,
        tier: Tier,
        pool: PoolConfig,
        peer: PeerConfig,
        next_hop: IPAddress,
        extra: tuple[Union[Community, LargeCommunity], ...],
    ) -> RouteAttributes:
        key = (tier, pool.name, peer.name, next_hop, extra)
        found = self._attributes.get(key)
        if found is not None:
            return found
        config = self.config
        tier_attributes = config.tiers[tier]
        communities = set(tier_attributes.communities)
        large = set(tier_attributes.large_communities)
        for advertisement in config.advertisements:
            if advertisement.applies(pool.name, peer.name):
                communities.update(advertisement.communities)
                large.update(advertisement.large_communities)
        for community in extra:
            if isinstance(community, LargeCommunity):
                large.add(community)
            else:
                communities.add(community)
        if self.drained:
            communities.add(GRACEFUL_SHUTDOWN)
        my_asn = config.speaker.my_asn
        ibgp = peer.is_ibgp(my_asn)
        # iBGP: no AS_PATH of our own and no prepends — the peer shares our ASN, sees it in
        # the path and discards the route as a loop (RFC 4271 §9.1.2). Preference toward
        # iBGP peers is expressed with local-preference, which only iBGP carries.
        as_path = () if ibgp else (my_asn,) * (1 + tier_attributes.as_path_prepend)
        found = RouteAttributes(
            next_hop=next_hop,
            as_path=as_path,
            med=tier_attributes.med,
            local_pref=tier_attributes.local_pref if ibgp else None,  # dropped on eBGP anyway
            communities=tuple(sorted(communities)),
            large_communities=tuple(sorted(large)),
        )
        self._attributes[key] = found
        return found


def _decide(
    ctx: _Context, service: ServiceView, skips: list[Skip], warnings: list[Skip], trail: Optional[list[Step]]
) -> list[_Candidate]:
    """The candidates (address, tier, communities) this Service contributes from this node."""
    key = service.key

    def step(name: str, ok: bool, detail, reason: str = "", warning: bool = False) -> None:
        # `detail` is a string or, on the hot path, a lambda: plan() keeps no trail, and
        # formatting ~10 messages per Service was a third of plan time at 10,000 Services.
        if trail is not None:
            trail.append(Step(name, ok, detail() if callable(detail) else detail, reason, warning))

    def skip(name: str, reason: str, message: str) -> list[_Candidate]:
        skips.append(Skip(key, reason, message))
        step(name, False, message, reason)
        return []

    config = ctx.config
    if not is_managed(config, service):
        wanted = config.speaker.load_balancer_class or "(none)"
        step(
            "class",
            False,
            f"type {service.type}, loadBalancerClass {service.load_balancer_class or '(none)'}: "
            f"not handled by this speaker (type LoadBalancer, class {wanted}); nothing to announce",
        )
        return []
    step("class", True, lambda: f"type LoadBalancer, loadBalancerClass {service.load_balancer_class or '(none)'}")

    allocation = ctx.allocation
    refusal = allocation.refused.get(key)
    if refusal is not None:
        return skip("allocation", refusal.reason, refusal.message)
    assignment = allocation.assigned.get(key)
    if assignment is None:
        waiting = allocation.pending.get(key)
        if waiting is not None:  # records mode: nothing is announced before its record exists
            return skip("allocation", ALLOCATION_PENDING, waiting)
        return skip("allocation", NOT_ALLOCATED, "the allocator has not assigned an address")
    for dropped in allocation.discarded.get(key, ()):
        step("allocation", True, f"ignored: {dropped.message}", dropped.reason, warning=True)
    step(
        "allocation",
        True,
        lambda: f"assigned {', '.join(map(str, assignment.addresses))} from pool {assignment.pool!r}",
    )

    # Invariant 1: re-check every address against the pools the namespace may use, from
    # the config itself, whatever the allocation or the Service status claims.
    addresses: list[tuple[IPAddress, PoolConfig]] = []
    for address in assignment.addresses:
        pool = pool_of(config, address)
        if pool is None:
            skip("pool", NOT_IN_POOL, f"{address} is not in any configured pool: never announced")
        elif not pool.allows_namespace(service.namespace):
            skip(
                "pool",
                POOL_NOT_ALLOWED,
                f"{address} is in pool {pool.name!r}, which namespace "
                f"{service.namespace!r} may not use: never announced",
            )
        else:
            step(
                "pool",
                True,
                lambda address=address, pool=pool: (
                    f"{address} is in pool {pool.name!r}, which namespace {service.namespace!r} may use"
                ),
            )
            addresses.append((address, pool))
    if not addresses:
        return []

    tier, reason, why = service_tier(config, service)
    if tier is None:
        return skip("preference", reason, why)
    step("preference", True, why)

    extras: dict[str, tuple] = {}
    for pool in {pool.name: pool for _, pool in addresses}.values():
        allowed, problems = service_communities(service, pool)
        extras[pool.name] = allowed
        for reason, message in problems:
            warnings.append(Skip(key, reason, message))
            step("communities", True, message, reason, warning=True)
        if allowed:
            step(
                "communities",
                True,
                lambda allowed=allowed, pool=pool: (
                    f"adds {', '.join(map(str, allowed))} (allowed by pool {pool.name!r})"
                ),
            )

    if ctx.node_problem is not None:
        return skip("node", *ctx.node_problem)
    step("node", True, lambda: f"node {ctx.node_name!r} is Ready and not excluded")

    slices = ctx.slices.get(key, ())
    minimum, rise = 1, 0.0
    if tier in ctx.hysteresis or any(k in _THRESHOLD_ANNOTATIONS for k, _ in service.annotations):
        minimum, rise, origin, threshold_problems = service_thresholds(config, tier, service)
        for problem in threshold_problems:
            warnings.append(Skip(key, INVALID_THRESHOLD, problem))
            step("health", True, problem, INVALID_THRESHOLD, warning=True)
    ready = -1  # counted only when needed: the hot path (defaults 1 and 0) never counts twice
    if minimum > 1 or rise > 0 or service.external_traffic_policy != "Local":
        ready = sum(1 for s in slices for e in s.endpoints if e.ready)
    demoted = _health(ctx, key, ready, minimum, rise, origin, step) if minimum > 1 or rise > 0 else False
    if service.external_traffic_policy == "Local":
        # Only ready endpoints count; kube-proxy would drop traffic for a node without one.
        local = sum(1 for s in slices for e in s.endpoints if e.ready and e.node_name == ctx.node_name)
        if not local:
            return skip(
                "endpoints",
                NO_LOCAL_ENDPOINTS,
                f"externalTrafficPolicy Local and no ready endpoint on node {ctx.node_name!r}",
            )
        step("endpoints", True, lambda: f"externalTrafficPolicy Local: {local} ready endpoint(s) on this node")
    else:
        if not ready:
            return skip("endpoints", NO_ENDPOINTS, "no ready endpoint in the cluster")
        step("endpoints", True, lambda: f"externalTrafficPolicy Cluster: {ready} ready endpoint(s) in the cluster")

    if not ctx.peers:
        return skip("peers", NO_PEERS, f"no configured peer selects node {ctx.node_name!r}")
    step("peers", True, lambda: "peers " + ", ".join(p.name for p in ctx.peers))

    effective = LOWEST_TIER if ctx.drained or demoted else tier
    if ctx.drained:
        step(
            "drain",
            True,
            f"drained (this node, or cluster.maintenance): announced with {GRACEFUL_SHUTDOWN} "
            f"and the {LOWEST_TIER.value} tier",
        )
    candidates = []
    for address, pool in addresses:
        next_hop, reason, why = ctx.next_hops[address.version]
        if next_hop is None:
            skip("nextHop", reason, f"{address}: {why}")
            continue
        step("nextHop", True, lambda address=address, why=why: f"{address}: {why}")
        candidates.append(_Candidate(address, pool, effective, key, extras[pool.name]))
    return candidates


def _health(ctx: _Context, key: str, ready: int, minimum: int, rise: float, origin: str, step) -> bool:
    """Hysteresis: whether the Service is demoted to the lowest tier, and its record for the next plan.

    Healthy = at least `minimum` ready endpoints in the cluster. Unhealthy: demoted at once
    (with no ready endpoint at all the caller withdraws it). Healthy again: demoted until it
    has stayed healthy for `rise` seconds, so a readiness that flaps cannot pull traffic
    back at every flap; losing health again restarts the wait. Time enters only through
    `ctx.now` and the records the caller passes back (`ctx.health`): no history (None, a
    fresh daemon) counts a healthy Service as settled, so a restart moves no traffic.
    """
    if ready < minimum:
        ctx.outcome = (None if rise > 0 else _ABSENT, None)
        step(
            "health",
            True,
            lambda: (
                f"{ready} ready endpoint(s), below minReadyEndpoints {minimum} ({origin}): "
                f"announced with the {LOWEST_TIER.value} tier"
            ),
        )
        return True
    since: Optional[float] = None  # settled, or not tracked
    if ctx.health is not None and rise > 0 and key in ctx.health:
        record = ctx.health[key]
        since = ctx.now if record is None else record  # None: unhealthy until now, healthy from now on
    if since is None or ctx.now >= since + rise:
        ctx.outcome = (_ABSENT, None)
        step(
            "health",
            True,
            lambda: (
                f"{ready} ready endpoint(s) >= minReadyEndpoints {minimum}"
                + (f", healthy for longer than riseSeconds {rise:g}" if rise > 0 else "")
                + f" ({origin})"
            ),
        )
        return False
    rising_since, until = since, since + rise
    ctx.outcome = (rising_since, until)
    step(
        "health",
        True,
        lambda: (
            f"healthy again {ctx.now - rising_since:.1f} s ago, riseSeconds {rise:g} "
            f"({origin}): announced with the {LOWEST_TIER.value} tier for "
            f"{until - ctx.now:.1f} s more"
        ),
    )
    return True


Addr = tuple[int, int]  # (version, int address): the routes' sort order, and hashed in C


class PlanMemo:
    """What the last plan decided, per Service and per address, for the next plan to start from.

    Why: an endpoint event changes one Service, but a plan that walks them all cost 28 ms
    per event with 10,000 Services (bench). A decision is a pure function of its inputs:
    the node-wide ones (config, this node's view, drain) and the Service's own (its view,
    its EndpointSlices, its allocation entries). The snapshot's dicts and the allocation
    are replaced, never mutated, when they change (kube/watcher.py), and so are the views
    in them. So when only the EndpointSlices changed, the Services to look at again are
    those whose slices are not the same objects as last time, found by identity in C;
    when the Services or the allocation changed, those whose view or allocation entries
    are not the same objects (by identity, in C; the records allocator keeps the entries
    of what it did not re-decide) have their inputs compared; when a node-wide input
    changed, everything is decided afresh. Routes and skips of unchanged Services are the very same objects as in the
    last plan, which lets the daemon and the driver diff plans by identity too. The result
    is the one a fresh plan gives (tests/test_planner.py checks the two side by side).
    `plan` without a memo uses a fresh one: one code path.
    """

    def __init__(self) -> None:
        self._scope: Optional[tuple] = None
        self._services: Optional[Mapping] = None  # the snapshot dicts and allocation of the last plan
        self._slices: Mapping[str, EndpointSliceView] = {}
        self._allocation: Optional[Allocation] = None
        self._slices_of: dict[str, list[EndpointSliceView]] = {}  # Service key -> its EndpointSlices
        self._decisions: dict[str, tuple] = {}  # key -> (inputs, keyed candidates, skips, warnings)
        self._candidates: dict[Addr, list[_Candidate]] = {}  # every Service's, by address
        self._routes: dict[Addr, tuple] = {}  # address -> (its candidates, its routes in peer-name order)
        self._order: list[Addr] = []  # the addresses with routes, sorted
        self._skipped = _SortedNotes()  # every Service's skips, sorted, kept by difference
        self._warned = _SortedNotes()  # and warnings
        self._health: Optional[Health] = None  # the health records the last plan returned
        self._rising: dict[str, float] = {}  # Service key -> when its rise ends (its decision depends on `now`)
        self._last_routes: Optional[Routes] = None  # the routes the last plan returned (what the next one changes)

    def _dirty(
        self, config: Config, ctx: "_Context", snapshot: Snapshot, allocation: Allocation
    ) -> set[str] | Iterable[str]:
        """The Service keys to look at again, with the slice index brought up to date.
        All of them in the snapshot's order when starting afresh: the cold start's plan
        walks memory in the order it was allocated (a set's order cost it 20 %, measured)."""
        scope = (config, ctx.node, ctx.node_name, ctx.drained)
        fresh = self._scope is None or self._scope[0] is not config or self._scope[1:] != scope[1:]
        dirty: Iterable[str]
        if fresh:
            PlanMemo.__init__(self)  # forget everything
            self._scope = scope
            for view in snapshot.endpoint_slices.values():
                self._slices_of.setdefault(view.service_key, []).append(view)
            dirty = snapshot.services.keys()
        else:
            dirty = set()
            # Only the keys whose Service view or allocation entry is not the same object as
            # last time: the others' inputs are those of their decision (a new Service among
            # 10,000 compared every Service's inputs, 28-38 % of that event's CPU, bench profile).
            if snapshot.services is not self._services:
                dirty = replaced_keys(self._services or {}, snapshot.services)
            last = self._allocation
            if last is None:
                dirty = set(self._decisions).union(snapshot.services)
            elif allocation is not last:
                for old_entries, new_entries in (
                    (last.assigned, allocation.assigned),
                    (last.refused, allocation.refused),
                    (last.discarded, allocation.discarded),
                    (last.pending, allocation.pending),
                ):
                    if old_entries is not new_entries:
                        dirty |= replaced_keys(old_entries, new_entries)
            if snapshot.endpoint_slices is not self._slices:
                for key in replaced_keys(self._slices, snapshot.endpoint_slices):
                    old, new = self._slices.get(key), snapshot.endpoint_slices.get(key)
                    if old is not None:
                        siblings = self._slices_of[old.service_key]
                        siblings.remove(old)
                        if not siblings:
                            del self._slices_of[old.service_key]
                        dirty.add(old.service_key)
                    if new is not None:
                        self._slices_of.setdefault(new.service_key, []).append(new)
                        dirty.add(new.service_key)
        self._services, self._slices, self._allocation = snapshot.services, snapshot.endpoint_slices, allocation
        if not fresh:
            # Time and health: a rise that ended, and health records other than those the last
            # plan returned (a caller that kept its own), are decided again. Both sets are
            # small: only Services with riseSeconds are tracked, only rising ones have an end.
            extra = {key for key, until in self._rising.items() if ctx.now >= until}
            health = ctx.health
            if health is not self._health:
                before, after = self._health or {}, health or {}
                extra.update(key for key, _ in before.items() ^ after.items())
                if (self._health is None) != (health is None):
                    extra.update(self._decisions)  # no history <-> history: every tracked decision may differ
            if extra:
                dirty = set(dirty) | extra
        return dirty


def _keyed(candidates: list[_Candidate]) -> list[tuple[Addr, _Candidate]]:
    """Each candidate with its address as (version, int): the key the routes are grouped and sorted by."""
    return [((c.address.version, int(c.address)), c) for c in candidates]


def _run(
    config: Config,
    snapshot: Snapshot,
    node_name: str,
    allocation: Allocation,
    drained: bool,
    trace: Optional[str] = None,
    memo: Optional[PlanMemo] = None,
    now: float = 0.0,
    health: Optional[Health] = None,
) -> tuple[Plan, list[Step]]:
    memo = memo if memo is not None else PlanMemo()
    ctx = _Context(config, snapshot, node_name, allocation, drained, now, health)
    dirty = memo._dirty(config, ctx, snapshot, allocation)
    ctx.slices = memo._slices_of
    trail: list[Step] = []
    if trace is not None and trace not in dirty:
        dirty = [*dirty, trace]
    touched: dict[Addr, None] = {}  # addresses whose candidates changed, in the order met
    records: dict[str, object] = {}  # health records that changed: key -> record, or _ABSENT to drop
    known = health or {}
    for key in dirty:
        service = snapshot.services.get(key)
        old = memo._decisions.get(key)
        prior = known.get(key, _ABSENT)
        inputs = (
            None
            if service is None
            else (
                service,
                tuple(memo._slices_of.get(key, ())),
                allocation.refused.get(key),
                allocation.assigned.get(key),
                allocation.discarded.get(key),
                allocation.pending.get(key),
                prior,
                ctx.now >= memo._rising[key] if key in memo._rising else None,
            )
        )
        if old is not None and old[0] == inputs and key != trace:
            continue
        if old is not None:
            for address_key, candidate in old[1]:
                memo._candidates[address_key].remove(candidate)
                touched[address_key] = None
            del memo._decisions[key]
            memo._skipped.remove(old[2])
            memo._warned.remove(old[3])
        memo._rising.pop(key, None)
        if service is None:
            if prior is not _ABSENT:
                records[key] = _ABSENT  # gone: forgotten
            continue
        skips: list[Skip] = []
        warnings: list[Skip] = []
        ctx.outcome = (prior, None)  # a decision that stops before the health step keeps the record
        keyed = _keyed(_decide(ctx, service, skips, warnings, trail if key == trace else None))
        record, until = ctx.outcome
        if record is not prior and record != prior:
            records[key] = record
        if until is not None:
            memo._rising[key] = until
        memo._decisions[key] = (inputs, keyed, skips, warnings)
        memo._skipped.add(skips)
        memo._warned.add(warnings)
        for address_key, candidate in keyed:
            memo._candidates.setdefault(address_key, []).append(candidate)
            touched[address_key] = None

    peers = sorted(ctx.peers, key=lambda p: p.name)
    appeared, vanished, rerouted = [], [], []  # rerouted: the addresses whose routes changed
    added: list[RouteIntent] = []  # route objects new since the last plan, and those gone (Routes)
    removed: list[RouteIntent] = []
    for order in touched:
        candidates = memo._candidates.get(order)
        if not candidates:
            memo._candidates.pop(order, None)
            gone = memo._routes.pop(order, None)
            if gone is not None:
                vanished.append(order)
                rerouted.append(order)
                removed.extend(gone[1])
            continue
        found = memo._routes.get(order)
        if found is not None and found[0] == candidates and trace is None:
            continue  # decided again, the same way: keep the very same route objects
        if found is None:
            appeared.append(order)
        else:
            removed.extend(found[1])
        memo._routes[order] = (list(candidates), _routes_for(ctx, candidates, peers, trace, trail))
        rerouted.append(order)
        added.extend(memo._routes[order][1])
    _keep_sorted(memo._order, appeared, vanished)
    last = memo._last_routes
    routes: Routes
    if last is not None and not rerouted:
        routes = last  # the very same object: consumers see "nothing changed" by identity
    else:
        if last is not None and len(rerouted) <= BISECT_LIMIT:
            routes = Routes(_spliced(last, rerouted, memo._routes))
        else:
            # Routes in (family, address, peer) order: the addresses are kept sorted between
            # plans (a sort key per route was most of an incremental plan at 10,000 Services),
            # and the routes are gathered in C.
            routes = Routes(chain.from_iterable(map(_ROUTES, map(memo._routes.__getitem__, memo._order))))
        if last is not None:
            routes.since(last, added, removed)
    memo._last_routes = routes
    if records or health is None:  # a new mapping only when a record changed: the caller's is never mutated
        new_health: dict[str, HealthRecord] = dict(known)
        for key, record in records.items():
            if record is _ABSENT:
                new_health.pop(key, None)
            else:
                new_health[key] = record  # type: ignore[assignment]
        health = new_health
    memo._health = health
    plan_ = Plan(
        routes=routes,
        skipped=memo._skipped.sorted(),
        warnings=memo._warned.sorted(),
        health=health,
        wake_at=min(memo._rising.values(), default=None),
    )
    return plan_, trail


_ROUTES = operator.itemgetter(1)

# Up to this many changes, a sorted sequence the plan keeps (its addresses, its routes, its
# skips and warnings) is updated in place by bisection; beyond it, rebuilt with one sort or
# gathered afresh. Gathering all 10,000 addresses' routes at every plan was ~12 ms of each
# in the daemon (py-spy, a new Service among 10,000: 28 % of its CPU).
BISECT_LIMIT = 64


_BY_TEXT = operator.attrgetter("service", "reason", "message")


class _SortedNotes:
    """Skips (or warnings) of every Service, sorted by service, reason and message, kept by
    difference: sorting all of them again at every plan was a walk over every skipped
    Service per event. The Skip objects of one decision are new objects, so a removed one
    is found by identity among its equals."""

    def __init__(self) -> None:
        self._items: list[Skip] = []
        self._added: list[Skip] = []
        self._removed: list[Skip] = []
        self._sorted: tuple[Skip, ...] = ()

    def add(self, notes: list[Skip]) -> None:
        self._added.extend(notes)

    def remove(self, notes: list[Skip]) -> None:
        self._removed.extend(notes)

    def sorted(self) -> tuple[Skip, ...]:
        added, removed, items = self._added, self._removed, self._items
        if not added and not removed:
            return self._sorted
        if len(added) + len(removed) > BISECT_LIMIT:
            gone = set(map(id, removed))
            items[:] = sorted([n for n in items if id(n) not in gone] + added, key=_BY_TEXT)
        else:
            for note in removed:
                i = bisect.bisect_left(items, _BY_TEXT(note), key=_BY_TEXT)
                while items[i] is not note:
                    i += 1
                del items[i]
            for note in added:
                bisect.insort(items, note, key=_BY_TEXT)
        added.clear()
        removed.clear()
        self._sorted = tuple(items)
        return self._sorted


def _route_address(route: RouteIntent) -> Addr:
    """A route's address key, as the plan's routes are sorted by (family, address, then peer)."""
    return (route.prefix.version, int(route.prefix.network_address))


def _spliced(
    last: Sequence[RouteIntent], rerouted: list[Addr], routes_at: Mapping[Addr, tuple]
) -> Iterable[RouteIntent]:
    """`last` (sorted by address) with the routes of each address in `rerouted` replaced by
    its routes in `routes_at` (none: gone)."""
    pieces: list[Sequence[RouteIntent]] = []
    start = 0
    for address in sorted(rerouted):
        lo = bisect.bisect_left(last, address, lo=start, key=_route_address)
        hi = bisect.bisect_right(last, address, lo=lo, key=_route_address)
        pieces.append(last[start:lo])
        entry = routes_at.get(address)
        if entry is not None:
            pieces.append(entry[1])
        start = hi
    pieces.append(last[start:])
    return chain.from_iterable(pieces)


def _keep_sorted(order: list[Addr], appeared: list[Addr], vanished: list[Addr]) -> None:
    """`order` (sorted) without `vanished` and with `appeared`: a bisect for an event's few, a sort for many."""
    if len(appeared) + len(vanished) > BISECT_LIMIT:
        gone = set(vanished)
        order[:] = sorted([a for a in order if a not in gone] + appeared)
        return
    for address in vanished:
        i = bisect.bisect_left(order, address)
        if i < len(order) and order[i] == address:
            del order[i]
    for address in appeared:
        bisect.insort(order, address)


def _routes_for(
    ctx: _Context, candidates: list[_Candidate], peers: list[PeerConfig], trace: Optional[str], trail: list[Step]
) -> list[RouteIntent]:
    """One address's routes, one per peer. Services sharing the address: one route, the most
    preferred tier among them, and the union of their (already pool-checked) communities."""
    address = candidates[0].address
    tier = min((c.tier for c in candidates), key=lambda t: t.rank)
    extra = tuple(sorted({x for c in candidates for x in c.communities}, key=lambda x: (type(x).__name__, x)))
    services = tuple(sorted({c.service for c in candidates}))
    pool = candidates[0].pool
    next_hop = ctx.next_hops[address.version][0]
    if next_hop is None:  # never: _decide makes a candidate only where the family has a usable next hop
        return []
    prefix = host_prefix(address)
    if trace is not None and trace in services and len(services) > 1:
        trail.append(
            Step(
                "sharing",
                True,
                f"{address} is shared by {', '.join(services)}: announced once with "
                f"the most preferred tier among them, {tier.value}",
            )
        )
    return [
        RouteIntent(
            prefix=prefix,
            peer=peer.name,
            tier=tier,
            services=services,
            attributes=ctx.attributes(tier, pool, peer, next_hop, extra),
        )
        for peer in peers
    ]


def plan(
    config: Config,
    snapshot: Snapshot,
    node_name: str,
    allocation: Allocation,
    drained: bool = False,
    memo: Optional[PlanMemo] = None,
    now: float = 0.0,
    health: Optional[Health] = None,
) -> Plan:
    """The routes node `node_name` announces, and the Services it does not, with why.

    With a `memo` (one per caller, kept between calls), decisions whose inputs did not
    change since the last call are reused; the result is the same either way.
    `now` (any clock, the caller's) and `health` (the last plan's `.health`; None = no
    history) feed the hysteresis (`_health`); the plan's `wake_at` says when to plan again."""
    try:
        return _run(config, snapshot, node_name, allocation, drained, memo=memo, now=now, health=health)[0]
    except BaseException:
        if memo is not None:  # left half-updated: the daemon's retry would plan from a wrong memo
            PlanMemo.__init__(memo)
        raise


def explain(
    config: Config,
    snapshot: Snapshot,
    node_name: str,
    allocation: Allocation,
    service_key: str,
    drained: bool = False,
    now: float = 0.0,
    health: Optional[Health] = None,
) -> Explanation:
    """Why `service_key` is or is not announced from `node_name`, step by step (KeyError if unknown).

    Runs the whole plan (Services sharing an IP influence each other's routes) with the
    trail kept for this one Service, so it can never disagree with `plan`.
    """
    if service_key not in snapshot.services:
        raise KeyError(service_key)
    result, trail = _run(config, snapshot, node_name, allocation, drained, trace=service_key, now=now, health=health)
    routes = tuple(r for r in result.routes if service_key in r.services)
    if routes:
        peers = sorted({r.peer for r in routes})
        trail.append(Step("announce", True, f"{len(routes)} route(s) to {', '.join(peers)}"))
    return Explanation(
        service=service_key,
        node=node_name,
        announced=bool(routes),
        steps=tuple(trail),
        routes=routes,
        skipped=tuple(s for s in result.skipped if s.service == service_key),
        warnings=tuple(s for s in result.warnings if s.service == service_key),
    )
