"""The allocator: every rule as a table, the security cases, and hypothesis properties."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpspeaker.allocator import Allocation, Assignment, Refusal, allocate, is_managed, pool_usage
from bgpspeaker.config.schema import ClusterConfig, Config, PoolConfig, SpeakerConfig
from bgpspeaker.model import ServicePort, ServiceView

net = ipaddress.ip_network
ip = ipaddress.ip_address


def pool(name, *addresses, **kw):
    return PoolConfig(name, tuple(net(a) for a in addresses), **kw)


def config(*pools, lb_class=""):
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(64512, load_balancer_class=lb_class),
                  pools=tuple(pools))


def svc(name="s", namespace="default", *, ann=None, ports=(("TCP", 80),), created="", **kw):
    return ServiceView(namespace=namespace, name=name, created=created,
                       annotations=tuple(sorted((ann or {}).items())),
                       ports=tuple(ServicePort("", p, n) for p, n in ports), **kw)


def addrs(allocation, key):
    return tuple(str(a) for a in allocation.assigned[key].addresses)


PUBLIC = pool("public", "203.0.113.0/29", "2001:db8::/64")
CFG = config(
    PUBLIC,
    pool("manual", "198.51.100.0/29", auto_assign=False),
    pool("team", "192.0.2.0/29", namespaces=("team",)),
    pool("v6only", "2001:db8:1::/120", auto_assign=False),
)


# --- filtering and release ------------------------------------------------------------------


@pytest.mark.parametrize("service, lb_class, managed", [
    (svc(), "", True),
    (svc(type="ClusterIP"), "", False),
    (svc(type="NodePort"), "", False),
    (svc(load_balancer_class="other.io/lb"), "", False),
    (svc(load_balancer_class="ours.io/lb"), "ours.io/lb", True),
    (svc(), "ours.io/lb", False),
])
def test_only_our_class_of_load_balancer_is_managed(service, lb_class, managed):
    cfg = config(PUBLIC, lb_class=lb_class)
    assert is_managed(cfg, service) is managed
    result = allocate(cfg, [service])
    assert (service.key in result.assigned) is managed
    assert service.key not in result.refused  # not ours: neither assigned nor refused


def test_type_change_releases_the_address():
    before = allocate(CFG, [svc("a"), svc("b")])
    assert addrs(before, "default/a") == ("203.0.113.0",)
    changed = svc("a", type="ClusterIP", ingress_ips=("203.0.113.0",))
    after = allocate(CFG, [changed, svc("b", ingress_ips=addrs(before, "default/b")), svc("c")])
    assert "default/a" not in after.assigned
    assert addrs(after, "default/c") == ("203.0.113.0",)  # released address is reused


# --- auto-assignment ------------------------------------------------------------------------


def test_lowest_free_address_in_order_of_creation():
    result = allocate(CFG, [svc("b", created="2"), svc("a", created="1"), svc("c", created="3")])
    assert [addrs(result, f"default/{n}") for n in "abc"] == [("203.0.113.0",), ("203.0.113.1",), ("203.0.113.2",)]
    assert all(a.pool == "public" for a in result.assigned.values())


def test_ranges_and_cidrs_are_walked_in_address_order():
    cfg = config(pool("p", "10.0.0.200/32", "10.0.0.100/31"))
    result = allocate(cfg, [svc(str(i), created=str(i)) for i in range(4)])
    assert [addrs(result, f"default/{i}") for i in range(3)] == [("10.0.0.100",), ("10.0.0.101",), ("10.0.0.200",)]
    assert result.refused["default/3"].reason == "poolExhausted"


def test_avoid_buggy_ips_skips_dot_zero_and_dot_255():
    cfg = config(pool("p", "10.0.0.254/31", "10.0.1.0/31", avoid_buggy_ips=True))
    result = allocate(cfg, [svc(str(i), created=str(i)) for i in range(3)])
    assert addrs(result, "default/0") == ("10.0.0.254",)
    assert addrs(result, "default/1") == ("10.0.1.1",)
    assert result.refused["default/2"].reason == "poolExhausted"
    refused = allocate(cfg, [svc(ann={"bgpspeaker.io/load-balancer-ips": "10.0.1.0"})])
    assert refused.refused["default/s"].reason == "buggyIP"


def test_auto_assign_false_pool_is_used_only_when_asked():
    only_manual = config(pool("manual", "198.51.100.0/30", auto_assign=False))
    assert allocate(only_manual, [svc()]).refused["default/s"].reason == "noPoolForFamily"
    by_pool = allocate(CFG, [svc(ann={"bgpspeaker.io/address-pool": "manual"})])
    assert addrs(by_pool, "default/s") == ("198.51.100.0",)
    by_ip = allocate(CFG, [svc(ann={"bgpspeaker.io/load-balancer-ips": "198.51.100.5"})])
    assert by_ip.assigned["default/s"] == Assignment("manual", (ip("198.51.100.5"),))


def test_namespace_limited_pool():
    result = allocate(CFG, [svc("a", "team", ann={"bgpspeaker.io/address-pool": "team"}),
                            svc("b", "other", ann={"bgpspeaker.io/address-pool": "team"})])
    assert result.assigned["team/a"].pool == "team"
    assert result.refused["other/b"].reason == "poolNotAllowedForNamespace"


def test_no_auto_pool_for_the_namespace():
    cfg = config(pool("team", "192.0.2.0/29", namespaces=("team",)))
    assert allocate(cfg, [svc()]).refused["default/s"].reason == "poolNotAllowedForNamespace"


def test_huge_ipv6_pool_is_never_enumerated():
    cfg = config(pool("v6", "2001:db8::/32"))
    services = [svc(str(i), created=f"{i:05}", ip_families=("IPv6",)) for i in range(500)]
    result = allocate(cfg, services)
    assert addrs(result, "default/499") == ("2001:db8::1f3",)
    assert pool_usage(cfg, result) == {"v6": (2 ** 96, 500)}


def test_pool_usage_counts_assignable_addresses():
    cfg = config(pool("p", "10.0.0.0/23", avoid_buggy_ips=True), pool("q", "10.1.0.0/30"))
    result = allocate(cfg, [svc("a"), svc("b", ann={"bgpspeaker.io/address-pool": "q"})])
    assert pool_usage(cfg, result) == {"p": (512 - 4, 1), "q": (4, 1)}


# --- IP families ----------------------------------------------------------------------------


@pytest.mark.parametrize("families, policy, expected", [
    ((), None, ("203.0.113.0",)),
    (("IPv6",), "SingleStack", ("2001:db8::",)),
    (("IPv4", "IPv6"), "PreferDualStack", ("203.0.113.0", "2001:db8::")),
    (("IPv6", "IPv4"), "RequireDualStack", ("2001:db8::", "203.0.113.0")),
    ((), "PreferDualStack", ("203.0.113.0", "2001:db8::")),
    (("IPv4",), "PreferDualStack", ("203.0.113.0",)),  # the API server already said: v4 only
])
def test_ip_families(families, policy, expected):
    result = allocate(CFG, [svc(ip_families=families, ip_family_policy=policy)])
    assert addrs(result, "default/s") == expected


def test_prefer_dual_stack_falls_back_to_one_family_and_require_refuses():
    v4 = config(pool("p", "10.0.0.0/30"))
    prefer = allocate(v4, [svc(ip_families=("IPv4", "IPv6"), ip_family_policy="PreferDualStack")])
    assert addrs(prefer, "default/s") == ("10.0.0.0",)
    require = allocate(v4, [svc(ip_families=("IPv4", "IPv6"), ip_family_policy="RequireDualStack")])
    assert require.refused["default/s"].reason == "dualStackUnavailable"


def test_dual_stack_comes_from_one_pool():
    cfg = config(pool("v4", "10.0.0.0/30"), pool("v6", "fd00::/120"), pool("both", "10.1.0.0/30", "fd01::/120"))
    result = allocate(cfg, [svc(ip_families=("IPv4", "IPv6"), ip_family_policy="RequireDualStack")])
    assert result.assigned["default/s"] == Assignment("both", (ip("10.1.0.0"), ip("fd01::")))


def test_no_pool_for_family():
    cfg = config(pool("p", "10.0.0.0/30"))
    assert allocate(cfg, [svc(ip_families=("IPv6",))]).refused["default/s"].reason == "noPoolForFamily"


# --- requested addresses --------------------------------------------------------------------


@pytest.mark.parametrize("annotations, spec_ip, expected", [
    ({"bgpspeaker.io/load-balancer-ips": "203.0.113.5"}, None, ("203.0.113.5",)),
    ({"metallb.io/loadBalancerIPs": "203.0.113.5"}, None, ("203.0.113.5",)),
    ({"metallb.universe.tf/loadBalancerIPs": "203.0.113.5"}, None, ("203.0.113.5",)),
    ({}, "203.0.113.5", ("203.0.113.5",)),
    # precedence: ours, metallb.io, metallb.universe.tf, spec
    ({"bgpspeaker.io/load-balancer-ips": "203.0.113.1", "metallb.io/loadBalancerIPs": "203.0.113.2"},
     "203.0.113.3", ("203.0.113.1",)),
    ({"metallb.io/loadBalancerIPs": "203.0.113.2", "metallb.universe.tf/loadBalancerIPs": "203.0.113.3"},
     None, ("203.0.113.2",)),
    ({"metallb.universe.tf/loadBalancerIPs": "203.0.113.3"}, "203.0.113.4", ("203.0.113.3",)),
    ({"bgpspeaker.io/load-balancer-ips": " 203.0.113.5 , 2001:db8::5 "}, None, ("203.0.113.5", "2001:db8::5")),
])
def test_requested_address_sources_and_precedence(annotations, spec_ip, expected):
    policy = "RequireDualStack" if len(expected) == 2 else None
    result = allocate(CFG, [svc(ann=annotations, load_balancer_ip=spec_ip, ip_family_policy=policy)])
    assert addrs(result, "default/s") == expected


def test_requested_address_wins_over_status():
    result = allocate(CFG, [svc(ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5"},
                                ingress_ips=("203.0.113.1",))])
    assert addrs(result, "default/s") == ("203.0.113.5",)


def test_requested_address_must_be_in_the_requested_pool():
    result = allocate(CFG, [svc(ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5",
                                     "bgpspeaker.io/address-pool": "manual"})])
    assert result.refused["default/s"].reason == "notInPool"


def test_requested_addresses_in_two_pools():
    result = allocate(CFG, [svc(ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5,2001:db8:1::5"},
                                ip_family_policy="RequireDualStack")])
    assert result.refused["default/s"].reason == "differentPools"


def test_pool_annotation_precedence():
    result = allocate(CFG, [svc(ann={"bgpspeaker.io/address-pool": "manual", "metallb.io/address-pool": "public"}),
                            svc("t", ann={"metallb.io/address-pool": "manual"}),
                            svc("u", ann={"metallb.universe.tf/address-pool": "manual"})])
    assert {a.pool for a in result.assigned.values()} == {"manual"}


# --- sharing --------------------------------------------------------------------------------

SHARE = "bgpspeaker.io/allow-shared-ip"
MARK = "bgpspeaker.io/ip-allocated-from-pool"


def test_sharing_key_converges_on_one_address_with_disjoint_ports():
    result = allocate(CFG, [
        svc("tcp", ann={SHARE: "dns"}, ports=(("TCP", 53),), created="1"),
        svc("udp", ann={"metallb.io/allow-shared-ip": "dns"}, ports=(("UDP", 53),), created="2"),
        svc("other", created="3"),
    ])
    assert addrs(result, "default/tcp") == addrs(result, "default/udp") == ("203.0.113.0",)
    assert addrs(result, "default/other") == ("203.0.113.1",)


def test_sharing_with_overlapping_ports_gets_its_own_address():
    result = allocate(CFG, [svc("a", ann={SHARE: "k"}, created="1"), svc("b", ann={SHARE: "k"}, created="2")])
    assert addrs(result, "default/a") != addrs(result, "default/b")


@pytest.mark.parametrize("second, reason", [
    (svc("b", ann={SHARE: "k", "bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, created="2"), "portConflict"),
    (svc("b", ann={SHARE: "other", "bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, ports=(("UDP", 80),),
         created="2"), "sharingKeyMismatch"),
    (svc("b", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, ports=(("UDP", 80),), created="2"),
     "ipInUse"),
    (svc("b", "elsewhere", ann={SHARE: "k", "bgpspeaker.io/load-balancer-ips": "203.0.113.0"},
         ports=(("UDP", 80),), created="2"), "sharingKeyMismatch"),
])
def test_sharing_refusals(second, reason):
    first = svc("a", ann={SHARE: "k"}, created="1")
    result = allocate(CFG, [first, second])
    assert addrs(result, "default/a") == ("203.0.113.0",)
    assert result.refused[second.key].reason == reason


def test_refusal_messages_do_not_name_other_tenants_services():
    result = allocate(CFG, [svc("secret-app", "bank", created="1"),
                            svc("x", "evil", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, created="2")])
    refusal = result.refused["evil/x"]
    assert refusal.reason == "ipInUse" and "secret-app" not in refusal.message and "bank" not in refusal.message


# --- stability ------------------------------------------------------------------------------


def test_status_address_is_kept_even_if_a_lower_one_is_free():
    result = allocate(CFG, [svc("old", ingress_ips=("203.0.113.4",), created="9"), svc("new", created="1")])
    assert addrs(result, "default/old") == ("203.0.113.4",)
    assert addrs(result, "default/new") == ("203.0.113.0",)


def test_status_address_that_is_no_longer_valid_is_replaced_and_reported():
    result = allocate(CFG, [svc(ingress_ips=("198.51.100.1",))])  # manual pool, not asked for
    assert addrs(result, "default/s") == ("203.0.113.0",)
    assert [r.reason for r in result.discarded["default/s"]] == ["notInPool"]


def test_dual_stack_keeps_its_status_address_and_adds_the_other_family():
    result = allocate(CFG, [svc(ingress_ips=("203.0.113.3",), ip_family_policy="RequireDualStack")])
    assert addrs(result, "default/s") == ("203.0.113.3", "2001:db8::")


# --- security (docs/design.md invariant 1 at the allocator) ------------------------------------


@pytest.mark.parametrize("attacker, reason", [
    (svc("x", "evil", ann={"bgpspeaker.io/load-balancer-ips": "8.8.8.8"}), "notInPool"),
    (svc("x", "evil", load_balancer_ip="192.0.2.1"), "poolNotAllowedForNamespace"),
    (svc("x", "evil", ann={"bgpspeaker.io/address-pool": "team"}), "poolNotAllowedForNamespace"),
    (svc("x", "evil", ann={SHARE: "k", "bgpspeaker.io/load-balancer-ips": "192.0.2.0"}, ports=(("UDP", 9),)),
     "poolNotAllowedForNamespace"),
    (svc("x", "evil", ann={SHARE: "k", "bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, ports=(("UDP", 9),)),
     "sharingKeyMismatch"),
])
def test_tenant_cannot_take_what_it_is_not_entitled_to(attacker, reason):
    # a legitimate holder: its status was written by us (the annotation says so)
    victim = svc("v", "team", ann={SHARE: "k", MARK: "public"}, ingress_ips=("203.0.113.0",), created="1")
    result = allocate(CFG, [victim, attacker])
    assert result.refused["evil/x"].reason == reason
    assert addrs(result, "team/v") == ("203.0.113.0",)


@pytest.mark.parametrize("forged, reason", [
    ("8.8.8.8", "notInPool"),
    ("192.0.2.3", "poolNotAllowedForNamespace"),
    ("203.0.113.0", "ipInUse"),  # collides with an earlier Service's address
    ("not-an-ip", "invalidIP"),
])
def test_forged_status_address_is_never_kept(forged, reason):
    owner = svc("owner", "bank", ingress_ips=("203.0.113.0",), created="1")
    result = allocate(CFG, [owner, svc("x", "evil", ingress_ips=(forged,), created="2")])
    assert addrs(result, "bank/owner") == ("203.0.113.0",)
    assert forged not in addrs(result, "evil/x")
    assert [r.reason for r in result.discarded["evil/x"]] == [reason]


# --- broken Services -------------------------------------------------------------------------

BROKEN = [
    (svc("b01", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.300"}), "invalidIP"),
    (svc("b02", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.1,"}), "invalidIP"),
    (svc("b03", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.1,203.0.113.2"}), "invalidIP"),
    (svc("b04", load_balancer_ip="banana"), "invalidIP"),
    (svc("b05", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.1/32"}), "invalidIP"),
    (svc("b06", ann={"bgpspeaker.io/load-balancer-ips": "2001:db8::5"}, ip_families=("IPv4",)), "ipFamilyMismatch"),
    (svc("b07", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5,2001:db8::5"}), "ipFamilyMismatch"),
    (svc("b08", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5"}, ip_family_policy="RequireDualStack"),
     "dualStackUnavailable"),
    (svc("b09", ip_families=("IPv5",)), "invalidIPFamily"),
    (svc("b10", ip_families=("IPv4", "IPv4"), ip_family_policy="PreferDualStack"), "invalidIPFamily"),
    (svc("b11", ip_family_policy="MaybeDualStack"), "invalidIPFamily"),
    (svc("b12", ip_families=("IPv4", "IPv6"), ip_family_policy="SingleStack"), "invalidIPFamily"),
    (svc("b13", ports=(("TCP", 0),)), "invalidPort"),
    (svc("b14", ports=(("TCP", 70000),)), "invalidPort"),
    (svc("b15", ports=(("ICMP", 80),)), "invalidPort"),
    (svc("b16", ports=(("TCP", 80), ("TCP", 80))), "invalidPort"),
    (svc("b17", ann={"bgpspeaker.io/address-pool": "nope"}), "unknownPool"),
    (svc("b18", ann={"bgpspeaker.io/address-pool": ""}), "unknownPool"),
    (svc("b19", ann={"bgpspeaker.io/load-balancer-ips": "10.9.9.9"}), "notInPool"),
    (svc("b20", ann={"bgpspeaker.io/address-pool": "v6only"}), "noPoolForFamily"),
    (svc("b21", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.7"}), "ipInUse"),
    (svc("b22", ann={"bgpspeaker.io/load-balancer-ips": "2001:db8::5%eth0\nannounce route 1.2.3.4/32"},
         ip_families=("IPv6",)), "invalidIP"),
    (svc("b23", ann={"bgpspeaker.io/load-balancer-ips": "２０３.0.113.5"}), "invalidIP"),
]


def test_broken_services_each_get_their_reason_and_good_ones_are_still_assigned():
    holder = svc("holder", ann={MARK: "public"}, ingress_ips=("203.0.113.7",), created="0")
    good = [svc("good1"), svc("good2", ip_family_policy="RequireDualStack")]
    result = allocate(CFG, [holder, *good, *(s for s, _ in BROKEN)])
    assert {k: r.reason for k, r in result.refused.items()} == {s.key: reason for s, reason in BROKEN}
    assert set(result.assigned) == {"default/holder", "default/good1", "default/good2"}
    for refusal in result.refused.values():
        assert refusal.message and "\n" not in refusal.message


# --- properties -------------------------------------------------------------------------------

PROP_CFG = config(
    pool("a", "10.0.0.0/29", "fd00::/125", avoid_buggy_ips=True),
    pool("b", "10.0.1.0/30", auto_assign=False),
    pool("t", "10.0.2.0/30", namespaces=("ns1",)),
)
ALL_IPS = ["10.0.0.%d" % i for i in range(9)] + ["10.0.1.1", "10.0.2.1", "10.0.2.2", "fd00::3", "8.8.8.8", "x"]


@st.composite
def services(draw):
    count = draw(st.integers(0, 14))
    out = []
    for i in range(count):
        ann = {}
        if draw(st.booleans()):
            ann["bgpspeaker.io/allow-shared-ip"] = draw(st.sampled_from(["k1", "k2"]))
        choice = draw(st.integers(0, 5))
        if choice == 0:
            ann["bgpspeaker.io/load-balancer-ips"] = draw(st.sampled_from(ALL_IPS))
        elif choice == 1:
            ann["bgpspeaker.io/address-pool"] = draw(st.sampled_from(["a", "b", "t"]))
        status = tuple(draw(st.lists(st.sampled_from(ALL_IPS), max_size=2)))
        out.append(svc(
            f"s{i}", draw(st.sampled_from(["ns1", "ns2"])), ann=ann, created=draw(st.sampled_from(["1", "2", "3"])),
            ports=tuple(draw(st.lists(st.tuples(st.sampled_from(["TCP", "UDP"]), st.sampled_from([53, 80])),
                                      min_size=1, max_size=2, unique=True))),
            ip_family_policy=draw(st.sampled_from([None, "PreferDualStack", "RequireDualStack"])),
            ingress_ips=status,
        ))
    return out


def _check_invariants(cfg, service_list, result):
    by_key = {s.key: s for s in service_list}
    holders = {}
    for key, assignment in result.assigned.items():
        pool_ = cfg.pool(assignment.pool)
        assert pool_.allows_namespace(by_key[key].namespace)
        assert len({a.version for a in assignment.addresses}) == len(assignment.addresses)
        for address in assignment.addresses:
            assert pool_.contains(address)
            holders.setdefault(address, []).append(by_key[key])
    for address, owners in holders.items():
        if len(owners) > 1:
            keys = {dict(o.annotations).get("bgpspeaker.io/allow-shared-ip") for o in owners}
            assert len(keys) == 1 and None not in keys
            assert len({o.namespace for o in owners}) == 1
            ports = [(p.protocol, p.port) for o in owners for p in o.ports]
            assert len(ports) == len(set(ports))
    assert not set(result.assigned) & set(result.refused)


def _write_back(service_list, result, mark=False):
    """What the status writer leaves: the addresses, and (mark=True) the allocated-from-pool annotation."""
    out = []
    for s in service_list:
        annotations = dict(s.annotations)
        annotations.pop("bgpspeaker.io/ip-allocated-from-pool", None)
        if s.key in result.assigned:
            status = tuple(str(a) for a in result.assigned[s.key].addresses)
            if mark:
                annotations["bgpspeaker.io/ip-allocated-from-pool"] = result.assigned[s.key].pool
        else:
            status = ()
        out.append(dataclasses.replace(s, ingress_ips=status, annotations=tuple(sorted(annotations.items()))))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services(), st.randoms())
def test_property_invariants_order_independence_and_fixpoint(service_list, rnd):
    result = allocate(PROP_CFG, service_list)
    _check_invariants(PROP_CFG, service_list, result)
    shuffled = list(service_list)
    rnd.shuffle(shuffled)
    again = allocate(PROP_CFG, shuffled)
    assert again.assigned == result.assigned and again.refused == result.refused
    for mark in (False, True):
        rerun = allocate(PROP_CFG, _write_back(service_list, result, mark))
        assert rerun.assigned == result.assigned
        assert set(rerun.refused) == set(result.refused)
        assert not rerun.discarded


def test_many_services_scale():
    cfg = config(pool("v4", "10.0.0.0/16"), pool("v6", "fd00::/64"))
    service_list = [svc(f"s{i}", f"ns{i % 50}", created=f"{i:06}",
                        ip_family_policy="PreferDualStack" if i % 3 == 0 else None) for i in range(3000)]
    random.Random(1).shuffle(service_list)
    result = allocate(cfg, service_list)
    assert len(result.assigned) == 3000 and not result.refused
    _check_invariants(cfg, service_list, result)


def test_result_types_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Refusal("a", "b").reason = "c"
    assert Allocation({}, {}).discarded == {}


def test_untrusted_values_in_messages_are_quoted_and_cut():
    huge = "1.2.3.4\nEvil: " + "x" * 100_000
    result = allocate(CFG, [svc(ann={"bgpspeaker.io/load-balancer-ips": huge})])
    refusal = result.refused["default/s"]
    assert refusal.reason == "invalidIP"
    assert len(refusal.message) < 200 and "\n" not in refusal.message


@pytest.mark.parametrize("second, message", [
    (svc("b", ann={SHARE: "green", "bgpspeaker.io/load-balancer-ips": "203.0.113.0"}, ports=(("UDP", 1),)),
     "requested address 203.0.113.0 is used by Service default/a with sharing key 'k', not 'green'"),
    (svc("b", ann={SHARE: "k", "bgpspeaker.io/load-balancer-ips": "203.0.113.0"}),
     "requested address 203.0.113.0 is shared with Service default/a, which already uses TCP/80"),
    (svc("b", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.0"}),
     "requested address 203.0.113.0 is already used by Service default/a"),
    (ServiceView("default", "b", ports=(ServicePort("http", "TCP", -1),)),
     "port http: -1 is not a port number (1..65535)"),
    (ServiceView("default", "b", ports=(ServicePort("bad name\n", "TCP", 80), ServicePort("x", "TCP", 80))),
     "port TCP/80 is listed twice"),
    (ServiceView("default", "b", ports=(ServicePort("p\n", "ICMP", 80),)),
     "port 'p\\n': protocol 'ICMP' is not one of TCP, UDP, SCTP"),
])
def test_refusal_messages(second, message):
    result = allocate(CFG, [svc("a", ann={SHARE: "k"}, created="0"), dataclasses.replace(second, created="1")])
    assert result.refused["default/b"].message == message


def test_unmarked_status_yields_to_an_older_request_but_a_marked_one_stands():
    older = svc("older", ann={"bgpspeaker.io/load-balancer-ips": "203.0.113.5"}, created="2024")
    forged = svc("newer", "tenant", ingress_ips=("203.0.113.5",), created="2025")
    result = allocate(CFG, [older, forged])
    assert addrs(result, "default/older") == ("203.0.113.5",)
    assert addrs(result, "tenant/newer") != ("203.0.113.5",)
    assert [r.reason for r in result.discarded["tenant/newer"]] == ["ipInUse"]
    # handed out by us earlier (the annotation the status writer adds): the older request waits
    ours = dataclasses.replace(forged, annotations=(("bgpspeaker.io/ip-allocated-from-pool", "public"),))
    result = allocate(CFG, [older, ours])
    assert addrs(result, "tenant/newer") == ("203.0.113.5",)
    assert result.refused["default/older"].reason == "ipInUse"
    # an annotation naming another pool is no evidence
    wrong = dataclasses.replace(forged, annotations=(("bgpspeaker.io/ip-allocated-from-pool", "manual"),))
    assert addrs(allocate(CFG, [older, wrong]), "default/older") == ("203.0.113.5",)
