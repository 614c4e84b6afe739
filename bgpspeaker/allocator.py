"""IPAM over the configured pools (pure): which address each LoadBalancer Service gets.

Why a pure function of (config, Services) and not a stateful IPAM with a database: the
state *is* the Services' status (`status.loadBalancer.ingress`). The leader writes it,
every node reads it back, and `allocate` keeps a status address whenever it is still
valid — so assignments survive restarts, and every node computes the same allocation as
the leader without talking to it.

Trade-offs:
- Determinism over cleverness. First every Service keeps the status addresses we are
  known to have handed out (the allocated-from-pool annotation names their pool): a
  running assignment is never taken away. Then Services are served oldest first
  (creation time, namespace, name), each keeping any other status address if still
  free, else getting its request or the lowest free address. Conflicts are decided by
  that order, so the same inputs in any order give the same result, and re-running on
  the written-back output changes nothing (both are property-tested). A status address
  we did not hand out is no stronger than a request: writing a Service's status cannot
  take an address an older Service asked for.
- Never enumerate a pool. An IPv6 /64 has 2**64 addresses: the lowest free address is
  found by walking the pool's networks lazily from a per-(pool, family) cursor that only
  moves forward (nothing is released within one run), skipping addresses in use.
- Untrusted input stays untrusted. Requested and status IPs arrive as strings; each is
  checked against the pools the namespace may use, and a refusal carries a reason code
  (MetalLB-like vocabulary) and a message a user understands.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional, Sequence, Union

# Annotation names, reason codes and `quote` live in annotations.py, reasons.py and
# model.py (one home each); the allocator's names for them stay importable from here.
from bgpspeaker.annotations import (  # noqa: F401
    ALLOCATED_FROM_POOL_ANNOTATION,
    ALLOCATED_FROM_POOL_ANNOTATIONS,
    POOL_ANNOTATIONS,
    REQUESTED_IPS_ANNOTATIONS,
    SHARING_ANNOTATIONS,
)
from bgpspeaker.config.schema import Config, PoolConfig
from bgpspeaker.keyindex import OneOrSet, index_key, keys_of, unindex_key
from bgpspeaker.model import IPAddress, ServiceView, Snapshot, parse_ip, quote
from bgpspeaker.reconciler import Versioned, replaced_keys
from bgpspeaker.records import LOCAL, SHARED, SHARING_KEY, AddressRecord, holder_of, record_key
from bgpspeaker.reasons import (  # noqa: F401
    BUGGY_IP,
    DIFFERENT_POOLS,
    DUAL_STACK_UNAVAILABLE,
    INVALID_IP,
    INVALID_IP_FAMILY,
    INVALID_PORT,
    IP_FAMILY_MISMATCH,
    IP_IN_USE,
    NO_POOL_FOR_FAMILY,
    NOT_IN_POOL,
    POOL_EXHAUSTED,
    POOL_NOT_ALLOWED,
    PORT_CONFLICT,
    INVALID_SHARING_KEY,
    SHARING_KEY_MISMATCH,
    STATUS_IGNORED,
    UNKNOWN_POOL,
)
from bgpspeaker.reasons import REFUSALS as REASONS  # noqa: F401

FAMILY_NAMES = {"IPv4": 4, "IPv6": 6}
POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
PROTOCOLS = ("TCP", "UDP", "SCTP")


# --- result types (others code against these: keep them) -------------------------------


@dataclass(frozen=True, slots=True)  # one per Service, 10,000s held
class Assignment:
    pool: str
    addresses: tuple[IPAddress, ...]  # one per IP family; dual-stack Services get two


@dataclass(frozen=True)
class Refusal:
    reason: str  # a short code, MetalLB-like vocabulary: notInPool, poolNotAllowedForNamespace, ...
    message: str  # what a user reads in the Event and in `explain`
    # For a conflict over an address: its pool (the conflicts metric's label); else "". Not
    # compared: a pool renamed by a config reload is not a new refusal (no second Event).
    pool: str = field(default="", compare=False)


@dataclass(frozen=True)
class Allocation:
    assigned: Mapping[str, Assignment]  # by namespace/name
    refused: Mapping[str, Refusal]  # by namespace/name
    # Status addresses that were not kept (written by someone else, or no longer valid), with
    # why, by namespace/name. The Service may still have been assigned another address.
    discarded: Mapping[str, tuple[Refusal, ...]] = field(default_factory=dict)
    # Records mode only (allocate(..., records=...)): the records the allocator must create
    # before the Services waiting for them may use their addresses, and why each waits.
    claims: tuple[AddressRecord, ...] = ()
    pending: Mapping[str, str] = field(default_factory=dict)  # namespace/name -> what it waits for
    # Records mode only: records of a waiting Service's identity that do not list this
    # cluster yet. It joins them before it uses their addresses: not listed, it could see
    # the address released under it (see _joined_assignment).
    joining: tuple[AddressRecord, ...] = ()


# --- public helpers ----------------------------------------------------------------------


def is_managed(config: Config, service: ServiceView) -> bool:
    """Whether this speaker handles the Service: type LoadBalancer and our loadBalancerClass.

    Class "" in config means "Services with no class" (the Kubernetes default
    implementation); a Service with a class belongs to that class's controller only.
    """
    if service.type != "LoadBalancer":
        return False
    wanted = config.speaker.load_balancer_class
    if wanted == "":
        return not service.load_balancer_class
    return service.load_balancer_class == wanted


def sharing_key(service: ServiceView) -> Optional[str]:
    """The Service's allow-shared-ip key (the first sharing annotation present), or None.

    An empty key shares with nobody (MetalLB reads it the same way). The allocator and
    the offline audit (which judges sharing across clusters) read it here.
    """
    value = service.annotation(*SHARING_ANNOTATIONS)
    return None if value is None else (value.strip() or None)


def pool_of(config: Config, address: IPAddress) -> Optional[PoolConfig]:
    """The configured pool that contains `address` (pools do not overlap: config validation)."""
    for pool in config.pools:
        if pool.contains(address):
            return pool
    return None


def pool_usage(config: Config, allocation: Allocation) -> dict[str, tuple[int, int]]:
    """{pool: (assignable addresses, addresses in use)} for the allocator metrics.

    Sizes are exact ints (an IPv6 /64 is 2**64: fine for Python, computed arithmetically).
    """
    in_use: dict[str, set[IPAddress]] = {pool.name: set() for pool in config.pools}
    for assignment in allocation.assigned.values():
        # An assignment's addresses are in its pool (both modes): no per-address pool search
        # (that search was most of this function's 10 ms at 10,000 Services).
        addresses = in_use.get(assignment.pool)
        if addresses is not None:
            addresses.update(assignment.addresses)
    return {pool.name: (_pool_size(pool), len(in_use[pool.name])) for pool in config.pools}


class PoolUsage:
    """pool_usage() by difference, for the gauges after every allocation change: the walk
    over every assignment cost O(Services) per new Service. Kept: how many assignments use
    each address, per pool; only the assignments that are not the same objects as last
    time are counted again (the records allocator keeps what it did not re-decide). A new
    config starts afresh. Equal to pool_usage() (property-tested with RecordUpdates)."""

    def __init__(self) -> None:
        self.config: Optional[Config] = None
        self.sizes: dict[str, int] = {}
        self.assigned: Mapping[str, Assignment] = {}
        self.used: dict[str, dict[IPAddress, int]] = {}  # pool -> address -> assignments using it

    def update(self, config: Config, allocation: Allocation) -> dict[str, tuple[int, int]]:
        if config is not self.config:
            self.__init__()  # type: ignore[misc]
            self.config = config
            self.sizes = {pool.name: _pool_size(pool) for pool in config.pools}
            self.used = {pool.name: {} for pool in config.pools}
        old, new = self.assigned, allocation.assigned
        for key in replaced_keys(old, new) if old is not new else ():
            for assignment, step in ((old.get(key), -1), (new.get(key), 1)):
                addresses = self.used.get(assignment.pool) if assignment is not None else None
                if addresses is None or assignment is None:
                    continue
                for address in assignment.addresses:
                    count = addresses.get(address, 0) + step
                    if count > 0:
                        addresses[address] = count
                    else:
                        addresses.pop(address, None)
        self.assigned = new
        return {name: (size, len(self.used[name])) for name, size in self.sizes.items()}


def _pool_size(pool: PoolConfig) -> int:
    size = 0
    for network in pool.addresses:
        size += network.num_addresses
        if pool.avoid_buggy_ips and network.version == 4:
            first, last = int(network.network_address), int(network.broadcast_address)
            size -= _count_mod(first, last, 0) + _count_mod(first, last, 255)
    return size


def _count_mod(first: int, last: int, residue: int) -> int:
    """How many x in [first, last] have x % 256 == residue."""
    return (last - residue) // 256 - (first - 1 - residue) // 256


def _is_buggy(version: int, value: int) -> bool:
    # MetalLB's avoidBuggyIPs: some old firmware treats any x.y.z.0 / x.y.z.255 as broadcast.
    return version == 4 and (value & 0xFF) in (0, 255)


def _position(spans: Sequence[tuple[int, int]], value: int) -> tuple[int, int]:
    """The search position (span index, address) of the first address at or after `value`
    in a pool's sorted spans; past the last span when there is none."""
    for idx, (first, last) in enumerate(spans):
        if value <= last:
            return idx, max(value, first)
    return len(spans), value


def _lower_floor(floors: dict[tuple[str, int], int], pool_name: str, addr: Addr) -> None:
    """`addr` of pool `pool_name` is free now, or may be: its pool's search floor (see
    _State.floors) may not stay above it."""
    key = (pool_name, addr[0])
    if key in floors and addr[1] < floors[key]:
        floors[key] = addr[1]


# --- the algorithm ---------------------------------------------------------------------

Addr = tuple[int, int]  # (version, int value): cheap to hash and compare, unlike ipaddress objects
_NO_PORTS: frozenset[tuple[str, int]] = frozenset()  # one object: an empty frozenset is 216 bytes each


@dataclass(frozen=True, slots=True)  # one per recorded address, kept by the memo: no __dict__ each
class _Holder:
    key: str
    namespace: str
    share_key: Optional[str]
    ports: frozenset[tuple[str, int]]
    label: Optional[str] = None  # how a conflict names it (a reservation: the identity, by name)
    record: Optional[AddressRecord] = None  # records mode: the record that makes it the holder

    def named(self) -> Optional[str]:
        if self.record is not None:  # named when needed: formatting 10,000 labels up front cost 5 %
            return f"{self.record.describe_holder()} (allocation record)"
        return self.label


@dataclass
class _Request:
    """One Service's parsed wishes, or the Refusal that parsing produced."""

    service: ServiceView
    families: tuple[int, ...] = ()  # wanted, in preference order
    mode: str = "single"  # single | prefer | require
    requested: tuple[Addr, ...] = ()
    pool: Optional[PoolConfig] = None  # from the pool annotation
    share_key: Optional[str] = None
    ports: frozenset[tuple[str, int]] = frozenset()
    refusal: Optional[Refusal] = None
    marker: Optional[str] = None  # the allocated-from-pool annotation: the pool we handed its status from
    status: tuple[tuple[str, Optional[IPAddress]], ...] = ()  # (text, parsed or None), parsed once


class _State:
    """Addresses claimed so far in this run, and the per-(pool, family) search cursors."""

    def __init__(
        self,
        config: Config,
        holders: Optional[dict[Addr, tuple[_Holder, ...]]] = None,
        floors: Optional[dict[tuple[str, int], int]] = None,
    ):
        self.config = config
        # In records mode, the memo's own index (records and reservations), written through
        # by this run and put back by restore(): copying it per run was O(records) per event.
        # Tuples, not lists: never changed in place (the memo's entries are put back as they
        # were), and one tuple is 48 bytes where a list and its array are 88.
        self.holders: dict[Addr, tuple[_Holder, ...]] = holders if holders is not None else {}
        self._saved: dict[Addr, Optional[tuple[_Holder, ...]]] = {}  # entries as they were before this run
        self.groups: dict[tuple[str, str], list[Addr]] = {}  # (namespace, sharing key) -> addresses
        self.cursor: dict[tuple[str, int], tuple[int, int]] = {}
        # (pool, family) -> an address below which nothing of the pool is free in `holders`
        # as it was before this run (records and reservations). The memo's own (RecordsMemo.
        # floors): a search starts there, not at the pool's first address, and an autoAssign
        # Service among 10,000 recorded ones no longer walks past all of them at every run.
        self.floors: dict[tuple[str, int], int] = floors if floors is not None else {}
        self.nets: dict[tuple[str, int], list[tuple[int, int]]] = {}
        # Sorted (first, last, pool) per version for a bisect lookup of "which pool holds this address".
        self.index: dict[int, list[tuple[int, int, PoolConfig]]] = {4: [], 6: []}
        for pool in config.pools:
            for network in pool.addresses:
                span = (int(network.network_address), int(network.broadcast_address))
                self.nets.setdefault((pool.name, network.version), []).append(span)
                self.index[network.version].append((span[0], span[1], pool))
        for spans in self.nets.values():
            spans.sort()
        for version in self.index:
            self.index[version].sort(key=lambda item: (item[0], item[1]))
        self.starts = {version: [item[0] for item in items] for version, items in self.index.items()}

    def pool_of(self, addr: Addr) -> Optional[PoolConfig]:
        version, value = addr
        i = bisect.bisect_right(self.starts[version], value) - 1
        if i >= 0:
            first, last, pool = self.index[version][i]
            if first <= value <= last:
                return pool
        return None

    def families_of(self, pool: PoolConfig) -> set[int]:
        return {version for version in (4, 6) if (pool.name, version) in self.nets}

    def lowest_free(self, pool: PoolConfig, version: int) -> Optional[Addr]:
        key = (pool.name, version)
        nets = self.nets.get(key)
        if not nets:
            return None
        floor = self.floors.get(key, nets[0][0])
        idx, value = self.cursor.get(key) or _position(nets, floor)
        # The floor rises with a search that starts on it, over the addresses held before
        # this run (or never handed out: avoidBuggyIPs); it stops at the first one that is
        # free, or held by this run's claims alone (restore() frees those).
        rising = value == floor
        holders, saved, buggy = self.holders, self._saved, pool.avoid_buggy_ips
        while idx < len(nets):
            first, last = nets[idx]
            if value < first:
                value = first
            while value <= last:
                addr = (version, value)
                never = buggy and _is_buggy(version, value)
                if addr not in holders and not never:
                    # Leave the cursor *on* the address: it is only claimed if the whole
                    # assignment succeeds; once claimed the next search skips it.
                    self.cursor[key] = (idx, value)
                    if rising:
                        self.floors[key] = value
                    return addr
                if rising and not never and addr in saved and saved[addr] is None:
                    self.floors[key] = value  # this run's own claim: free again after it
                    rising = False
                value += 1
            idx += 1
        self.cursor[key] = (idx, value)
        if rising:
            self.floors[key] = value  # the pool is full
        return None

    def claim(self, addr: Addr, request: _Request) -> None:
        holder = _Holder(request.service.key, request.service.namespace, request.share_key, request.ports)
        self._set_holders(addr, self.holders.get(addr, ()) + (holder,))
        if request.share_key is not None:
            group = self.groups.setdefault((request.service.namespace, request.share_key), [])
            if addr not in group:
                group.append(addr)

    def release(self, addr: Addr, request: _Request) -> None:
        """Undo a phase-1 claim (rare: the Service moved pools or was refused after all)."""
        holders = tuple(h for h in self.holders.get(addr, ()) if h.key != request.service.key)
        self._set_holders(addr, holders)
        if request.share_key is not None and not any(h.share_key == request.share_key for h in holders):
            group = self.groups.get((request.service.namespace, request.share_key), [])
            if addr in group:
                group.remove(addr)
        # The freed address may lie behind a search cursor: restart that pool's search.
        pool = self.pool_of(addr)
        if pool is not None:
            self.cursor.pop((pool.name, addr[0]), None)
            _lower_floor(self.floors, pool.name, addr)

    def _set_holders(self, addr: Addr, holders: tuple[_Holder, ...]) -> None:
        if addr not in self._saved:
            self._saved[addr] = self.holders.get(addr)
        if holders:
            self.holders[addr] = holders
        else:
            self.holders.pop(addr, None)

    def restore(self) -> None:
        """`holders` as it was before this run's claims and releases."""
        for addr, before in self._saved.items():
            if before is None:
                self.holders.pop(addr, None)
            else:
                self.holders[addr] = before
        self._saved.clear()

    def conflict(self, addr: Addr, request: _Request) -> Optional[Refusal]:
        """Why `request` may not use `addr` now, or None if it is free or legally shared."""
        holders = self.holders.get(addr)
        if not holders:
            return None
        svc = request.service
        for holder in holders:
            if holder.key == svc.key:
                continue  # its own status address, kept in phase 1
            text = str(_ip(addr))
            by = holder.named() or (
                f"Service {holder.key}" if holder.namespace == svc.namespace else "a Service in another namespace"
            )  # do not leak other tenants' names
            if request.share_key is None or holder.share_key is None:
                return Refusal(
                    IP_IN_USE,
                    f"{text} is already used by {by}"
                    + ("" if request.share_key is None else ", which does not allow sharing"),
                    _pool_name(self.pool_of(addr)),
                )
            if holder.namespace != svc.namespace:
                return Refusal(
                    SHARING_KEY_MISMATCH, f"{text} is shared by {by}; sharing keys only apply within one namespace"
                )
            if holder.share_key != request.share_key:
                return Refusal(
                    SHARING_KEY_MISMATCH,
                    f"{text} is used by {by} with sharing key "
                    f"{quote(holder.share_key)}, not {quote(request.share_key)}",
                )
            overlap = holder.ports & request.ports
            if overlap:
                ports = ", ".join(f"{proto}/{port}" for proto, port in sorted(overlap))
                return Refusal(PORT_CONFLICT, f"{text} is shared with {by}, which already uses {ports}")
        return None


_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # used with fullmatch: "$" would accept a trailing newline


def _pool_name(pool: Optional[PoolConfig]) -> str:
    return pool.name if pool is not None else ""


def _name(value: object) -> str:
    """A name as is when it is a plain token (the usual case), else quoted and cut."""
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else quote(value)


def _addr(address: IPAddress) -> Addr:
    return (address.version, int(address))


def _ip(addr: Addr) -> IPAddress:
    version, value = addr
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _parse_request(config: Config, service: ServiceView, with_status: bool = True) -> _Request:
    """`with_status`: read the status and the marker too (evidence before records only)."""
    request = _Request(service)
    annotations = dict(service.annotations)
    if with_status:
        request.marker = next((annotations[n] for n in ALLOCATED_FROM_POOL_ANNOTATIONS if n in annotations), None)
        status: list[tuple[str, Optional[IPAddress]]] = []
        for text in service.ingress_ips:
            try:
                status.append((text, parse_ip(text.strip())))
            except ValueError:
                status.append((text, None))
        request.status = tuple(status)

    def refuse(reason: str, message: str) -> _Request:
        request.refusal = Refusal(reason, message)
        return request

    # Ports: only used to decide sharing, but a Service with nonsense ports is refused
    # outright rather than silently mis-shared (the API server would have rejected it).
    ports = []
    for port in service.ports:
        if port.protocol not in PROTOCOLS:
            return refuse(
                INVALID_PORT,
                f"port {_name(port.name or str(port.port))}: protocol "
                f"{quote(port.protocol)} is not one of {', '.join(PROTOCOLS)}",
            )
        if type(port.port) is not int or not 1 <= port.port <= 65535:
            return refuse(
                INVALID_PORT, f"port {_name(port.name or '?')}: {quote(port.port)} is not a port number (1..65535)"
            )
        if (port.protocol, port.port) in ports:
            return refuse(INVALID_PORT, f"port {port.protocol}/{port.port} is listed twice")
        ports.append((port.protocol, port.port))
    request.ports = frozenset(ports)

    # IP families.
    policy = service.ip_family_policy or "SingleStack"
    if policy not in POLICIES:
        return refuse(INVALID_IP_FAMILY, f"ipFamilyPolicy {quote(policy)} is not one of {', '.join(POLICIES)}")
    families = []
    for name in service.ip_families:
        if name not in FAMILY_NAMES:
            return refuse(INVALID_IP_FAMILY, f"ipFamilies: {quote(name)} is not IPv4 or IPv6")
        if FAMILY_NAMES[name] in families:
            return refuse(INVALID_IP_FAMILY, f"ipFamilies lists {name} twice")
        families.append(FAMILY_NAMES[name])
    if policy == "SingleStack":
        if len(families) > 1:
            return refuse(INVALID_IP_FAMILY, "a SingleStack Service cannot list two ipFamilies")
        request.families, request.mode = (tuple(families) or (4,)), "single"
    elif policy == "PreferDualStack":
        # With ipFamilies set, the API server already reduced it to what the cluster can
        # serve: an address of a family the Service has no cluster IP for would get no
        # kube-proxy rules. Only a hand-written Service (no ipFamilies) gets both.
        request.families, request.mode = (tuple(families) or (4, 6)), "prefer"
    else:
        request.families = tuple(families) + tuple(v for v in (4, 6) if v not in families)
        request.mode = "require"

    # Requested addresses, first source present wins.
    source: Optional[str] = None
    text = ""
    for name in REQUESTED_IPS_ANNOTATIONS:
        if name in annotations:
            source, text = f"annotation {name}", annotations[name]
            break
    if source is None and service.load_balancer_ip:
        source, text = "spec.loadBalancerIP", service.load_balancer_ip
    if source is not None:
        requested: list[Addr] = []
        items = [item.strip() for item in text.split(",")]
        for item in items:
            try:
                address = parse_ip(item)  # strict: no scope ids (a "%..." tail survives str())
            except ValueError:
                return refuse(INVALID_IP, f"{source}: {quote(item)} is not an IP address")
            addr = _addr(address)
            if any(v == address.version for v, _ in requested):
                return refuse(INVALID_IP, f"{source}: more than one IPv{address.version} address requested")
            requested.append(addr)
        versions = [v for v, _ in requested]
        if service.ip_families and any(v not in families for v in versions):
            return refuse(
                IP_FAMILY_MISMATCH,
                f"{source}: {quote(text.strip())} does not match the Service's ipFamilies {list(service.ip_families)}",
            )
        if request.mode == "single" and len(requested) > 1:
            return refuse(IP_FAMILY_MISMATCH, f"{source}: a SingleStack Service cannot have two addresses")
        if request.mode == "require" and len(requested) < 2:
            return refuse(
                DUAL_STACK_UNAVAILABLE,
                f"{source}: a RequireDualStack Service needs one IPv4 and one "
                f"IPv6 address, only {quote(text.strip())} requested",
            )
        request.requested = tuple(requested)
        request.families = tuple(versions)

    # Pool selection.
    for name in POOL_ANNOTATIONS:
        if name in annotations:
            wanted = annotations[name].strip()
            pool = next((p for p in config.pools if p.name == wanted), None)
            if pool is None:
                return refuse(UNKNOWN_POOL, f"annotation {name}: there is no address pool {quote(wanted)}")
            if not pool.allows_namespace(service.namespace):
                return refuse(
                    POOL_NOT_ALLOWED,
                    f"annotation {name}: pool {wanted!r} may not be used by namespace {service.namespace!r}",
                )
            request.pool = pool
            break

    request.share_key = sharing_key(service)
    return request


def _check_address(state: _State, request: _Request, addr: Addr, what: str) -> Union[PoolConfig, Refusal]:
    """Whether `request` may hold `addr` (a requested or status address): its pool, or why not."""
    namespace = request.service.namespace
    pool = state.pool_of(addr)
    if pool is None:
        return Refusal(NOT_IN_POOL, f"{what} {_ip(addr)} is not in any address pool")
    if not pool.allows_namespace(namespace):
        return Refusal(
            POOL_NOT_ALLOWED, f"{what} {_ip(addr)} is in pool {pool.name!r}, which namespace {namespace!r} may not use"
        )
    if request.pool is not None and pool.name != request.pool.name:
        return Refusal(NOT_IN_POOL, f"{what} {_ip(addr)} is not in the requested pool {request.pool.name!r}")
    if not request.requested and request.pool is None and not pool.auto_assign:
        return Refusal(
            NOT_IN_POOL,
            f"{what} {_ip(addr)} is in pool {pool.name!r}, which is not "
            f"auto-assigned and the Service does not ask for it",
        )
    if pool.avoid_buggy_ips and _is_buggy(*addr):
        return Refusal(BUGGY_IP, f"{what} {_ip(addr)} ends in .0 or .255, which pool {pool.name!r} avoids")
    conflict = state.conflict(addr, request)
    if conflict is not None:
        return replace(conflict, message=f"{what} {conflict.message}")
    return pool


def _keep_status(
    state: _State,
    request: _Request,
    given_up: Mapping[Addr, Refusal],
    marked: bool,
    kept_before: Mapping[int, tuple[Addr, PoolConfig]],
) -> tuple[dict[int, tuple[Addr, PoolConfig]], list[Refusal]]:
    """The status addresses this Service keeps, by family, and the ones it does not, with why.

    Called twice. Phase 1 (`marked`): addresses we are known to have handed out (the
    allocated-from-pool annotation names their pool) are kept by every Service before any
    Service is served, so a running assignment is never taken by someone new — not even by
    an older Service that asks for that address later. Phase 2 (not `marked`), at the
    Service's own turn in age order: any other status address, which is therefore no
    stronger than a request. Whoever can write a Service's status cannot use it to take an
    address an older Service asked for (tests/test_hardening_attacks.py).
    """
    kept: dict[int, tuple[Addr, PoolConfig]] = dict(kept_before)
    discarded: list[Refusal] = []
    for text, address in request.status:
        if address is None:
            if marked:  # reported once, in phase 1
                discarded.append(Refusal(INVALID_IP, f"status address {quote(text)} is not an IP address"))
            continue
        addr = _addr(address)
        if addr in given_up or any(addr == held for held, _ in kept.values()):
            continue  # given up: reported by the caller; kept: nothing to say
        pool = state.pool_of(addr)
        if (request.marker is not None and pool is not None and request.marker == pool.name) != marked:
            continue  # the other phase's business
        if request.requested:
            if addr not in request.requested:
                continue  # replaced by the requested address: nothing suspicious
        elif address.version not in request.families[: 1 if request.mode == "single" else 2]:
            discarded.append(
                Refusal(IP_FAMILY_MISMATCH, f"status address {address} is not of a family the Service wants")
            )
            continue
        if address.version in kept:
            discarded.append(Refusal(INVALID_IP, f"status address {address}: a second IPv{address.version} address"))
            continue
        checked = _check_address(state, request, addr, "status address")
        if isinstance(checked, Refusal):
            discarded.append(checked)
            continue
        pool = checked
        if kept and pool.name != next(iter(kept.values()))[1].name:
            # A Service's addresses come from one pool; the one kept first stays.
            discarded.append(
                Refusal(
                    DIFFERENT_POOLS,
                    f"status address {address} is in another pool than {_ip(next(iter(kept.values()))[0])}",
                )
            )
            continue
        kept[address.version] = (addr, pool)
    return kept, discarded


def _complete(
    state: _State, request: _Request, kept: Mapping[int, tuple[Addr, PoolConfig]]
) -> Union[tuple[PoolConfig, tuple[Addr, ...]], Refusal]:
    """Phase 2: (pool, addresses) for the Service, or a Refusal."""
    svc = request.service
    if request.requested:
        pools = []
        for addr in request.requested:
            checked = _check_address(state, request, addr, "requested address")
            if isinstance(checked, Refusal):
                return checked
            pools.append(checked)
        if len({p.name for p in pools}) > 1:
            return Refusal(
                DIFFERENT_POOLS,
                "the requested addresses are in different pools ("
                + ", ".join(sorted({p.name for p in pools}))
                + "); one Service takes its addresses from one pool",
            )
        return pools[0], request.requested

    candidates: list[PoolConfig]
    if request.pool is not None:
        candidates = [request.pool]
    else:
        candidates = [p for p in state.config.pools if p.auto_assign and p.allows_namespace(svc.namespace)]
    held_pool = next(iter(kept.values()))[1] if kept else None
    if held_pool is not None:
        candidates = [held_pool] + [p for p in candidates if p.name != held_pool.name]

    families = request.families
    if request.mode == "single":
        families = families[:1]
    attempts: list[tuple[tuple[int, ...], list[PoolConfig]]] = [(families, candidates)]
    if held_pool is not None and request.mode != "require":
        # Stability first: a Service that holds a valid address stays in its pool; it is
        # not moved to another pool just to gain a second family.
        attempts = [(families, [held_pool])]
        if len(families) > 1:
            attempts.append((tuple(v for v in families if v in kept), [held_pool]))
    elif request.mode == "prefer" and len(families) > 1:
        attempts += [((v,), candidates) for v in families]
    for wanted, pools in attempts:
        for pool in pools:
            got = _fill(state, request, pool, wanted, kept)
            if got is not None:
                return pool, got
    return _why_not(state, request, candidates)


def _fill(
    state: _State,
    request: _Request,
    pool: PoolConfig,
    wanted: Sequence[int],
    kept: Mapping[int, tuple[Addr, PoolConfig]],
) -> Optional[tuple[Addr, ...]]:
    got = []
    for version in wanted:
        held = kept.get(version)
        if held is not None and held[1].name == pool.name:
            got.append(held[0])
            continue
        addr = None
        if request.share_key is not None:
            # Join the sharing group's address if it is in this pool and the ports are disjoint:
            # that is how Services with one key converge on one IP.
            for candidate in sorted(state.groups.get((request.service.namespace, request.share_key), ())):
                if (
                    candidate[0] == version
                    and state.pool_of(candidate) is pool
                    and state.conflict(candidate, request) is None
                ):
                    addr = candidate
                    break
        if addr is None:
            addr = state.lowest_free(pool, version)
        if addr is None:
            return None
        got.append(addr)
    return tuple(got)


def _why_not(state: _State, request: _Request, candidates: Sequence[PoolConfig]) -> Refusal:
    svc, families = request.service, request.families
    names = " and ".join(f"IPv{v}" for v in families)
    if not candidates:
        if any(p.auto_assign for p in state.config.pools):
            return Refusal(POOL_NOT_ALLOWED, f"no auto-assign address pool may be used by namespace {svc.namespace!r}")
        return Refusal(
            NO_POOL_FOR_FAMILY,
            "there is no auto-assign address pool; ask for one with the bgpspeaker.io/address-pool annotation",
        )
    with_family = [p for p in candidates if state.families_of(p) & set(families)]
    if not with_family:
        if request.pool is not None:
            return Refusal(NO_POOL_FOR_FAMILY, f"pool {request.pool.name!r} has no {names} addresses")
        return Refusal(
            NO_POOL_FOR_FAMILY, f"no address pool that namespace {svc.namespace!r} may use has {names} addresses"
        )
    if (
        len(families) > 1
        and request.mode == "require"
        and not any(state.families_of(p) >= set(families) for p in candidates)
    ):
        return Refusal(
            DUAL_STACK_UNAVAILABLE, "RequireDualStack: no usable address pool has both IPv4 and IPv6 addresses"
        )
    pools = ", ".join(repr(p.name) for p in with_family)
    return Refusal(POOL_EXHAUSTED, f"no free {names} address left in {pools}")


def _order_key(service: ServiceView) -> tuple:
    # The oldest Service wins a conflict (RFC 3339 timestamps sort as text); namespace and
    # name make the order total, so the input order never matters.
    return (service.created, service.namespace, service.name)


def allocate(config: Config, services: Iterable[ServiceView]) -> Allocation:
    """Assign addresses to every LoadBalancer Service of our class; refuse the rest with a reason.

    Services not managed (other type or class) get nothing: their absence from
    `assigned` is the release.
    """
    refused: dict[str, Refusal] = {}
    managed = sorted((s for s in services if is_managed(config, s)), key=_order_key)
    requests = []
    for service in managed:
        request = _parse_request(config, service)
        if request.refusal is not None:
            refused[service.key] = request.refusal
        else:
            requests.append(request)
    # A Service may give up a status address it kept in phase 1 (it had to move pools to
    # get both families, or was refused after all). Others may already have been refused
    # that address in this pass, so the pass is re-run with it given up from the start;
    # each re-run gives up more, so this ends, and the last pass gives up nothing — which
    # is what makes the result a fixpoint (re-running on the written-back status changes
    # nothing). In practice this loop runs once.
    given_up: dict[str, dict[Addr, Refusal]] = {}
    while True:
        result, released = _pass(config, requests, given_up)
        if not released:
            break
        for key, notes in released.items():
            given_up.setdefault(key, {}).update(notes)
    assigned, more_refused, discarded = result
    refused.update(more_refused)
    return Allocation(assigned=assigned, refused=refused, discarded=discarded)


def _pass(config: Config, requests: Sequence[_Request], given_up: Mapping[str, Mapping[Addr, Refusal]]):
    state = _State(config)
    assigned: dict[str, Assignment] = {}
    refused: dict[str, Refusal] = {}
    discarded: dict[str, list[Refusal]] = {}
    released: dict[str, dict[Addr, Refusal]] = {}
    # Phase 1: addresses we handed out are kept first, whoever is older.
    kept_by: dict[str, dict[int, tuple[Addr, PoolConfig]]] = {}
    for request in requests:
        key = request.service.key
        skip = given_up.get(key, {})
        kept, dropped = _keep_status(state, request, skip, True, {})
        discarded[key] = list(skip.values()) + dropped
        kept_by[key] = kept
        for addr, _ in kept.values():
            state.claim(addr, request)
    # Phase 2: in age order, every Service keeps its other status addresses if still free,
    # then gets its request or new addresses.
    for request in requests:
        key = request.service.key
        marked = kept_by[key]
        kept, dropped = _keep_status(state, request, given_up.get(key, {}), False, marked)
        discarded[key] += dropped
        for version, (addr, _) in kept.items():
            if version not in marked:
                state.claim(addr, request)
        result = _complete(state, request, kept)
        chosen = result[1] if not isinstance(result, Refusal) else ()
        for version, (addr, pool) in kept.items():
            if addr in chosen:
                continue
            state.release(addr, request)
            if version in marked:
                # Released after others were served: re-run the pass with it given up (see allocate).
                why = (
                    result
                    if isinstance(result, Refusal)
                    else Refusal(
                        DUAL_STACK_UNAVAILABLE,
                        f"pool {pool.name!r} cannot give it both IP families; moved to pool {result[0].name!r}",
                    )
                )
                released.setdefault(key, {})[addr] = replace(
                    why, message=f"status address {_ip(addr)} given up: {why.message}"
                )
            elif not isinstance(result, Refusal):
                discarded[key].append(
                    Refusal(
                        DUAL_STACK_UNAVAILABLE,
                        f"status address {_ip(addr)} given up: pool {pool.name!r} cannot give it both IP families",
                    )
                )
        if isinstance(result, Refusal):
            refused[key] = result
            continue
        pool, addrs = result
        for addr in addrs:
            if not any(addr == held for held, _ in kept.values()):
                state.claim(addr, request)
        assigned[key] = Assignment(pool.name, tuple(_ip(a) for a in addrs))
    return (assigned, refused, {k: tuple(v) for k, v in discarded.items() if v}), released


# --- records mode: our own records are the only evidence -----------------------------------
#
# docs/design.md, "Addresses across clusters", states the invariants this section keeps:
# 1. one address, one identity (namespace/name, or a sharing group), in every cluster:
#    an address recorded for an identity is never given to another, whatever Services,
#    statuses or annotations say, and whatever the age of the Service asking for it;
# 2. the same identity gets the same address in every cluster that announces it: the
#    recorded one (with two records of one family, from a race between two clusters
#    allocating at the same moment, the lowest address is the identity's and the other
#    is released);
# 3. only records are evidence: status and annotations are outputs, never read here.
# A Service without a record gets a *claim* (the record to create) and waits (pending);
# the shell adds it to its address block if the address has no entry there (a write
# guarded by the block's resourceVersion), and the Service is assigned once the record is
# read back. So nothing is announced that the record store has not accepted.

Records = Mapping[str, Mapping[str, AddressRecord]]  # store (local | shared) -> records by record_key


def store_of(pool: PoolConfig) -> str:
    """Which record store holds the records of `pool`."""
    return SHARED if pool.shared else LOCAL


class RecordsMemo:
    """What allocate_recorded keeps between runs, so that an event costs O(what changed).

    The record holders are indexed once and updated by difference (the watcher replaces a
    store's dict when a record in it changes, and keeps the record objects that did not);
    Services are re-decided only when their own view changed, their identity's records
    changed, they were not assigned last time (they depend on what is free), or another
    member of their sharing group is re-decided (ports are shared in age order). Any other
    Service was assigned from its record, and nothing another Service does can change
    that: a record is never given to a second identity. A config or cluster change starts
    afresh. Equal to a run without memo (property-tested).
    """

    def __init__(self) -> None:
        self.config: Optional[Config] = None
        self.cluster = ""
        self.records: dict[str, Mapping[str, AddressRecord]] = {}
        self.services: Optional[Mapping[str, ServiceView]] = None
        self.holders: dict[Addr, tuple[_Holder, ...]] = {}  # records, and reservations where no record is
        # identity -> its records, (address, record) sorted by address: a tuple, not a dict
        # (232 bytes each, and almost every identity has one address)
        self.held_by: dict[str, tuple[tuple[Addr, AddressRecord], ...]] = {}
        self.carried: dict[str, dict[Addr, AddressRecord]] = {}  # records of our pools in the other store
        self.reserved: dict[str, list[Addr]] = {}  # identity -> the addresses the config reserves for it
        self.reserved_at: dict[Addr, _Holder] = {}  # address -> its reservation's holder
        self.decided: dict[str, str] = {}  # Service key -> the identity it was decided as (_group_of: its group)
        # identity -> the Service decided under it, or a set when several are (a sharing
        # group): a set per Service was 2.3 MB at 10,000 (tracemalloc). See bgpspeaker/keyindex.py.
        self.by_holder: dict[str, OneOrSet[str]] = {}
        self.by_group: dict[tuple[str, str], set[str]] = {}
        self.floors: dict[tuple[str, int], int] = {}  # the runs' search floors: see _State.floors
        self.last: Optional[Allocation] = None

    def reset(self, config: Config, cluster: str) -> None:
        RecordsMemo.__init__(self)  # forget everything
        self.config, self.cluster = config, cluster
        state = _State(config)
        for pool in config.pools:
            for address, identity in pool.reservations:
                addr = _addr(address)
                self.reserved.setdefault(identity, []).append(addr)
                self.reserved_at[addr] = _Holder(
                    identity,
                    identity.partition("/")[0],
                    None,
                    _NO_PORTS,
                    f"Service {identity} (reserved by the pool's config)",
                )
        self.holders = {addr: (holder,) for addr, holder in self.reserved_at.items()}
        self._pool_of = state.pool_of

    def update_records(self, records: Records) -> set[str]:
        """Bring the holder index in line with `records`; the holders whose records changed."""
        changed: set[str] = set()
        for store in set(self.records) | set(records):
            old, new = self.records.get(store, {}), records.get(store, {})
            if old is new:
                continue
            # what the watcher's version notes say changed (Versioned): a walk over every
            # record was ~2 ms per record event at 10,000 (py-spy)
            for key in replaced_keys(old, new):
                before, rec = old.get(key), new.get(key)
                if before is not None:
                    changed.add(self._drop(before, store))
                if rec is not None:
                    changed.add(self._add(rec, store))
        self.records = dict(records)
        changed.discard("")
        return changed

    def _evidence(self, rec: AddressRecord, store: str) -> Optional[Addr]:
        addr = _addr(rec.address)
        pool = self._pool_of(addr)
        if pool is None or pool.name != rec.pool or store_of(pool) != store:
            return None  # not a record of a pool we have here (or in the wrong store): not evidence
        return addr

    def _carried(self, rec: AddressRecord) -> Optional[Addr]:
        """A record of one of our pools kept in the other store: the pool was marked shared
        (or unshared) since. Not evidence, but the address its holder asks for in the new
        store, so that the switch renumbers nothing (or is refused naming the holder)."""
        addr = _addr(rec.address)
        pool = self._pool_of(addr)
        return addr if pool is not None and pool.name == rec.pool else None

    def _add(self, rec: AddressRecord, store: str) -> str:
        addr = self._evidence(rec, store)
        if addr is None:
            carried = self._carried(rec)
            if carried is not None:
                self.carried.setdefault(rec.holder, {})[carried] = rec
                return rec.holder
            return ""
        holder = rec.holder  # a property that formats and interns: once here, not three times
        self.holders[addr] = (_Holder(holder, rec.namespace, rec.sharing_key, _NO_PORTS, record=rec),)
        held = self.held_by.get(holder)
        if held is None:  # nearly every record: its identity's only one (a cold start adds them all)
            self.held_by[holder] = ((addr, rec),)
        else:
            mine = [(a, r) for a, r in held if a != addr]
            self.held_by[holder] = tuple(sorted(mine + [(addr, rec)], key=_first))
        return holder

    def _drop(self, rec: AddressRecord, store: str) -> str:
        addr = self._evidence(rec, store)
        if addr is None:
            carried = self._carried(rec)
            if carried is not None and self.carried.get(rec.holder, {}).pop(carried, None) is not None:
                if not self.carried[rec.holder]:
                    del self.carried[rec.holder]
                return rec.holder
            return ""
        reservation = self.reserved_at.get(addr)
        if reservation is not None:
            self.holders[addr] = (reservation,)  # a record gone: the config's reservation holds it again
        else:
            self.holders.pop(addr, None)
            _lower_floor(self.floors, rec.pool, addr)  # the record's pool is the address's (_evidence)
        mine = tuple((a, r) for a, r in self.held_by.get(rec.holder, ()) if a != addr)
        if mine:
            self.held_by[rec.holder] = mine
        else:
            self.held_by.pop(rec.holder, None)
        return rec.holder


def _first(pair: tuple[Addr, AddressRecord]) -> Addr:
    return pair[0]


def _group_of(holder: str) -> Optional[tuple[str, str]]:
    """The sharing group (namespace, key) of an identity from holder_of, or None for one
    Service ("/*" cannot occur in a namespace or Service name)."""
    namespace, star, key = holder.partition("/*")
    return (namespace, key) if star else None


def allocate_recorded(
    config: Config,
    services: Union[Mapping[str, ServiceView], Iterable[ServiceView]],
    records: Records,
    cluster: str,
    memo: Optional[RecordsMemo] = None,
) -> Allocation:
    """Assign addresses from the records; claim new records for Services that have none.

    `records` holds only the stores whose contents are known (listed at least once):
    a Service whose pool's store is not known yet waits, it is never given an address
    that a store we cannot read may already hold for someone else. With `memo` (and
    `services` a dict by key, replaced when it changes), only what changed is re-decided.
    """
    if isinstance(services, Mapping):
        by_key: Mapping[str, ServiceView] = services
    else:
        by_key, memo = {s.key: s for s in services}, None  # a new dict each call: nothing to compare with
    if memo is None:
        memo = RecordsMemo()
    return _allocate_recorded(config, by_key, records, cluster, memo)


def _allocate_recorded(
    config: Config, services: Mapping[str, ServiceView], records: Records, cluster: str, memo: RecordsMemo
) -> Allocation:
    # The last allocation to start from; None: afresh (no run yet, or another config or cluster)
    last = memo.last if memo.config is config and memo.cluster == cluster else None
    if last is None:
        memo.reset(config, cluster)
    changed_holders = memo.update_records(records)

    if last is None:
        dirty = {key for key, s in services.items() if is_managed(config, s)}
        previous: Optional[Versioned] = None
        refused: dict[str, Refusal] = {}
        pending: dict[str, str] = {}
        discarded: dict[str, tuple[Refusal, ...]] = {}
    else:
        old = memo.services or {}
        dirty = set(last.refused) | set(last.pending)
        if services is not old:
            # added, removed or replaced: from the watcher's version notes (Versioned), not a
            # walk over every Service (~1.5 ms per event at 10,000, py-spy)
            dirty |= replaced_keys(old, services)
        for holder in changed_holders:
            dirty.update(keys_of(memo.by_holder, holder))
        previous = last.assigned if isinstance(last.assigned, Versioned) else Versioned(last.assigned)
        refused, pending, discarded = {}, {}, dict(last.discarded)
        for key in dirty:
            discarded.pop(key, None)
    # Sharing: every member of a group some dirty Service is (or was) in is decided again.
    for key in list(dirty):
        service = services.get(key)
        groups = [_group_of(memo.decided[key])] if key in memo.decided else []
        if service is not None and is_managed(config, service):
            share = sharing_key(service)
            if share is not None:
                groups.append((service.namespace, share))
        for group in groups:
            if group is not None:
                for member in memo.by_group.get(group, ()):
                    dirty.add(member)
    for key in dirty:  # forget what they were: they are indexed again below
        old_holder = memo.decided.pop(key, None)
        if old_holder is not None:
            unindex_key(memo.by_holder, old_holder, key)
            old_group = _group_of(old_holder)
            if old_group is not None:
                memo.by_group.get(old_group, set()).discard(key)

    state = _State(config, memo.holders, memo.floors)
    claims: dict[Addr, AddressRecord] = {}
    joining: dict[Addr, AddressRecord] = {}
    fresh: dict[str, Assignment] = {}  # the re-decided Services' assignments
    # By the snapshot's own key strings: service.key would build another one per Service,
    # and the memo's indexes keep it (66 bytes each at 10,000, tracemalloc).
    todo = sorted(
        (k for k in dirty if k in services and is_managed(config, services[k])), key=lambda k: _order_key(services[k])
    )
    try:
        for key in todo:
            service = services[key]
            outcome, holder, group = _decide_recorded(config, state, memo, records, cluster, service, claims, joining)
            if isinstance(outcome, Assignment):
                fresh[key] = outcome
            elif isinstance(outcome, Refusal):
                refused[key] = outcome
            else:
                pending[key] = outcome
            ignored = _status_ignored(service, outcome)
            if ignored:
                discarded[key] = ignored
            memo.decided[key] = holder
            index_key(memo.by_holder, holder, key)
            if group is not None:
                memo.by_group.setdefault(group, set()).add(key)
    finally:
        state.restore()  # the memo's index holds records and reservations only
    memo.services = services
    memo.last = Allocation(
        assigned=_assignments_after(previous, dirty, fresh),
        refused=refused,
        discarded=discarded,
        claims=tuple(claims[a] for a in sorted(claims)),
        pending=pending,
        joining=tuple(joining[a] for a in sorted(joining)),
    )
    return memo.last


def _assignments_after(previous: Optional[Versioned], dirty: set[str], fresh: Mapping[str, Assignment]) -> Versioned:
    """`previous` with the re-decided Services (`dirty`) assigned as in `fresh` (absent: none).

    The very same dict when none of them changed (a new Service still waiting for its
    record, a status written back): every consumer then sees "no change" by identity, and
    nothing is copied; copying 10,000 assignments was ~1 ms of each such event (py-spy).
    Otherwise a successor that notes what this run re-decided (replaced_keys)."""
    if previous is None:
        return Versioned(fresh)  # a first version keeps no set of every key
    if all(previous.get(key) == fresh.get(key) for key in dirty):
        return previous
    assigned = previous.successor()
    for key in dirty:
        if key in fresh:
            assigned[key] = fresh[key]
        else:
            assigned.pop(key, None)
    assigned.note_all(dirty)
    return assigned


def _decide_recorded(
    config: Config,
    state: _State,
    memo: RecordsMemo,
    records: Records,
    cluster: str,
    service: ServiceView,
    claims: dict[Addr, AddressRecord],
    joining: dict[Addr, AddressRecord],
):
    """One Service's outcome: an Assignment, a Refusal, or why it waits (str); with its holder
    identity and sharing group. New addresses go into `claims`, records to join into `joining`."""
    request = _parse_request(config, service, with_status=False)  # status is no evidence here
    if request.refusal is None and request.share_key is not None and not SHARING_KEY.fullmatch(request.share_key):
        request.refusal = Refusal(
            INVALID_SHARING_KEY,
            f"sharing key {quote(request.share_key)} is not a plain token (letters, digits, '-', '_', '.')",
        )
    holder = holder_of(service.namespace, service.name, request.share_key)
    group = (service.namespace, request.share_key) if request.share_key is not None else None
    if request.refusal is not None:
        return request.refusal, holder, group
    if not request.requested and holder in memo.reserved:
        request.requested = tuple(memo.reserved[holder])  # a reservation is a request made by the config
        request.families = tuple(dict.fromkeys(v for v, _ in request.requested))
    elif not request.requested and holder not in memo.held_by and holder in memo.carried:
        # Its pool moved to the other store: it asks there for the address it had.
        request.requested = tuple(sorted(memo.carried[holder]))
        request.families = tuple(dict.fromkeys(v for v, _ in request.requested))
    waiting = _unknown_store(config, state, request, records)
    if waiting is not None:
        return waiting, holder, group
    held = list(memo.held_by.get(holder, ()))
    if group is not None:  # claimed for the group earlier in this run: as good as recorded
        held += sorted((addr, rec) for addr, rec in claims.items() if rec.holder == holder)
    # The identity's recorded addresses that still fit what the Service asks for; per
    # family the lowest (invariant 2's tie-break).
    kept: dict[int, tuple[Addr, PoolConfig]] = {}
    for addr, _ in held:
        if addr[0] in kept or (request.requested and addr not in request.requested):
            continue
        if not request.requested and addr[0] not in request.families[: 1 if request.mode == "single" else 2]:
            continue
        checked = _check_address(state, request, addr, "recorded address")
        if isinstance(checked, Refusal):
            if group is not None:
                # One sharing group, one address per family, in every cluster: a member whose
                # ports collide is refused, not given a second address that another cluster,
                # where the group has other members, could not tell apart (invariant 2).
                return checked, holder, group
        elif not kept or next(iter(kept.values()))[1].name == checked.name:
            kept[addr[0]] = (addr, checked)
    wanted = request.families[: 1 if request.mode == "single" else 2]
    complete = bool(kept) and len(kept) == len(request.requested or wanted)
    if complete and group is None:
        # The common case: every address the Service asks for, or every family it wants, is
        # recorded for it and passed the checks _complete would make again (kept holds one
        # pool's addresses): no search, no second check (~10 % of a cold start's allocation).
        # And no claim: the record's holder in the index already refuses everyone else (a
        # claim, put back after the run, was ~8 % of a cold start's allocation).
        return _recorded_assignment(request, held, kept, wanted, cluster, joining), holder, group
    for addr, _ in kept.values():
        state.claim(addr, request)
    # A Service that joined a sharing group counts its own former record: while another
    # cluster announces it there, this cluster does not announce it elsewhere (invariant 2).
    own = (
        [(addr, rec) for addr, rec in memo.held_by.get(service.key, ()) if rec.clusters - {cluster}]
        if holder != service.key
        else []
    )
    if own and not any(addr == k for addr, _ in own for k, _ in kept.values()):
        for addr, _ in kept.values():
            state.release(addr, request)
        return _moving(own[0][1], own[0][0]), holder, group
    if complete:  # a sharing group's member, as above, with its claims made
        return _recorded_assignment(request, held, kept, wanted, cluster, joining), holder, group
    result = _complete(state, request, kept)
    if isinstance(result, Refusal):
        for addr, _ in kept.values():
            state.release(addr, request)
        return result, holder, group
    pool, addrs = result
    new = [addr for addr in addrs if not any(addr == held_addr for held_addr, _ in kept.values())]
    # Invariant 2: while another cluster announces the identity on a recorded address,
    # this cluster does not give it a different one (a changed request, a pool that does
    # not fit here): it waits until every cluster has let the old address go.
    elsewhere = [
        (addr, rec) for addr, rec in held if rec.clusters - {cluster} and not any(addr == k for k, _ in kept.values())
    ]
    if new and elsewhere:
        for addr, _ in kept.values():
            state.release(addr, request)
        return _moving(elsewhere[0][1], elsewhere[0][0]), holder, group
    for addr in new:
        state.claim(addr, request)
        claims.setdefault(
            addr,
            AddressRecord(
                address=_ip(addr),
                pool=pool.name,
                namespace=service.namespace,
                service=None if request.share_key is not None else service.name,
                sharing_key=request.share_key,
                clusters=frozenset({cluster}),
                store=store_of(pool),
            ),
        )
    if new:
        return "waiting for the allocation record of " + ", ".join(str(_ip(a)) for a in new), holder, group
    # no new address: every one is recorded for it (kept)
    return _joined_assignment(pool.name, addrs, held, cluster, joining), holder, group


def _recorded_assignment(
    request: _Request,
    held: Sequence[tuple[Addr, AddressRecord]],
    kept: Mapping[int, tuple[Addr, PoolConfig]],
    wanted: Sequence[int],
    cluster: str,
    joining: dict[Addr, AddressRecord],
) -> Union[Assignment, str]:
    """The assignment of a Service whose every address is recorded for it (`kept`): what
    it asks for, or per family the one kept (_joined_assignment)."""
    pool = next(iter(kept.values()))[1]
    addrs = request.requested or tuple(kept[v][0] for v in wanted)
    return _joined_assignment(pool.name, addrs, held, cluster, joining)


def _joined_assignment(
    pool_name: str,
    addrs: Sequence[Addr],
    held: Sequence[tuple[Addr, AddressRecord]],
    cluster: str,
    joining: dict[Addr, AddressRecord],
) -> Union[Assignment, str]:
    """The assignment of `addrs` of `pool_name`, each recorded for the Service (in `held`),
    if `cluster` is listed on each of their records; else why it waits, with the records
    it must join first in `joining`.

    Invariant 1: the clusters listed on a record are the ones that keep its address; when
    the last of them leaves, it removes the record and the address is free for another
    identity. A cluster that announced the address before its name was on the record
    (its allocator down, or the join still in flight) would go on announcing it for the
    old identity while another cluster hands it to a new one."""
    recorded = dict(held)
    records = [recorded[a] for a in addrs]
    unjoined = [rec for rec in records if cluster not in rec.clusters]
    if not unjoined:
        # the records' own address objects, not a copy per Service (80 bytes each)
        return Assignment(pool_name, tuple(rec.address for rec in records))
    for rec in unjoined:
        joining[_addr(rec.address)] = rec
    return "waiting to join the allocation record of " + ", ".join(str(rec.address) for rec in unjoined)


def _status_ignored(service: ServiceView, outcome: object) -> tuple[Refusal, ...]:
    """Status addresses that are not the Service's assignment: someone else wrote them (the
    allocator rewrites the status). Said once in an Event, so the writer learns why."""
    if not service.ingress_ips:
        return ()
    # a tuple of one or two: parse_ip's cache hands back the very object assigned, and `in`
    # finds it by identity (a frozenset hashed each address: IPv4Address.__hash__ formats hex)
    ours = outcome.addresses if isinstance(outcome, Assignment) else ()
    return tuple(
        Refusal(
            STATUS_IGNORED,
            f"status address {quote(text.strip())} ignored: the allocation records "
            f"say which address a Service holds, not its status",
        )
        for text in service.ingress_ips
        if not _is_one_of(text.strip(), ours)
    )


def _is_one_of(text: str, addresses: Sequence[IPAddress]) -> bool:
    """Whether `text` is an IP address of `addresses` (parse_ip is cached; str() of each
    assigned address was ~5 % of a cold start's allocation)."""
    try:
        return parse_ip(text) in addresses
    except ValueError:
        return False


def _moving(rec: AddressRecord, addr: Addr) -> str:
    return (
        f"{rec.holder} is on {_ip(addr)} in cluster(s) {', '.join(sorted(rec.clusters))}: one identity has one "
        f"address in every cluster; to move it, change or delete it in every cluster"
    )


def _unknown_store(config: Config, state: _State, request: _Request, records: Records) -> Optional[str]:
    """Why the Service must wait: a pool it may get an address from has a store not read yet."""
    if request.pool is not None:
        pools = [request.pool]
    elif request.requested:
        # pools do not overlap (config validation): the one holding each address
        pools = [p for p in map(state.pool_of, request.requested) if p is not None]
    else:
        pools = [p for p in config.pools if p.auto_assign and p.allows_namespace(request.service.namespace)]
    for pool in pools:
        if store_of(pool) not in records:
            return f"waiting for the {store_of(pool)} record store (pool {pool.name!r}): not read yet"
    return None


def record_updates(
    records: Records, allocation: Allocation, cluster: str
) -> tuple[list[AddressRecord], list[AddressRecord]]:
    """(records this cluster must join, records it must leave), from what it assigned (and
    the records its waiting Services must join first: Allocation.joining).

    A cluster is listed on every record whose address one of its Services uses, and on
    no other: the last cluster to leave a record removes it, which releases the address.
    A record of an identity with two records of one family (a race) is left by all, so
    it goes: only the lowest is assigned. Both lists in `_record_order`.
    """
    used = {address for assignment in allocation.assigned.values() for address in assignment.addresses}
    used |= {rec.address for rec in allocation.joining}  # to use once joined
    joins, leaves = [], []
    for store, recs in records.items():
        for key, rec in recs.items():
            if rec.address in used:
                if cluster not in rec.clusters:
                    joins.append((_record_order(store, key, rec), rec))
            elif cluster in rec.clusters:
                leaves.append((_record_order(store, key, rec), rec))
    return [rec for _, rec in sorted(joins)], [rec for _, rec in sorted(leaves)]


def _record_order(store: str, key: str, rec: AddressRecord) -> tuple:
    """The order record writes are listed in: by store, then address, then key (unique:
    two records never compare)."""
    return (store, rec.address.version, int(rec.address), key)


class RecordUpdates:
    """record_updates() by difference: the daemon asks after every allocation or record
    change, and the full walk over every record (and every assignment) was O(records) per
    new Service among 10,000 (15 % of that event's CPU, py-spy). Kept: how many assignments
    use each address, every record, and the records whose membership is wrong now (the
    answer). Only the assignments and records that are not the same objects as
    last time (the allocator keeps what it did not re-decide; the watcher replaces a
    store's dict copy-on-write) are looked at again. Equal to record_updates()
    (property-tested in tests/test_allocator_records.py)."""

    def __init__(self) -> None:
        self.cluster: Optional[str] = None
        self.assigned: Mapping[str, Assignment] = {}
        self.records: dict[str, Mapping[str, AddressRecord]] = {}
        # Addresses as Addr, not ipaddress objects: their __hash__ is Python code, and it ran
        # seven times per record on a cold start's first decision (0.4 s at 50,000; bench).
        self.used: dict[Addr, int] = {}  # address -> how many assignments use it
        self.joining: set[Addr] = set()  # the addresses of Allocation.joining: used once joined
        self.wrong: dict[str, dict[str, AddressRecord]] = {}  # store -> key -> a record to join or leave

    def update(
        self, records: Records, allocation: Allocation, cluster: str
    ) -> tuple[list[AddressRecord], list[AddressRecord]]:
        if cluster != self.cluster:
            self.__init__()  # type: ignore[misc]
            self.cluster = cluster
        look: dict[str, set[str]] = {}  # store -> keys of the records to look at again
        flipped: set[Addr] = set()  # addresses that became used or unused
        if allocation.assigned is not self.assigned:
            old, new = self.assigned, allocation.assigned
            for key in replaced_keys(old, new):
                before, after = old.get(key), new.get(key)
                for assignment, step in ((before, -1), (after, 1)):
                    for address in assignment.addresses if assignment is not None else ():
                        addr = _addr(address)
                        count = self.used.get(addr, 0) + step
                        if count > 0:
                            self.used[addr] = count
                        else:
                            self.used.pop(addr, None)
                        if (count > 0) != (count - step > 0):
                            flipped.add(addr)
            self.assigned = new
        joining = {_addr(rec.address) for rec in allocation.joining}
        if joining != self.joining:
            flipped |= joining ^ self.joining
            self.joining = joining
        for store in set(self.records) | set(records):
            old_recs, new_recs = self.records.get(store, {}), records.get(store, {})
            if old_recs is new_recs:
                continue
            look.setdefault(store, set()).update(replaced_keys(old_recs, new_recs))
        self.records = dict(records)
        if flipped:
            # An address's record is under its one canonical key in every store (records.py
            # refuses any other spelling), so no index by address is kept: it was a tuple
            # and a dict entry per record (~7 MB at 50,000, tracemalloc).
            flipped_keys = [record_key(_ip(addr)) for addr in flipped]
            for store, recs in self.records.items():
                keys = look.setdefault(store, set())
                if len(keys) >= len(recs) and all(key in keys for key in recs):
                    continue  # every record of the store is looked at already (a first decision)
                keys.update(key for key in flipped_keys if key in recs)
        for store, keys in look.items():
            recs, wrong = self.records.get(store, {}), self.wrong.setdefault(store, {})
            for key in keys:
                rec = recs.get(key)
                if rec is not None and self._uses(_addr(rec.address)) != (cluster in rec.clusters):
                    wrong[key] = rec
                else:
                    wrong.pop(key, None)
        ordered = sorted(
            (_record_order(store, key, rec), rec) for store, wrong in self.wrong.items() for key, rec in wrong.items()
        )
        joins: list[AddressRecord] = []
        leaves: list[AddressRecord] = []
        for _, rec in ordered:
            (joins if self._uses(_addr(rec.address)) else leaves).append(rec)
        return joins, leaves

    def _uses(self, addr: Addr) -> bool:
        return addr in self.used or addr in self.joining


def records_from_status(config: Config, services: Iterable[ServiceView], cluster: str) -> tuple[AddressRecord, ...]:
    """The one-time migration import: today's allocations (status + marker) as records.

    Exactly what the status-based allocator assigns (what every node announces now), one
    record per address. Run once by the first allocator of the records version; from then
    on a marker counts for nothing.
    """
    services = [s for s in services if is_managed(config, s)]
    allocation = allocate(config, services)
    by_key = {s.key: s for s in services}
    out: dict[IPAddress, AddressRecord] = {}
    # Everything assigned, whether or not its status is written yet: every node announces
    # exactly this allocation today, so importing less would withdraw a running address
    # when the cluster switches to records.
    for key, assignment in sorted(allocation.assigned.items()):
        service = by_key[key]
        share = _parse_request(config, service).share_key
        if share is not None and not SHARING_KEY.fullmatch(share):
            continue
        pool = config.pool(assignment.pool)
        for address in assignment.addresses:
            out.setdefault(
                address,
                AddressRecord(
                    address=address,
                    pool=pool.name,
                    namespace=service.namespace,
                    service=None if share is not None else service.name,
                    sharing_key=share,
                    clusters=frozenset({cluster}),
                    store=store_of(pool),
                ),
            )
    return tuple(out[a] for a in sorted(out, key=lambda a: (a.version, a)))


def allocate_snapshot(config: Config, snapshot: Snapshot, memo: Optional[RecordsMemo] = None) -> Allocation:
    """The allocation a cluster makes of `snapshot`: from its records once it has imported
    them (snapshot.records), else from Service status as before records. `memo` makes
    the records allocation incremental (the daemon keeps one)."""
    if snapshot.records is None:
        return allocate(config, snapshot.services.values())
    return allocate_recorded(config, snapshot.services, snapshot.records, config.cluster.name, memo=memo)
