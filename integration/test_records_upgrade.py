"""Upgrading a cluster in place to allocation records moves no route (issue 13).

The cluster before: 20 Services whose addresses the status-based allocator handed out
(status.loadBalancer.ingress + the allocated-from-pool annotation), deliberately not
the lowest free ones (a fresh records allocator would renumber every one of them), and
two speakers announcing them without records (`--no-allocator`: no import ever, which is
exactly how every node allocated before records). The upgrade: east-2 restarts with the
allocator. It imports the allocations once, writes the marker, and from then on both
nodes allocate from records. Judged at the router: east-1, never restarted, keeps every
path the whole time; no prefix outside the 20 ever appears; every status is unchanged.
"""

from __future__ import annotations

import pytest

from bgpspeaker.records import IMPORT_MARKER
from integration.conftest import start_lab
from integration.lab.cluster_lab import endpoint_slice_object, service_object
from integration.lab.wait import wait_until
from testkit.records import recorded

pytestmark = pytest.mark.lab

N = 20
NAMESPACE = "bgpspeaker-system"  # where the allocator keeps its records (POD_NAMESPACE's default)


def _old_address(i: int) -> str:
    # 203.0.113.0/28 has 16 addresses: the Services live in a /27 here, highest first.
    return f"198.51.100.{31 - i}"


@pytest.fixture(scope="module")
def lab():
    lab = start_lab(nodes=(("east-1", "east"), ("east-2", "east")), allocator=False)
    yield lab
    lab.close()


def _routes_by_node(lab) -> dict[str, set[str]]:
    """prefix -> the nodes the router has a path from, in one query of the whole table."""
    table = lab.router.show_json("show bgp ipv4 unicast").get("routes") or {}
    by_address = {n.address: name for name, n in lab.nodes.items()}
    out: dict[str, set[str]] = {}
    for prefix, paths in table.items():
        for path in paths:
            hops = [h.get("ip") for h in path.get("nexthops") or []]
            out.setdefault(prefix, set()).update(by_address.get(h, h) for h in hops)
    return out


def test_upgrade_in_place_with_20_services_moves_no_route(lab):
    emu = lab.emulators["east"]
    for i in range(N):
        obj = service_object(f"s{i}", None, "east")
        obj["metadata"]["annotations"]["bgpspeaker.io/ip-allocated-from-pool"] = "public"
        obj["metadata"]["creationTimestamp"] = f"2025-01-01T00:00:{i:02d}Z"
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": _old_address(i)}]}}
        emu.set_object(obj)
        emu.set_object(endpoint_slice_object(f"s{i}", "east", {"east-1": True, "east-2": True}))
    old = {f"{_old_address(i)}/32" for i in range(N)}
    for name in ("east-1", "east-2"):  # the pool of the lab's config, widened to hold them
        lab.restart_speaker(name, pool="198.51.100.0/27")
    lab.wait_ready()
    wait_until(lambda: {p: nodes for p, nodes in _routes_by_node(lab).items()} == {p: {"east-1", "east-2"} for p in old},
               30, "the 20 old addresses from both nodes, before the upgrade")
    assert emu.get_object("v1", "ConfigMap", NAMESPACE, IMPORT_MARKER) is None

    seen_prefixes: set[str] = set()
    east1_lost: list[str] = []

    def upgraded() -> bool:
        routes = _routes_by_node(lab)
        seen_prefixes.update(routes)
        east1_lost.extend(p for p in old if "east-1" not in routes.get(p, ()))
        marker = emu.get_object("v1", "ConfigMap", NAMESPACE, IMPORT_MARKER)
        records = recorded(emu.snapshot().get("v1/ConfigMap") or [])
        return marker is not None and len(records) == N and routes == {p: {"east-1", "east-2"} for p in old}

    lab.restart_speaker("east-2", allocator=True)  # the new allocator
    wait_until(upgraded, 60, "imported, and both nodes announcing the 20 again")
    # Watch a little longer from records mode: both nodes now allocate from records.
    for _ in range(20):
        upgraded()
    assert seen_prefixes <= old, f"a prefix that was never allocated appeared: {sorted(seen_prefixes - old)}"
    assert east1_lost == [], f"east-1 (never restarted) lost paths during the upgrade: {sorted(set(east1_lost))}"
    records = {address: r.service for address, r in recorded(emu.snapshot()["v1/ConfigMap"]).items()}
    assert records == {_old_address(i): f"s{i}" for i in range(N)}
    for i in range(N):
        assert lab.service_ingress("east", f"s{i}") == [_old_address(i)]
    # From now on the marker counts for nothing: a forged one on a new Service takes nothing.
    forged = service_object("forger", None, "east")
    forged["metadata"]["annotations"]["bgpspeaker.io/ip-allocated-from-pool"] = "public"
    forged["metadata"]["creationTimestamp"] = "2000-01-01T00:00:00Z"
    forged["status"] = {"loadBalancer": {"ingress": [{"ip": _old_address(0)}]}}
    emu.set_object(forged)
    emu.set_object(endpoint_slice_object("forger", "east", {"east-1": True}))
    wait_until(lambda: lab.service_ingress("east", "forger") not in ([], [_old_address(0)]), 20,
               "the forger's status rewritten to an address of its own")
    assert lab.service_ingress("east", "s0") == [_old_address(0)]
    assert _routes_by_node(lab)[f"{_old_address(0)}/32"] == {"east-1", "east-2"}
