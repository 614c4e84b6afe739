"""Attacks on the policy core, pure: community abuse and address hijacks (docs/design.md invariant 1).

Every attack runs next to a healthy cluster (testkit/hardening.legit_objects)
through views → allocate → plan → diff → command text, with every command and route
checked by the independent checker. Each attack asserts three things: the attacker gets
nothing it may not have (no route, or no extra community), it gets a reason a user can
read (the `Refusal`/`Skip` that the daemon turns into an Event and `explain` prints), and
the healthy Services keep exactly their routes. The router-side twins are in
integration/test_attacks_router.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from bgpspeaker.allocator import records_from_status
from bgpspeaker.exabgp.commands import parse_line
from bgpspeaker.records import AddressRecord
from bgpspeaker.views import snapshot_from_objects
from testkit.hardening import (
    LEGIT_ROUTES, attack_config, legit_objects, route_keys, run_pipeline, service_obj, slice_obj,
)

ATTACKS_REFUSED: list[str] = []


def _run(*objects, records=None):
    if records is not None:
        # Records mode: the healthy cluster's addresses were imported from their status
        # (the one-time migration), the attack's objects arrive after.
        legit = snapshot_from_objects(legit_objects()).services.values()
        records = list(records_from_status(attack_config(), legit, "east")) + list(records)
    outcome = run_pipeline(legit_objects() + list(objects), records=records)
    assert LEGIT_ROUTES <= route_keys(outcome.routes), "an attack took a route from a healthy Service"
    return outcome


def _routes_of(outcome, key: str):
    return [r for r in outcome.routes if key in r.services]


def _communities_in_commands(outcome) -> set[str]:
    seen = set()
    for line in outcome.lines:
        parsed = parse_line(line)
        if parsed.attributes is not None:
            seen |= {str(c) for c in parsed.attributes.communities + parsed.attributes.large_communities}
    return seen


# --- community abuse ----------------------------------------------------------------------

ABUSE = [
    ("65535:666", "blackhole (RFC 7999)"),
    ("65535:0", "graceful shutdown (RFC 8326)"),
    ("65535:65281", "no-export"),
    ("65535:65282", "no-advertise"),
    ("0:0", "reserved"),
    ("64512:4294967295:1", "a large community the pool does not allow"),
    ("4200000000:666:666", "a large blackhole-like community"),
    ("64500:666", "the upstream's own blackhole community"),
]


@pytest.mark.parametrize("community, what", ABUSE, ids=[c for c, _ in ABUSE])
@pytest.mark.parametrize("namespace, pool_communities", [("tenant", ("64512:777", "64512:7:7")), ("team-a", ())])
def test_community_the_pool_does_not_allow_adds_nothing(community, what, namespace, pool_communities):
    svc = service_obj(namespace, "abuser", {"bgpspeaker.io/communities": community}, created="2025-03-01T00:00:00Z")
    out = _run(svc, slice_obj(namespace, "abuser"))
    routes = _routes_of(out, f"{namespace}/abuser")
    assert routes, "the Service itself is still announced: only the community is refused"
    for route in routes:
        got = {str(c) for c in route.attributes.communities + route.attributes.large_communities}
        assert community not in got, route
        assert got <= {"64512:100", "64512:1"}, f"{what}: {route.peer} gets {got}"
    assert community not in _communities_in_commands(out)
    warnings = [w for w in out.warnings if w.service == f"{namespace}/abuser"]
    assert [w.reason for w in warnings] == ["communityNotAllowed"], warnings
    assert community in warnings[0].message and "not added" in warnings[0].message
    ATTACKS_REFUSED.append(f"community {community} ({what}) from {namespace}")


def test_allowed_and_disallowed_mixed_keeps_only_the_allowed():
    svc = service_obj("tenant", "mixed", {"bgpspeaker.io/communities": "65535:666, 64512:777,65535:0,64512:7:7,0:0"},
                      created="2025-03-01T00:00:00Z")
    out = _run(svc, slice_obj("tenant", "mixed"))
    for route in _routes_of(out, "tenant/mixed"):
        assert {str(c) for c in route.attributes.communities} <= {"64512:100", "64512:1", "64512:777"}
        assert "64512:777" in {str(c) for c in route.attributes.communities}
        assert [str(c) for c in route.attributes.large_communities] == ["64512:7:7"]
    reasons = sorted(w.message.split(": ")[1].split(" ")[0] for w in out.warnings if w.service == "tenant/mixed")
    assert reasons == ["0:0", "65535:0", "65535:666"], reasons
    ATTACKS_REFUSED.append("mixed allowed/disallowed communities")


def test_sharing_an_ip_does_not_launder_communities():
    """Two Services share an IP: the union of their communities is used — each already
    checked against the pool. One of them asking for a blackhole must not reach the route."""
    a = service_obj("tenant", "a", {"bgpspeaker.io/allow-shared-ip": "k", "bgpspeaker.io/load-balancer-ips":
                                    "203.0.113.9", "bgpspeaker.io/communities": "64512:777"},
                    created="2025-03-01T00:00:00Z")
    b = service_obj("tenant", "b", {"bgpspeaker.io/allow-shared-ip": "k", "bgpspeaker.io/load-balancer-ips":
                                    "203.0.113.9", "bgpspeaker.io/communities": "65535:666"},
                    created="2025-03-02T00:00:00Z", ports=[{"name": "dns", "protocol": "UDP", "port": 53}])
    out = _run(a, slice_obj("tenant", "a"), b, slice_obj("tenant", "b"))
    routes = [r for r in out.routes if str(r.prefix) == "203.0.113.9/32"]
    assert routes and all(set(r.services) == {"tenant/a", "tenant/b"} for r in routes)
    assert all("65535:666" not in {str(c) for c in r.attributes.communities} for r in routes)
    assert "65535:666" not in _communities_in_commands(out)
    ATTACKS_REFUSED.append("blackhole laundered through a shared IP")


def test_drain_community_only_when_drained():
    svc = service_obj("tenant", "gshut", {"bgpspeaker.io/communities": "65535:0"}, created="2025-03-01T00:00:00Z")
    out = _run(svc, slice_obj("tenant", "gshut"))
    assert all("65535:0" not in {str(c) for c in r.attributes.communities} for r in out.routes)
    drained = run_pipeline(legit_objects() + [svc, slice_obj("tenant", "gshut")], drained=True)
    assert all("65535:0" in {str(c) for c in r.attributes.communities} for r in drained.routes)


# --- hijacks --------------------------------------------------------------------------------


def _refused(outcome, key: str):
    skips = [s for s in outcome.skipped if s.service == key]
    assert skips, f"{key} is neither announced nor refused"
    return skips


HIJACKS = [
    # (id, namespace, annotations, spec extras, status ingress, expected reason, words in the message, never announced)
    ("outside-every-pool", "tenant", {"bgpspeaker.io/load-balancer-ips": "8.8.8.8"}, {}, (),
     "notInPool", ["8.8.8.8", "not in any address pool"], "8.8.8.8/32"),
    ("outside-every-pool-spec", "tenant", {}, {"loadBalancerIP": "1.1.1.1"}, (),
     "notInPool", ["1.1.1.1"], "1.1.1.1/32"),
    ("outside-every-pool-metallb", "tenant", {"metallb.universe.tf/loadBalancerIPs": "203.0.113.16"}, {}, (),
     "notInPool", ["203.0.113.16"], "203.0.113.16/32"),
    ("ipv4-mapped-v6", "tenant", {"bgpspeaker.io/load-balancer-ips": "::ffff:203.0.113.9"}, {"ipFamilies": ["IPv6"]},
     (), "notInPool", ["::ffff:cb00:7109"], "::ffff:cb00:7109/128"),
    ("other-namespace-pool-request", "tenant", {"bgpspeaker.io/load-balancer-ips": "198.51.100.7"}, {}, (),
     "poolNotAllowedForNamespace", ["198.51.100.7", "team-a", "tenant"], "198.51.100.7/32"),
    ("other-namespace-pool-annotation", "tenant", {"bgpspeaker.io/address-pool": "team-a"}, {}, (),
     "poolNotAllowedForNamespace", ["team-a", "tenant"], None),
    ("other-namespace-pool-metallb-annotation", "tenant", {"metallb.io/address-pool": "team-a"}, {}, (),
     "poolNotAllowedForNamespace", ["team-a"], None),
    ("no-autoassign-pool-of-another-namespace", "tenant", {"bgpspeaker.io/load-balancer-ips": "192.0.2.66"}, {}, (),
     "poolNotAllowedForNamespace", ["192.0.2.66", "team-b-static"], "192.0.2.66/32"),
    ("no-autoassign-pool-annotation", "tenant", {"bgpspeaker.io/address-pool": "team-b-static"}, {}, (),
     "poolNotAllowedForNamespace", ["team-b-static"], None),
    ("address-already-given-out", "tenant", {"bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, {}, (),
     "ipInUse", ["203.0.113.0", "another namespace"], None),
    ("address-already-given-out-same-ns", "default", {"bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, {}, (),
     "ipInUse", ["203.0.113.0", "default/app"], None),
    ("address-already-given-out-v6", "tenant", {"bgpspeaker.io/load-balancer-ips": "2001:db8::1"},
     {"ipFamilies": ["IPv6"]}, (), "ipInUse", ["2001:db8::1"], None),
    ("address-given-out-in-other-ns-pool", "team-a", {"bgpspeaker.io/load-balancer-ips": "198.51.100.5"}, {}, (),
     "ipInUse", ["198.51.100.5", "team-a/web"], None),
    ("sharing-key-of-another-namespace", "tenant", {"bgpspeaker.io/load-balancer-ips": "203.0.113.12",
                                                    "bgpspeaker.io/allow-shared-ip": "shared-k"}, {}, (),
     "sharingKeyMismatch", ["203.0.113.12", "within one namespace"], None),
]


@pytest.mark.parametrize("case", HIJACKS, ids=[h[0] for h in HIJACKS])
def test_hijack_is_refused_with_a_reason(case):
    ident, namespace, annotations, spec, ingress, reason, words, never = case
    # a Service in namespace default shares 203.0.113.12 under key "shared-k"
    owner = service_obj("default", "owner", {"bgpspeaker.io/load-balancer-ips": "203.0.113.12",
                                             "bgpspeaker.io/allow-shared-ip": "shared-k"},
                        ingress=["203.0.113.12"], created="2024-02-01T00:00:00Z")
    attacker = service_obj(namespace, "attacker", annotations, ingress=ingress, created="2025-04-01T00:00:00Z",
                           ports=[{"name": "other", "protocol": "TCP", "port": 8443}], **spec)
    out = _run(owner, slice_obj("default", "owner"), attacker, slice_obj(namespace, "attacker"))
    key = f"{namespace}/attacker"
    assert not _routes_of(out, key), f"{ident}: {key} is announced: {_routes_of(out, key)}"
    skips = _refused(out, key)
    assert [s.reason for s in skips] == [reason], skips
    for word in words:
        assert word in skips[0].message, (word, skips[0].message)
    if "another namespace" in words:  # never leak another tenant's Service name
        assert "default/app" not in skips[0].message
    if never:
        assert never not in {str(r.prefix) for r in out.routes}
        assert never not in " ".join(out.lines)
    # the owner of the shared key keeps its address alone
    assert {r.services for r in out.routes if str(r.prefix) == "203.0.113.12/32"} == {("default/owner",)}
    ATTACKS_REFUSED.append(ident)


def test_sharing_key_of_another_namespace_without_request_gets_its_own_address():
    owner = service_obj("default", "owner", {"bgpspeaker.io/allow-shared-ip": "k"}, ingress=["203.0.113.12"],
                        created="2024-02-01T00:00:00Z")
    attacker = service_obj("tenant", "attacker", {"bgpspeaker.io/allow-shared-ip": "k"},
                           created="2025-04-01T00:00:00Z", ports=[{"name": "x", "protocol": "TCP", "port": 8443}])
    out = _run(owner, slice_obj("default", "owner"), attacker, slice_obj("tenant", "attacker"))
    mine = {str(r.prefix) for r in _routes_of(out, "tenant/attacker")}
    assert mine and "203.0.113.12/32" not in mine, mine
    assert {r.services for r in out.routes if str(r.prefix) == "203.0.113.12/32"} == {("default/owner",)}
    ATTACKS_REFUSED.append("sharing key of another namespace (auto-assign)")


STATUS_HIJACKS = [
    # (id, status written by the tenant, the discard reason)
    ("status-outside-every-pool", "8.8.8.8", "notInPool"),
    ("status-other-namespace-pool", "198.51.100.5", "poolNotAllowedForNamespace"),
    ("status-address-held-by-older-service", "203.0.113.0", "ipInUse"),
    ("status-in-no-autoassign-pool", "192.0.2.3", "notInPool"),
    ("status-in-other-namespace-static-pool", "192.0.2.66", "poolNotAllowedForNamespace"),
    ("status-garbage", "203.0.113.9\nannounce route 8.8.8.8/32 next-hop 10.0.0.2", "invalidIP"),
]


@pytest.mark.parametrize("ident, status, reason", STATUS_HIJACKS, ids=[s[0] for s in STATUS_HIJACKS])
def test_status_written_by_the_tenant_is_not_trusted(ident, status, reason):
    attacker = service_obj("tenant", "attacker", ingress=[status], created="2025-04-01T00:00:00Z")
    out = _run(attacker, slice_obj("tenant", "attacker"))
    discarded = out.allocation.discarded.get("tenant/attacker", ())
    assert [d.reason for d in discarded] == [reason], discarded
    announced = {str(r.prefix) for r in _routes_of(out, "tenant/attacker")}
    # it gets an ordinary address from a pool it may use instead, never the one it wrote
    assert announced and all(p.startswith("203.0.113.") for p in announced), announced
    assert f"{status}/32" not in announced
    ATTACKS_REFUSED.append(ident)


def test_tenant_status_does_not_beat_an_older_request():
    """Was a finding (allocator._order_key served every status holder first): fixed in d9f0929."""
    older = service_obj("default", "older", {"bgpspeaker.io/load-balancer-ips": "203.0.113.9"},
                        created="2024-05-01T00:00:00Z")
    newer = service_obj("tenant", "newer", ingress=["203.0.113.9"], created="2025-05-01T00:00:00Z")
    out = _run(older, slice_obj("default", "older"), newer, slice_obj("tenant", "newer"))
    assert {r.services for r in out.routes if str(r.prefix) == "203.0.113.9/32"} == {("default/older",)}
    ATTACKS_REFUSED.append("status written by the tenant vs an older request")


FORGED_MARKERS = ["bgpspeaker.io/ip-allocated-from-pool", "metallb.io/ip-allocated-from-pool",
                  "metallb.universe.tf/ip-allocated-from-pool"]


@pytest.mark.parametrize("annotation", FORGED_MARKERS)
def test_tenant_status_with_forged_allocated_from_pool_annotation(annotation):
    """Was a strict xfail: with status as the evidence, a forged marker + status beat an older
    request. With allocation records (issue 13) neither is read: the older request wins."""
    older = service_obj("default", "older", {"bgpspeaker.io/load-balancer-ips": "203.0.113.9"},
                        created="2024-05-01T00:00:00Z")
    newer = service_obj("tenant", "newer", {annotation: "public"}, ingress=["203.0.113.9"],
                        created="2025-05-01T00:00:00Z")
    out = _run(older, slice_obj("default", "older"), newer, slice_obj("tenant", "newer"), records=[])
    assert {r.services for r in out.routes if str(r.prefix) == "203.0.113.9/32"} == {("default/older",)}
    ATTACKS_REFUSED.append(f"forged {annotation} + status vs an older request")


@pytest.mark.parametrize("annotation", FORGED_MARKERS)
def test_older_tenant_service_with_forged_marker_does_not_renumber_a_running_one(annotation):
    """The worse variant: an *older* tenant Service forges status + marker for the address a
    younger Service runs on. Before records it took it, and the younger one was silently
    renumbered while its DNS still pointed at the old address. The record decides now."""
    running = service_obj("default", "running", {"bgpspeaker.io/ip-allocated-from-pool": "public"},
                          ingress=["203.0.113.3"], created="2025-05-01T00:00:00Z")
    legacy = run_pipeline(legit_objects() + [running, slice_obj("default", "running"), service_obj(
        "tenant", "old", {annotation: "public"}, ingress=["203.0.113.3"], created="2020-01-01T00:00:00Z"),
        slice_obj("tenant", "old")])
    # The finding as it was: without records, the forger takes the running address.
    assert legacy.allocation.assigned["tenant/old"].addresses == (ipaddress.ip_address("203.0.113.3"),)
    attacker = service_obj("tenant", "old", {annotation: "public"}, ingress=["203.0.113.3"],
                           created="2020-01-01T00:00:00Z")
    record = AddressRecord(ipaddress.ip_address("203.0.113.3"), "public", "default", "running",
                           clusters=frozenset({"east"}))
    out = _run(running, slice_obj("default", "running"), attacker, slice_obj("tenant", "old"), records=[record])
    assert {r.services for r in out.routes if str(r.prefix) == "203.0.113.3/32"} == {("default/running",)}
    assert out.allocation.assigned["default/running"].addresses == (ipaddress.ip_address("203.0.113.3"),)
    assert ipaddress.ip_address("203.0.113.3") not in out.allocation.assigned["tenant/old"].addresses
    ATTACKS_REFUSED.append(f"older Service forging {annotation} + status")


def test_count(capsys):
    with capsys.disabled():
        print(f"\n[hardening] pure attacks refused: {len(ATTACKS_REFUSED)}")
    assert len(ATTACKS_REFUSED) >= len(HIJACKS)
