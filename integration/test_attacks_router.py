"""Attacks at the router: hijack attempts and community abuse against the real `bgpspeaker run`
(one node, emulated API, FRR), judged from the router's own RIB and the Events in the API.

A thread samples the router's RIB every 10 ms for the whole attack, so "never announced"
means never seen, not just "gone by the end". The pure twins (tests/test_hardening_attacks.py)
cover the same attacks with every reason and message; here the point is that the running
daemon, the status writer and ExaBGP hold the line end to end.
"""

from __future__ import annotations

import ipaddress

import pytest

from integration.lab.wait import wait_until
from integration.attack_lab import ALLOWED_BY_NAMESPACE, AttackLab, RibWatcher, wait_rib

pytestmark = pytest.mark.lab

ATTACKS_REFUSED: list[str] = []


@pytest.fixture(scope="module")
def lab():
    import os
    if os.geteuid() != 0:
        pytest.fail("lab tests need root; CI is root")
    lab = AttackLab()
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def clean(lab, request):
    lab.clear_services()
    wait_rib(lab, set(), 20, "empty RIB before the test")
    yield lab
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(lab.diagnostics())
    lab.clear_services()


def _legit(lab) -> set[str]:
    lab.service("default", "app")
    lab.service("default", "pinned", {"bgpspeaker.io/load-balancer-ips": "203.0.113.3"})
    lab.service("team-a", "web", {"bgpspeaker.io/load-balancer-ips": "198.51.100.5"})
    lab.service("default", "owner", {"bgpspeaker.io/load-balancer-ips": "203.0.113.12",
                                     "bgpspeaker.io/allow-shared-ip": "k"})
    app = wait_until(lambda: lab.ingress_of("default", "app"), 20, "the leader writes default/app's status")[0]
    expected = {f"{app}/32", "203.0.113.3/32", "198.51.100.5/32", "203.0.113.12/32"}
    wait_rib(lab, expected, 20, "the healthy Services at the router")
    return expected


# (name, annotations, spec, status written by the tenant, words the Event must say, prefix never to be seen)
HIJACKS = [
    ("outside", {"bgpspeaker.io/load-balancer-ips": "8.8.8.8"}, {}, (), ["8.8.8.8", "not in any address pool"],
     "8.8.8.8/32"),
    ("spec-outside", {}, {"loadBalancerIP": "1.1.1.1"}, (), ["1.1.1.1", "not in any address pool"], "1.1.1.1/32"),
    ("other-ns-pool", {"bgpspeaker.io/load-balancer-ips": "198.51.100.7"}, {}, (), ["198.51.100.7", "team-a"],
     "198.51.100.7/32"),
    ("pool-annotation", {"bgpspeaker.io/address-pool": "team-a"}, {}, (), ["team-a", "tenant"], None),
    ("static-pool", {"bgpspeaker.io/load-balancer-ips": "192.0.2.66"}, {}, (), ["192.0.2.66", "team-b-static"],
     "192.0.2.66/32"),
    ("share-key", {"bgpspeaker.io/load-balancer-ips": "203.0.113.12", "bgpspeaker.io/allow-shared-ip": "k"}, {}, (),
     ["203.0.113.12", "namespace"], None),
    ("dup", {"bgpspeaker.io/load-balancer-ips": "203.0.113.3"}, {}, (), ["203.0.113.3", "already used"], None),
]
STATUS_WRITERS = [  # the tenant writes status.loadBalancer.ingress itself
    ("status-team-a", "198.51.100.6"),
    ("status-outside", "9.9.9.9"),
    ("status-taken", "203.0.113.3"),
]
ABUSE = "65535:666,65535:0,0:0,65535:65281,64512:4294967295:1"
ALLOWED = "64512:777"  # the one community pool public allows: it must get through (the filter is selective)


def test_hijacks_and_community_abuse_never_reach_the_router(clean, capsys):
    lab = clean
    legit = _legit(lab)
    with RibWatcher(lab) as watcher:
        for name, annotations, spec, _, _, _ in HIJACKS:
            lab.service("tenant", name, annotations, ports=[{"name": "alt", "port": 8443, "protocol": "TCP"}], **spec)
        for name, ip in STATUS_WRITERS:
            lab.service("tenant", name, ingress=[ip])
        lab.service("tenant", "comm", {"bgpspeaker.io/communities": f"{ABUSE},{ALLOWED}"})

        # every refused hijack gets an Event that says why
        for name, _, _, _, words, _ in HIJACKS:
            def said(name=name, words=words):
                return [e for e in lab.events("tenant", name) if e.get("type") == "Warning"
                        and all(w in e.get("message", "") for w in words)]
            events = wait_until(said, 20, f"a Warning Event on tenant/{name} saying {words}")
            assert events
        # the status writers and the abuser get an ordinary public address each (their own status is not trusted)
        fresh = {}
        for name in [n for n, _ in STATUS_WRITERS] + ["comm"]:
            fresh[name] = wait_until(lambda name=name: [ip for ip in lab.ingress_of("tenant", name)
                                                        if ip.startswith("203.0.113.")], 20,
                                     f"tenant/{name} gets a public address")[0]
        for (name, wrote) in STATUS_WRITERS:
            assert fresh[name] != wrote, f"tenant/{name} kept the status address {wrote} it wrote itself"
        expected = legit | {f"{ip}/32" for ip in fresh.values()}
        wait_rib(lab, expected, 20, "healthy Services + the attackers' own fresh addresses, nothing else")
        # the abuser is announced with the tier's community and the allowed one only
        path = lab.router.best_path(f"{fresh['comm']}/32")
        assert path is not None and path.communities == ["64512:100", ALLOWED], path
        assert path.large_communities == [], path
        # the healthy Services kept their paths
        assert lab.router.best_path("203.0.113.3/32").communities == ["64512:100"]
        # keep watching a while after convergence: a late stray announcement would show up here
        settled = watcher.samples
        wait_until(lambda: watcher.samples >= settled + 100, 10, "100 more RIB samples after convergence")
        assert lab.prefixes() == expected

    # never seen at the router, at any sample
    forbidden = {never for *_, never in HIJACKS if never} | {f"{ip}/32" for _, ip in STATUS_WRITERS
                                                              if not ip.startswith("203.0.113.")}
    assert watcher.samples > 100, watcher.samples
    assert not watcher.seen & forbidden, sorted(watcher.seen & forbidden)
    assert watcher.seen <= expected, f"seen but never desired: {sorted(watcher.seen - expected)}"
    for prefix in watcher.seen:  # and everything seen is in a pool
        net = ipaddress.ip_network(prefix)
        assert any(net.subnet_of(p) for p in ALLOWED_BY_NAMESPACE["team-a"] + ALLOWED_BY_NAMESPACE["default"])
    ATTACKS_REFUSED.extend([h[0] for h in HIJACKS] + [s[0] for s in STATUS_WRITERS] + ["communities " + ABUSE])
    with capsys.disabled():
        print(f"\n[hardening] attacks at the router: {len(ATTACKS_REFUSED)} refused "
              f"({watcher.samples} RIB samples, {len(watcher.seen)} prefixes ever seen, 0 forbidden)")

    # attackers leave: their fresh addresses are withdrawn, the healthy ones stay
    for name in [h[0] for h in HIJACKS] + [s[0] for s in STATUS_WRITERS] + ["comm"]:
        lab.remove_service("tenant", name)
    wait_rib(lab, legit, 20, "only the healthy Services after the attackers left")


def test_community_abuse_gets_an_event(clean):
    lab = clean
    lab.service("tenant", "comm2", {"bgpspeaker.io/communities": "65535:666"})
    ip = wait_until(lambda: lab.ingress_of("tenant", "comm2"), 20, "an address")[0]
    wait_until(lambda: lab.router.best_path(f"{ip}/32"), 20, "the route")
    wait_until(lambda: [e for e in lab.events("tenant", "comm2") if "65535:666" in e.get("message", "")], 10,
               "an Event naming the refused community 65535:666")


def test_discarded_tenant_status_gets_an_event_saying_why(clean):
    lab = clean
    lab.service("tenant", "sw", ingress=["9.9.9.9"])
    wait_until(lambda: [ip for ip in lab.ingress_of("tenant", "sw") if ip != "9.9.9.9"], 20, "a new address")
    wait_until(lambda: [e for e in lab.events("tenant", "sw") if "9.9.9.9" in e.get("message", "")], 10,
               "an Event saying why 9.9.9.9 was not kept")


def test_node_address_with_ipv6_scope_cannot_inject_at_the_router(capsys):
    """The bug the fuzz found (53c962e): a Node InternalIP `fd00::2%x\\nannounce route 8.8.8.8 ...`
    went into the next-hop text. End to end now: the route never reaches the router, the
    Service is skipped with noNodeAddress, and the session stays up."""
    import os
    from integration.lab.cluster_lab import node_object
    from integration.attack_lab import NODE, POOLS
    if os.geteuid() != 0:
        pytest.fail("lab tests need root; CI is root")
    lab = AttackLab(pools=POOLS + [{"name": "v6", "addresses": ["2001:db8::/124"], "autoAssign": True}])
    try:
        lab.start()
        node = lab.nodes[NODE]
        obj = node_object(node)
        obj["status"]["addresses"].append(
            {"type": "InternalIP", "address": f"fd00::2%x\nannounce route 8.8.8.8 next-hop {node.address}\n#"})
        with RibWatcher(lab) as watcher:
            lab.emu.set_object(obj)
            lab.service("tenant", "v6svc", ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack")
            lab.service("tenant", "v4svc")
            ip = wait_until(lambda: lab.ingress_of("tenant", "v4svc"), 20, "v4svc address")[0]
            wait_rib(lab, {f"{ip}/32"}, 20, "only the IPv4 Service at the router")
            wait_until(lambda: [s for s in lab.status(NODE)["skipped"] if s["service"] == "tenant/v6svc"
                                and s["reason"] == "noNodeAddress"], 20, "v6svc skipped: noNodeAddress")
            settled = watcher.samples
            wait_until(lambda: watcher.samples >= settled + 100, 10, "100 more RIB samples")
        assert "8.8.8.8/32" not in watcher.seen and watcher.seen == {f"{ip}/32"}, watcher.seen
        assert lab.router.established(node.address)
        ATTACKS_REFUSED.append("node IPv6 scope-id injection")
    finally:
        lab.close()
