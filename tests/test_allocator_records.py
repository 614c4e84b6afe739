"""The allocator in records mode: records are the only evidence (issue 13's invariants).

Each rule as a table, the attacks that used to work (forged status + allocated-from-pool
marker), and a property over three simulated clusters sharing one record store: random
creates, deletes, requests and restarts never give one address to two identities, and
an identity has one address in every cluster that announces it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpspeaker.allocator import (
    IP_IN_USE, INVALID_SHARING_KEY, PORT_CONFLICT, Allocation, Assignment, PoolUsage, RecordsMemo, RecordUpdates,
    allocate_recorded, pool_usage, record_updates,
)
from bgpspeaker.config.schema import ClusterConfig, Config, PoolConfig, SpeakerConfig
from bgpspeaker.model import ServicePort, ServiceView
from bgpspeaker.records import LOCAL, SHARED, AddressRecord, holder_of, record_key

ip = ipaddress.ip_address
net = ipaddress.ip_network


def cfg(cluster="east", shared=False, reservations=(), autoassign=True, namespaces=()):
    pool = PoolConfig("public", (net("203.0.113.0/28"), net("2001:db8::/124")), auto_assign=autoassign,
                      shared=shared, namespaces=namespaces,
                      reservations=tuple((ip(a), who) for a, who in reservations))
    return Config(cluster=ClusterConfig(cluster), speaker=SpeakerConfig(64512), pools=(pool,))


def svc(name, namespace="default", *, ann=None, ingress=(), created="2025-01-01T00:00:00Z", ports=(("TCP", 80),),
        **kw):
    return ServiceView(namespace=namespace, name=name, created=created, ingress_ips=tuple(ingress),
                       annotations=tuple(sorted((ann or {}).items())),
                       ports=tuple(ServicePort("", p, n) for p, n in ports), **kw)


def rec(address, holder, clusters=("east",), pool="public", store=LOCAL):
    namespace, _, name = holder.partition("/")
    share = name[1:] if name.startswith("*") else None
    return AddressRecord(ip(address), pool, namespace, None if share else name, share, frozenset(clusters),
                         store=store)


def store(*records):
    return {LOCAL: {record_key(r.address): r for r in records}}


def assigned(allocation: Allocation, key):
    return tuple(str(a) for a in allocation.assigned[key].addresses)


# --- the rules ------------------------------------------------------------------------------


def test_a_new_service_claims_a_record_and_waits_for_it():
    first = allocate_recorded(cfg(), [svc("web")], store(), "east")
    assert "default/web" not in first.assigned
    assert "203.0.113.0" in first.pending["default/web"]
    assert [(str(c.address), c.holder, c.clusters) for c in first.claims] == [
        ("203.0.113.0", "default/web", frozenset({"east"}))]
    then = allocate_recorded(cfg(), [svc("web")], store(*first.claims), "east")
    assert assigned(then, "default/web") == ("203.0.113.0",) and not then.claims and not then.pending


def test_the_record_decides_not_the_status_or_the_marker():
    """The three forged-marker attacks and the older-Service variant: a tenant Service, older
    than the holder, writes the holder's address into its status with our marker. Before
    records, it took the running address and the younger holder was silently renumbered."""
    holder = svc("web", created="2025-06-01T00:00:00Z")
    forger = svc("attacker", "tenant", created="2020-01-01T00:00:00Z", ingress=["203.0.113.5"],
                 ann={"bgpspeaker.io/ip-allocated-from-pool": "public", "metallb.io/ip-allocated-from-pool": "public"})
    out = allocate_recorded(cfg(), [holder, forger], store(rec("203.0.113.5", "default/web")), "east")
    assert assigned(out, "default/web") == ("203.0.113.5",)
    assert "default/web" not in out.pending
    assert all(str(c.address) != "203.0.113.5" for c in out.claims)  # the forger gets a fresh address
    assert [c.holder for c in out.claims] == ["tenant/attacker"]


def test_a_request_for_a_recorded_address_is_refused_naming_the_holder():
    thief = svc("thief", "tenant", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5"},
                created="2000-01-01T00:00:00Z")
    out = allocate_recorded(cfg(), [thief], store(rec("203.0.113.5", "default/shop", ("west",))), "east")
    refusal = out.refused["tenant/thief"]
    assert refusal.reason == IP_IN_USE
    assert "default/shop" in refusal.message and "allocation record" in refusal.message
    assert not out.claims


def test_the_same_identity_joins_the_address_another_cluster_recorded():
    """West uses east's address for the same identity once west is listed on its record,
    not before (see test_a_cluster_announces_an_address_only_once_listed_on_its_record)."""
    records = store(rec("203.0.113.7", "default/shop", ("east",)))
    out = allocate_recorded(cfg("west"), [svc("shop")], records, "west")
    assert "default/shop" not in out.assigned and not out.claims
    assert out.pending["default/shop"] == "waiting to join the allocation record of 203.0.113.7"
    joins, leaves = record_updates(records, out, "west")
    assert [str(r.address) for r in joins] == ["203.0.113.7"] and leaves == []
    joined = store(rec("203.0.113.7", "default/shop", ("east", "west")))
    out = allocate_recorded(cfg("west"), [svc("shop")], joined, "west")
    assert assigned(out, "default/shop") == ("203.0.113.7",) and record_updates(joined, out, "west") == ([], [])


def test_a_deleted_service_is_left_and_the_last_cluster_out_deletes():
    records = store(rec("203.0.113.7", "default/shop", ("east", "west")), rec("203.0.113.8", "default/gone"))
    out = allocate_recorded(cfg(), [svc("shop")], records, "east")
    joins, leaves = record_updates(records, out, "east")
    assert joins == [] and [r.holder for r in leaves] == ["default/gone"]


def test_record_writes_by_difference_keep_an_address_while_one_sharer_still_uses_it():
    """RecordUpdates counts the assignments on each address: one of two Services sharing
    an address goes (the other's assignment the same object, as the allocator keeps it), so
    the record is not left; the last one going leaves it. Each step the same as
    record_updates() from scratch; the pool gauges (PoolUsage) count the address until then."""
    address = Assignment("public", (ip("203.0.113.4"),))
    a, b = address, Assignment("public", (ip("203.0.113.4"),))
    records = store(rec("203.0.113.4", "default/*k"))
    updates, usage, config = RecordUpdates(), PoolUsage(), cfg()
    for assigned_, leaving in (({"default/a": a, "default/b": b}, []), ({"default/a": a}, []),
                               ({}, ["203.0.113.4"])):
        out = Allocation(assigned=assigned_, refused={})
        assert usage.update(config, out) == pool_usage(config, out) == {"public": (32, len(assigned_) and 1)}
        joins, leaves = updates.update(records, out, "east")
        assert (joins, leaves) == record_updates(records, out, "east")
        assert joins == [] and [str(r.address) for r in leaves] == leaving


def test_two_records_of_one_identity_the_lowest_is_kept_and_the_other_left():
    records = store(rec("203.0.113.9", "default/shop", ("west",)), rec("203.0.113.3", "default/shop", ("east",)))
    assert assigned(allocate_recorded(cfg("east"), [svc("shop")], records, "east"), "default/shop") == ("203.0.113.3",)
    west = allocate_recorded(cfg("west"), [svc("shop")], records, "west")
    assert west.pending["default/shop"] == "waiting to join the allocation record of 203.0.113.3"  # not .9
    joins, leaves = record_updates(records, west, "west")
    assert [str(r.address) for r in leaves] == ["203.0.113.9"] and [str(r.address) for r in joins] == ["203.0.113.3"]


def test_reservations_pin_an_address_to_its_identity():
    config = cfg(reservations=[("203.0.113.0", "default/pinned")])
    out = allocate_recorded(config, [svc("other", created="2000-01-01T00:00:00Z"), svc("pinned")], store(), "east")
    claims = {c.holder: str(c.address) for c in out.claims}
    assert claims == {"default/other": "203.0.113.1", "default/pinned": "203.0.113.0"}
    asks = svc("asks", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.0"})
    refused = allocate_recorded(config, [asks], store(), "east").refused["default/asks"]
    assert refused.reason == IP_IN_USE and "reserved" in refused.message and "default/pinned" in refused.message
    assert refused.pool == "public"  # the conflicts metric's label, carried, not parsed back out of the message


def test_a_reservation_does_not_override_an_existing_record():
    config = cfg(reservations=[("203.0.113.0", "default/pinned")])
    out = allocate_recorded(config, [svc("pinned")], store(rec("203.0.113.0", "default/earlier")), "east")
    assert out.refused["default/pinned"].reason == IP_IN_USE
    assert "default/earlier" in out.refused["default/pinned"].message


def test_the_memo_forgets_a_runs_claims_and_gives_a_reservation_back_when_its_record_goes():
    """The memo's holder index is shared with each run, which writes its claims through it and
    puts it back (O(claims), not a copy of every record per event). A claim that never
    became a record must not stay held; a reserved address whose record went is the
    reservation's again. Each step equals a run without memo."""
    config = cfg(reservations=[("203.0.113.5", "default/pinned")])
    memo = RecordsMemo()

    def both(services, records):
        return _with_and_without_memo(config, memo, services, records)

    a = svc("a")
    assert [str(c.address) for c in both([a], store()).claims] == ["203.0.113.0"]  # claimed, never created
    b = svc("b")
    assert [str(c.address) for c in both([b], store()).claims] == ["203.0.113.0"]  # a's claim is gone with a
    asks = svc("asks", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5"})
    held = store(rec("203.0.113.5", "default/asks"))  # recorded before the reservation was configured
    assert assigned(both([asks], held), "default/asks") == ("203.0.113.5",)
    refused = both([asks], store()).refused["default/asks"]  # its record deleted: reserved again
    assert "default/pinned" in refused.message


def _with_and_without_memo(config, memo, services, records):
    """allocate_recorded with `memo`, checked against a run without one."""
    with_memo = allocate_recorded(config, {s.key: s for s in services}, records, "east", memo=memo)
    assert with_memo == allocate_recorded(config, services, records, "east")
    return with_memo


def test_an_autoassign_search_starts_where_an_address_may_be_free():
    """A new autoAssign Service's search starts at its pool's floor in the memo: below it,
    every address was held by a record or a reservation before the run. It walked the pool
    from its first address at every run (~3 ms with 10,000 records, ~24 ms with 50,000). The
    floor stops at the run's own claims (a Service waiting for its record claims the same
    address at every run) and goes back down when a record goes. Each step equals a run
    without memo."""
    config, memo = cfg(), RecordsMemo()
    old = [svc(f"old{i}") for i in range(10)]
    held = [rec(f"203.0.113.{i}", f"default/old{i}") for i in range(10)]
    a, b = svc("a", created="2025-01-02T00:00:00Z"), svc("b", created="2025-01-03T00:00:00Z")

    first = _with_and_without_memo(config, memo, old + [a, b], store(*held))
    assert [(str(c.address), c.holder) for c in first.claims] == [
        ("203.0.113.10", "default/a"), ("203.0.113.11", "default/b")]
    assert memo.floors[("public", 4)] == int(ip("203.0.113.10"))  # past the records, not the claims
    again = _with_and_without_memo(config, memo, old + [a, b], store(*held))  # no record yet
    assert again.claims == first.claims

    # a's record is in; old3 is deleted and its record gone: the oldest waiting Service
    # gets .3, below the floor, and the next one the lowest address after a's
    c = svc("c", created="2025-01-04T00:00:00Z")
    left = [s for s in old if s.name != "old3"]
    records = store(*(r for r in held if str(r.address) != "203.0.113.3"), first.claims[0])
    then = _with_and_without_memo(config, memo, left + [a, b, c], records)
    assert assigned(then, "default/a") == ("203.0.113.10",)
    assert [(str(cl.address), cl.holder) for cl in then.claims] == [
        ("203.0.113.3", "default/b"), ("203.0.113.11", "default/c")]


def test_a_sharing_group_holds_one_record_and_ports_still_conflict():
    share = {"bgpspeaker.io/allow-shared-ip": "k"}
    a = svc("a", ann=share, ports=(("TCP", 80),), created="2025-01-01T00:00:00Z")
    b = svc("b", ann=share, ports=(("TCP", 443),), created="2025-01-02T00:00:00Z")
    c = svc("c", ann=share, ports=(("TCP", 80),), created="2025-01-03T00:00:00Z")
    first = allocate_recorded(cfg(), [a, b, c], store(), "east")
    # c's port collides with a's. Without records the group took a second address for c;
    # with records one group has one address per family in every cluster, so c is refused
    # (another cluster, where c's group has other members, could not tell the two apart).
    assert [(str(r.address), r.holder) for r in first.claims] == [("203.0.113.0", "default/*k")]
    assert first.refused["default/c"].reason == PORT_CONFLICT
    then = allocate_recorded(cfg(), [a, b, c], store(*first.claims), "east")
    assert assigned(then, "default/a") == assigned(then, "default/b") == ("203.0.113.0",)
    assert then.refused["default/c"].reason == PORT_CONFLICT and not then.claims
    bad = svc("bad", ann={"bgpspeaker.io/allow-shared-ip": "a key with spaces"})
    assert allocate_recorded(cfg(), [bad], store(), "east").refused["default/bad"].reason == INVALID_SHARING_KEY


def test_a_pool_whose_store_is_unknown_waits():
    out = allocate_recorded(cfg(shared=True), [svc("web")], store(), "east")  # only the local store is known
    assert "shared record store" in out.pending["default/web"] and not out.claims and not out.assigned


def test_a_record_in_the_wrong_store_is_not_evidence():
    records = {LOCAL: {}, SHARED: {"x": rec("203.0.113.0", "default/other", store=SHARED)}}
    out = allocate_recorded(cfg(), [svc("web")], records, "east")  # the pool is local: the shared record is ignored
    assert [str(c.address) for c in out.claims] == ["203.0.113.0"]


def test_a_namespace_that_may_not_use_the_pool_does_not_keep_a_record():
    records = store(rec("203.0.113.4", "tenant/web"))
    out = allocate_recorded(cfg(namespaces=("default",)), [svc("web", "tenant")], records, "east")
    assert "tenant/web" in out.refused and "tenant/web" not in out.assigned


def test_holder_names():
    assert holder_of("ns", "web", None) == "ns/web" and holder_of("ns", "web", "k") == "ns/*k"
    assert record_key(ip("2001:db8::5")) == "2001-0db8-0000-0000-0000-0000-0000-0005"


# --- three clusters, one store: the invariants under random events --------------------------


class SharedStore:
    """What the record keeper and the API server do for records, one entry per address: a
    claim lands only where the address has none, joins and leaves change an entry's
    clusters, and the last one out removes it."""

    def __init__(self):
        self.objects: dict[str, AddressRecord] = {}

    def view(self):
        return {SHARED: dict(self.objects)}

    def create(self, record: AddressRecord) -> bool:
        name = record_key(record.address)
        if name in self.objects:
            return False  # 409 AlreadyExists: the allocator re-reads and decides again
        self.objects[name] = record
        return True

    def apply(self, cluster, joins, leaves):
        for r in joins:
            current = self.objects.get(record_key(r.address))
            if current == r:
                self.objects[record_key(r.address)] = dataclasses.replace(r, clusters=r.clusters | {cluster})
        for r in leaves:
            current = self.objects.get(record_key(r.address))
            if current == r:
                rest = r.clusters - {cluster}
                if rest:
                    self.objects[record_key(r.address)] = dataclasses.replace(r, clusters=rest)
                else:
                    del self.objects[record_key(r.address)]


CLUSTERS = ("east", "west", "central")
NAMES = [f"s{i}" for i in range(8)]
SHARE = {"bgpspeaker.io/allow-shared-ip": "k"}


def _check_invariants(latest: dict[str, tuple[Allocation, dict[str, ServiceView]]]):
    """Over what each cluster announces now: its latest allocation, of the Services as they
    were when it was made (the identity of a Service that joined a sharing group since is
    its group only once its cluster has decided again)."""
    by_address: dict = {}
    by_identity: dict = {}
    for cluster, (allocation, seen) in latest.items():
        for key, assignment in allocation.assigned.items():
            service = seen[key]
            share = dict(service.annotations).get("bgpspeaker.io/allow-shared-ip")
            identity = holder_of(service.namespace, service.name, share)
            for address in assignment.addresses:
                by_address.setdefault(address, set()).add(identity)
            by_identity.setdefault(key, set()).add(assignment.addresses)
    assert all(len(ids) == 1 for ids in by_address.values()), by_address
    assert all(len(sets) == 1 for sets in by_identity.values()), by_identity


ACTIONS = st.lists(st.tuples(st.sampled_from(["create", "delete", "request", "share", "restart", "step", "down"]),
                             st.sampled_from(CLUSTERS), st.sampled_from(NAMES), st.integers(0, 15)),
                   min_size=5, max_size=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS, st.randoms(use_true_random=False))
def test_three_clusters_one_store_never_break_invariants_1_and_2(actions, rnd):
    store_ = SharedStore()
    services: dict[str, dict[str, ServiceView]] = {c: {} for c in CLUSTERS}
    latest: dict[str, Allocation] = {}
    clock = 0
    down: set[str] = set()  # clusters whose writes do not reach the store now

    memos = {c: RecordsMemo() for c in CLUSTERS}
    updates = {c: RecordUpdates() for c in CLUSTERS}
    usages = {c: PoolUsage() for c in CLUSTERS}
    # a reservation for one of the names: the memo's index gives the address back to it when its record goes
    configs = {c: cfg(c, shared=True, reservations=[("203.0.113.5", f"default/{NAMES[1]}")]) for c in CLUSTERS}

    def step(cluster, writes=True):
        # A cluster's allocator: decide from what it sees, create its claims (some may lose
        # the race: 409), join and leave; its nodes then announce what it assigned. Without
        # `writes`, none of its writes reach the store (its allocator down, the store out of
        # reach, or the writes still in flight), and its nodes announce from what they read.
        config = configs[cluster]
        seen = store_.view()
        allocation = allocate_recorded(config, dict(services[cluster]), seen, cluster, memo=memos[cluster])
        # The incremental run decides exactly what a run from scratch decides.
        assert allocation == allocate_recorded(config, services[cluster].values(), seen, cluster)
        order = list(allocation.claims) if writes else []
        rnd.shuffle(order)
        for claim in order:
            store_.create(claim)
        joins, leaves = record_updates(seen, allocation, cluster)
        # ... and so do the record writes kept by difference: the very same records, in order.
        kept = updates[cluster].update(seen, allocation, cluster)
        assert [list(map(id, side)) for side in kept] == [list(map(id, joins)), list(map(id, leaves))]
        assert usages[cluster].update(config, allocation) == pool_usage(config, allocation)  # the gauges too
        if writes:
            store_.apply(cluster, joins, leaves)
        latest[cluster] = (allocation, dict(services[cluster]))
        _check_invariants(latest)

    for action, cluster, name, n in actions:
        clock += 1
        if action == "create" and f"default/{name}" not in services[cluster]:
            # The same identity may exist in another cluster already: the same Service (its
            # spec and annotations; docs/design.md §6: a Service whose sharing key differs
            # between clusters is two identities). A request stays per cluster (below).
            same = next((services[o][f"default/{name}"] for o in CLUSTERS if f"default/{name}" in services[o]), None)
            services[cluster][f"default/{name}"] = same or svc(name, created=f"2025-01-01T00:00:{clock:02d}Z")
        elif action == "delete":
            services[cluster].pop(f"default/{name}", None)
        elif action == "request" and f"default/{name}" in services[cluster]:
            old = services[cluster][f"default/{name}"]
            wanted = {**dict(old.annotations), "bgpspeaker.io/load-balancer-ips": f"203.0.113.{n}"}
            services[cluster][old.key] = dataclasses.replace(old, annotations=tuple(sorted(wanted.items())))
        elif action == "share":
            # A spec change made the same way in every cluster holding the Service (one
            # identity, one spec): it joins sharing group "k" with its own port.
            for c in CLUSTERS:
                if f"default/{name}" in services[c]:
                    old = services[c][f"default/{name}"]
                    services[c][old.key] = dataclasses.replace(
                        old, annotations=tuple(sorted(SHARE.items())), ports=(ServicePort("", "TCP", 80 + n),))
        elif action == "restart":
            latest.pop(cluster, None)  # a new allocator starts from the store alone
            memos[cluster], updates[cluster], usages[cluster] = RecordsMemo(), RecordUpdates(), PoolUsage()
        elif action == "down":  # its allocator's writes stop reaching the store, or start again
            down ^= {cluster}
        step(cluster, writes=cluster not in down)
    # Quiesce: every cluster runs until nothing changes; then every identity is settled.
    down.clear()
    for _ in range(4):
        for cluster in CLUSTERS:
            step(cluster)
    for cluster in CLUSTERS:
        allocation = latest[cluster][0]
        assert not allocation.claims or all("waiting" in allocation.pending.get(k, "waiting")
                                            for k in allocation.pending)


def test_a_cluster_announces_an_address_only_once_listed_on_its_record():
    """Found by an attack on the records: west announced shop on east's record before its
    allocator joined it (down, or the join in flight). East deleted shop, was the last one
    listed, deleted the record, and gave the address to payroll: the router had it from
    east for payroll and from west for shop. West now waits until it is listed."""
    store_, latest = SharedStore(), {}
    shop, payroll = svc("shop"), svc("payroll", created="2025-02-01T00:00:00Z")

    def run(cluster, services, view=None, writes=True):
        seen = store_.view() if view is None else view
        allocation = allocate_recorded(cfg(cluster, shared=True), services, seen, cluster)
        if writes:
            for claim in allocation.claims:
                store_.create(claim)
            store_.apply(cluster, *record_updates(seen, allocation, cluster))
        latest[cluster] = (allocation, {s.key: s for s in services})
        return allocation, seen

    run("east", [shop])
    run("east", [shop])
    west, west_view = run("west", [shop], writes=False)  # west's allocator cannot write
    assert "default/shop" not in west.assigned
    assert west.pending["default/shop"] == "waiting to join the allocation record of 203.0.113.0"
    run("east", [])  # shop deleted in east: the last one listed deletes its record
    run("east", [payroll])
    run("east", [payroll])
    run("west", [shop], view=west_view, writes=False)  # west, from what it read last
    _check_invariants(latest)
    assert assigned(latest["east"][0], "default/payroll") == ("203.0.113.0",)


def test_the_issue_payroll_and_shop_case_in_three_clusters():
    """payroll only in west (older), shop in east and west: one address each, shop's the same."""
    store_ = SharedStore()
    payroll = svc("payroll", created="2024-01-01T00:00:00Z")
    shop = svc("shop", created="2025-01-01T00:00:00Z", ann={"bgpspeaker.io/cluster-preference": "east,west"})
    services = {"east": {shop.key: shop}, "west": {payroll.key: payroll, shop.key: shop}, "central": {}}
    latest = {}
    for cluster in ("east", "west", "central", "east", "west"):
        seen = store_.view()  # joins and leaves come from the records the allocation saw, never fresher
        allocation = allocate_recorded(cfg(cluster, shared=True), services[cluster].values(), seen, cluster)
        for claim in allocation.claims:
            store_.create(claim)
        store_.apply(cluster, *record_updates(seen, allocation, cluster))
        latest[cluster] = (allocation, dict(services[cluster]))
    _check_invariants(latest)
    east, west = latest["east"][0], latest["west"][0]
    assert assigned(east, "default/shop") == assigned(west, "default/shop")
    assert assigned(west, "default/payroll") != assigned(west, "default/shop")
    assert random  # the module's hypothesis strategies use it through st.randoms


def test_a_changed_request_waits_while_another_cluster_announces_the_old_address():
    records = store(rec("203.0.113.0", "default/shop", ("east", "west")))
    moved = svc("shop", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.9"})
    out = allocate_recorded(cfg("east"), [moved], records, "east")
    assert "default/shop" not in out.assigned and not out.claims
    assert "203.0.113.0 in cluster(s) east, west" in out.pending["default/shop"]
    # once this cluster is the only one left on it, the move goes ahead: leave, then claim
    alone = store(rec("203.0.113.0", "default/shop", ("east",)))
    out = allocate_recorded(cfg("east"), [moved], alone, "east")
    assert [str(c.address) for c in out.claims] == ["203.0.113.9"]
    assert [str(r.address) for r in record_updates(alone, out, "east")[1]] == ["203.0.113.0"]


def test_a_pool_marked_shared_keeps_every_address_it_had_in_the_local_store():
    """Moving a pool to a shared store renumbers nothing: a Service without a record there
    asks for the address its local record held, and a conflict is refused naming the holder."""
    local = {"a": rec("203.0.113.4", "default/web"), "b": rec("203.0.113.5", "default/api")}
    shared = {"c": rec("203.0.113.5", "default/other", ("west",), store=SHARED)}
    out = allocate_recorded(cfg(shared=True), [svc("web"), svc("api")], {LOCAL: local, SHARED: shared}, "east")
    assert [(str(c.address), c.holder, c.store) for c in out.claims] == [("203.0.113.4", "default/web", SHARED)]
    assert out.refused["default/api"].reason == IP_IN_USE and "default/other" in out.refused["default/api"].message


def test_a_snapshot_with_records_allocates_without_a_memo():
    """The offline commands (plan, explain, audit) allocate a snapshot of a file without a
    memo: its Services, a dict by key, were iterated as if they were views (AttributeError:
    'str' object has no attribute 'key'). Found by mypy. Same result as with a memo."""
    from bgpspeaker.allocator import RecordsMemo, allocate_snapshot
    from bgpspeaker.model import Snapshot

    config = cfg()
    held = rec("203.0.113.1", "default/a")
    snapshot = dataclasses.replace(Snapshot.of([svc("a"), svc("b")]), records=store(held))
    without = allocate_snapshot(config, snapshot)
    assert without == allocate_snapshot(config, snapshot, memo=RecordsMemo())
    assert assigned(without, "default/a") == ("203.0.113.1",)
    assert "default/b" in without.pending  # a new Service: claims its record and waits for it


def test_a_key_index_holds_one_key_as_itself_and_several_as_a_set():
    """bgpspeaker/keyindex.py (RecordsMemo.by_holder, the informer's slices by Service): a
    set per name was 2.3 MB at 10,000; one key is kept as itself, several as a set, and an
    emptied entry goes away."""
    from bgpspeaker.keyindex import index_key, keys_of, unindex_key

    index: dict = {}
    index_key(index, "default/web", "default/web")
    index_key(index, "default/web", "default/web")
    assert index == {"default/web": "default/web"} and list(keys_of(index, "default/web")) == ["default/web"]
    index_key(index, "default/*k", "default/a")
    index_key(index, "default/*k", "default/b")
    assert set(keys_of(index, "default/*k")) == {"default/a", "default/b"}
    unindex_key(index, "default/*k", "default/a")
    assert index["default/*k"] == "default/b"
    unindex_key(index, "default/*k", "default/b")
    unindex_key(index, "default/web", "default/other")  # not indexed under it: nothing changes
    assert index == {"default/web": "default/web"} and list(keys_of(index, "nobody")) == []


def test_a_sharing_group_is_read_back_from_its_identity():
    """RecordsMemo.decided keeps only the identity a Service was decided as (the view and
    the group beside it were 85 bytes per Service); the group comes back from it."""
    from bgpspeaker.allocator import _group_of
    from bgpspeaker.records import holder_of

    assert _group_of(holder_of("team", "web", "k.1")) == ("team", "k.1")
    assert _group_of(holder_of("team", "web", None)) is None


def test_record_writes_by_difference_with_one_address_recorded_in_both_stores():
    """RecordUpdates finds an address's record in each store under its one key (record_key):
    an address with a record in each store (a pool marked shared since) keeps both."""
    local, shared = rec("203.0.113.4", "default/a"), rec("203.0.113.4", "default/a", store="shared")
    key = record_key(local.address)
    config = cfg()
    updates = RecordUpdates()
    for records in (
        {LOCAL: {key: local}, "shared": {key: shared}},
        {LOCAL: {key: local}, "shared": {}},
        {LOCAL: {}, "shared": {key: shared}},
        {LOCAL: {key: local}, "shared": {key: shared}},
    ):
        out = allocate_recorded(config, [svc("a")], records, "east")
        assert updates.update(records, out, "east") == record_updates(records, out, "east")
