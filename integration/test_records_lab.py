"""Allocation you can trust, at the router: three clusters, one record store (issue 13).

The lab's three clusters (east: 2 nodes, west, central) share pool 203.0.113.0/28 through
a record store: one more emulated API, which every speaker reaches with the kubeconfig
named by `sharedStore` (docs/design.md, "Addresses across clusters"). Every test judges
from outside: the router's own RIB, each daemon's /status (which Service each announced
prefix belongs to), the records in the store, and real HTTP from the client.
"""

from __future__ import annotations

import time

import pytest

from bgpspeaker.records import AddressRecord
from integration.conftest import lab_for_test, start_lab
from integration.lab import netns
from integration.lab.cluster_lab import (
    RECORDS_NAMESPACE, endpoint_slice_object, record_measurement, service_object,
)
from integration.lab.wait import wait_until
from testkit.records import recorded

pytestmark = pytest.mark.lab

POOL_PREFIX = "203.0.113."


@pytest.fixture(scope="module")
def shared():
    lab = start_lab(shared_store=True)
    yield lab
    lab.close()


@pytest.fixture
def lab(shared, request):
    yield from lab_for_test(shared, request)
    for cluster, emulator in shared.emulators.items():  # what the tests created beside lab.services
        for namespace, name in (("default", "payroll"), ("default", "shop"), ("tenant", "thief"),
                                ("default", "late"), ("tenant", "old"), ("default", "running")):
            for api_version, kind, obj_name in (("v1", "Service", name),
                                                ("discovery.k8s.io/v1", "EndpointSlice", f"{name}-{cluster}")):
                try:
                    emulator.delete_object(api_version, kind, namespace, obj_name)
                except Exception:
                    pass
    wait_until(lambda: not shared.router.prefixes("ipv4"), 20, "the router's table to be empty")
    wait_until(lambda: not _records(shared), 20, "every record released")


def _create(lab, cluster, name, *, namespace="default", preference=None, vip=None, created=None, extra=None):
    obj = service_object(name, vip, preference, namespace=namespace)
    if created:
        obj["metadata"]["creationTimestamp"] = created
    if extra:
        extra(obj)
    nodes = {n.name: True for n in lab.nodes.values() if n.cluster == cluster}
    lab.emulators[cluster].set_object(obj)
    lab.emulators[cluster].set_object(endpoint_slice_object(name, cluster, nodes, namespace))


def _records(lab) -> dict[str, AddressRecord]:
    """address -> its record, from the store itself."""
    return recorded(lab.store.snapshot().get("v1/ConfigMap") or [], RECORDS_NAMESPACE)


def _ingress(lab, cluster, name, namespace="default"):
    ips = lab.service_ingress(cluster, name, namespace)
    return ips[0] if ips else None


def _services_by_prefix(lab) -> dict[str, set[str]]:
    """prefix -> every Service any node of any cluster announces it for (from each /status)."""
    out: dict[str, set[str]] = {}
    for node in lab.speakers:
        for route in lab.status(node)["routes"]:
            out.setdefault(route["prefix"], set()).add(route["service"])
    return out


def test_payroll_and_shop_one_prefix_one_service_and_shop_the_same_everywhere(lab):
    """The issue's case: payroll only in west (older, no preference), shop in east and west
    ("east,west"), neither asking for an address. Without a store, east gave shop .0 and
    west gave payroll .0: the router held .0 for two applications."""
    _create(lab, "west", "payroll", created="2024-01-01T00:00:00Z")
    _create(lab, "east", "shop", preference="east,west", created="2025-01-01T00:00:00Z")
    _create(lab, "west", "shop", preference="east,west", created="2025-01-01T00:00:00Z")
    wait_until(lambda: _ingress(lab, "east", "shop") and _ingress(lab, "west", "shop")
               and _ingress(lab, "west", "payroll"), 20, "every Service allocated")
    shop, payroll = _ingress(lab, "east", "shop"), _ingress(lab, "west", "payroll")
    assert _ingress(lab, "west", "shop") == shop and payroll != shop
    # every cluster using an address is listed on its record (the last one out releases it)
    wait_until(lambda: getattr(_records(lab).get(shop), "clusters", None) == {"east", "west"}, 10, "east and west on shop's record")
    records = _records(lab)
    assert records[shop].service == "shop"
    assert records[payroll].service == "payroll" and records[payroll].clusters == {"west"}
    wait_until(lambda: {lab.node_of_peer(p.peer) for p in lab.paths(shop)} == {"east-1", "east-2", "west-1"}
               and {lab.node_of_peer(p.peer) for p in lab.paths(payroll)} == {"west-1"}, 15,
               "shop from east and west, payroll from west")
    lab.wait_best_cluster(shop, "east")
    assert all(len(services) == 1 for services in _services_by_prefix(lab).values()), _services_by_prefix(lab)
    assert _services_by_prefix(lab) == {f"{shop}/32": {"default/shop"}, f"{payroll}/32": {"default/payroll"}}
    # east fails: shop's clients go to west's *shop*, never to payroll
    lab.emulators["east"].set_object(endpoint_slice_object("shop", "east", {"east-1": False, "east-2": False}))
    lab.wait_best_cluster(shop, "west")
    assert _services_by_prefix(lab)[f"{shop}/32"] == {"default/shop"}


def test_a_tenant_asking_for_another_clusters_address_is_refused_naming_the_holder(lab):
    _create(lab, "east", "shop", preference="east,west")
    wait_until(lambda: _ingress(lab, "east", "shop"), 20, "shop allocated in east")
    shop = _ingress(lab, "east", "shop")
    lab.wait_best_cluster(shop, "east")
    # west never had shop; a tenant there asks for shop's address, and to be primary for it
    _create(lab, "west", "thief", namespace="tenant", preference="west", vip=shop, created="2000-01-01T00:00:00Z")

    def refusal():
        events = lab.emulators["west"].events_for("tenant", "thief")
        return next((e for e in events if e.get("reason") == "AllocationFailed"), None)

    event = wait_until(refusal, 15, "an AllocationFailed Event on the tenant's Service")
    assert "default/shop" in event["message"] and shop in event["message"], event["message"]
    assert _ingress(lab, "west", "thief") is None
    assert {lab.node_of_peer(p.peer) for p in lab.paths(shop)} == {"east-1", "east-2"}
    assert _services_by_prefix(lab)[f"{shop}/32"] == {"default/shop"}
    # Counted by the reconcile that made the refusal, after its plan reached ExaBGP; the
    # Event comes from the status writer's thread, which does not wait for that: no order.
    wait_until(lambda: (lab.metric("west-1", "bgpspeaker_allocator_conflicts_total", {"pool": "public"}) or 0) >= 1,
               10, "west-1 counts the conflict")


def test_the_store_down_for_30_s_moves_no_route_and_a_new_service_waits(lab):
    _create(lab, "east", "shop", preference="east,west")
    _create(lab, "west", "shop", preference="east,west")
    wait_until(lambda: _ingress(lab, "east", "shop") and _ingress(lab, "west", "shop"), 20, "shop allocated")
    shop = _ingress(lab, "east", "shop")
    wait_until(lambda: len(lab.paths(shop)) == 3, 15, "shop from the 3 nodes of east and west")
    before = {(p.peer, p.med) for p in lab.paths(shop)}
    lab.store.outage(30)
    t0 = time.monotonic()
    _create(lab, "west", "late")
    # Read while the store is still down: read after the 30 s, the gauge raced the store's
    # return (the Service was allocated 0.1 s before, and the gauge said 0; ci-fresh).
    wait_until(lambda: lab.metric("west-1", "bgpspeaker_allocator_pending_services") == 1, 10, "late counted pending")
    moved = []
    while time.monotonic() - t0 < 28:  # the outage ends 30 s after t0: watched until just before
        now = {(p.peer, p.med) for p in lab.paths(shop)}
        if now != before:
            moved.append(now)
        assert _ingress(lab, "west", "late") is None, "allocated without a record"
        time.sleep(0.25)
    assert moved == [], f"shop's paths changed while the store was down: {moved}"
    events = lab.emulators["west"].events_for("default", "late")
    assert any(e.get("reason") == "AllocationPending" for e in events), events
    t_back = time.monotonic()
    late = wait_until(lambda: _ingress(lab, "west", "late"), 30, "the waiting Service allocated once the store is back")
    record_measurement("store back -> waiting Service allocated (s)", [time.monotonic() - t_back])
    assert late.startswith(POOL_PREFIX) and late != shop
    wait_until(lambda: lab.paths(late), 10, "the new Service announced")
    assert {(p.peer, p.med) for p in lab.paths(shop)} == before


def test_forged_marker_from_an_older_tenant_service_takes_nothing_at_the_router(lab):
    """An older tenant Service writes a running Service's address into its status, with our
    allocated-from-pool marker: before records, it took the address and the running
    Service was silently renumbered. Now the running one keeps address and traffic."""
    lab.create_service("running", None, "east", clusters=["east"])
    wait_until(lambda: _ingress(lab, "east", "running"), 20, "running allocated")
    vip = _ingress(lab, "east", "running")
    for node in lab.nodes.values():  # what kube-proxy does once the status carries it
        try:
            netns.add_lo_addr(lab.ns[node.name], vip)
        except netns.LabError:
            pass
    lab.wait_best_cluster(vip, "east")
    lab.wait_served_by(vip, "east")

    def forge(obj):
        obj["metadata"]["annotations"]["bgpspeaker.io/ip-allocated-from-pool"] = "public"
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": vip}]}}

    with lab.probe(vip) as prober:
        _create(lab, "east", "old", namespace="tenant", preference="east", created="2000-01-01T00:00:00Z",
                extra=forge)
        # our allocator rewrites the forger's status to an address of its own
        wait_until(lambda: _ingress(lab, "east", "old", "tenant") not in (None, vip), 20,
                   "the forger's status rewritten by the allocator")
        seen = len(prober.answers)  # and 25 more requests (~0.5 s) after that decision
        wait_until(lambda: len(prober.answers) >= seen + 25, 10, "25 more requests to the VIP")
    assert prober.failures() == [], prober.failures()
    assert _ingress(lab, "east", "running") == vip
    assert _services_by_prefix(lab)[f"{vip}/32"] == {"default/running"}
    assert _records(lab)[vip].service == "running"
