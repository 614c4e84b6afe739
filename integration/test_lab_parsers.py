"""The lab's pure parts: router config rendering and the parsers of FRR/BIRD output.

The samples are verbatim answers captured from FRR 8.4.4 and BIRD 2.0.12 on this
machine, so a parser change that breaks on the real formats fails here without a lab.
No root, no namespaces.
"""

from __future__ import annotations

import pytest

from integration.lab.bird import BirdConfig, parse_routes, render_bird_conf
from integration.lab.frr import FrrConfig, Neighbor, Originate, parse_path, render_bgpd_conf

# `show bgp ipv4 unicast 203.0.113.5/32 json` (per-prefix view), two paths
FRR_DETAIL_PATHS = [
    {"aspath": {"string": "64512", "segments": [{"type": "as-sequence", "list": [64512]}], "length": 1},
     "origin": "IGP", "metric": 200, "valid": True, "version": 1,
     "bestpath": {"overall": True, "selectionReason": "AS Path"},
     "nexthops": [{"ip": "10.1.2.2", "hostname": "frr", "afi": "ipv4", "metric": 0, "accessible": True,
                   "used": True}],
     "peer": {"peerId": "10.1.2.2", "routerId": "10.1.2.2", "hostname": "frr", "type": "external"}},
    {"aspath": {"string": "64512 64512", "segments": [{"type": "as-sequence", "list": [64512, 64512]}],
                "length": 2},
     "origin": "IGP", "metric": 100, "valid": True, "version": 1,
     "community": {"string": "64512:7 64512:100", "list": ["64512:7", "64512:100"]},
     "largeCommunity": {"string": "64512:1:1", "list": ["64512:1:1"]},
     "nexthops": [{"ip": "10.1.1.2", "hostname": "frr", "afi": "ipv4", "metric": 0, "accessible": True,
                   "used": True}],
     "peer": {"peerId": "10.1.1.2", "routerId": "10.1.1.2", "hostname": "frr", "type": "external"}},
]

# `show bgp ipv4 unicast json` (table view): no communities, `path` is a string
FRR_TABLE_PATH = {"valid": True, "bestpath": True, "selectionReason": "AS Path", "pathFrom": "external",
                  "prefix": "203.0.113.5", "prefixLen": 32, "network": "203.0.113.5/32", "version": 1,
                  "metric": 200, "weight": 0, "peerId": "10.1.2.2", "path": "64512", "origin": "IGP",
                  "nexthops": [{"ip": "10.1.2.2", "hostname": "frr", "afi": "ipv4", "used": True}]}

# a graceful-restart stale path, and an IPv6 path learned over an IPv4 session
FRR_STALE = {"aspath": {"string": "64512", "segments": [{"type": "as-sequence", "list": [64512]}], "length": 1},
             "stale": True, "origin": "IGP", "metric": 100, "valid": True,
             "bestpath": {"overall": True, "selectionReason": "First path received"},
             "gracefulRestartSecondsRemaining": 119,
             "nexthops": [{"ip": "10.99.1.2", "afi": "ipv4", "metric": 0, "accessible": True, "used": True}],
             "peer": {"peerId": "10.99.1.2", "routerId": "10.99.1.2", "type": "external"}}
FRR_LOCAL = {"aspath": {"string": "Local", "segments": [], "length": 0}, "origin": "IGP", "metric": 5,
             "weight": 32768, "valid": True, "sourced": True, "local": True,
             "community": {"string": "1:2", "list": ["1:2"]},
             "nexthops": [{"ip": "0.0.0.0", "hostname": "frr", "afi": "ipv4", "metric": 0, "accessible": True,
                           "used": True}],
             "peer": {"peerId": "0.0.0.0", "routerId": "10.1.1.1"}}

BIRD_SHOW_ROUTE_ALL = """Table master4:
203.0.113.9/32       unicast [n1 19:55:19.070] * (100) [AS64513i]
\tvia 10.1.2.2 on e2
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 64513
\tBGP.next_hop: 10.1.2.2
\tBGP.med: 200
\tBGP.local_pref: 100
\tBGP.community: (64513,200)
                     unicast [n0 19:55:19.334] (100) [AS64512i]
\tvia 10.1.1.2 on e1
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 64512 64512
\tBGP.next_hop: 10.1.1.2
\tBGP.med: 100
\tBGP.local_pref: 100
\tBGP.community: (64512,7) (64512,100)
\tBGP.large_community: (64512, 1, 1)
"""


def test_frr_detail_paths():
    best, other = (parse_path("203.0.113.5/32", p) for p in FRR_DETAIL_PATHS)
    assert (best.best, best.med, best.aspath, best.peer, best.nexthop) == (True, 200, [64512], "10.1.2.2", "10.1.2.2")
    assert best.communities == [] and best.large_communities == []
    assert (other.best, other.med, other.aspath) == (False, 100, [64512, 64512])
    assert other.communities == ["64512:7", "64512:100"] and other.large_communities == ["64512:1:1"]


def test_frr_table_view_path():
    p = parse_path("203.0.113.5/32", FRR_TABLE_PATH)
    assert (p.best, p.valid, p.med, p.aspath, p.peer, p.nexthop) == (True, True, 200, [64512], "10.1.2.2", "10.1.2.2")


def test_frr_stale_and_local_paths():
    assert parse_path("203.0.113.5/32", FRR_STALE).stale
    local = parse_path("203.0.113.6/32", FRR_LOCAL)
    assert (local.peer, local.aspath, local.med, local.communities) == (None, [], 5, ["1:2"])


def test_frr_aspath_with_set():
    p = parse_path("x", {"aspath": {"string": "64512 {64513,64514}"}})
    assert p.aspath == [64512, 64513, 64514]


def test_render_bgpd_conf():
    conf = render_bgpd_conf(FrrConfig(
        asn=64500, router_id="10.99.100.1", hold_time=3, always_compare_med=True, graceful_restart=True,
        neighbors=(Neighbor("10.99.1.2", 64512, password="s3cret", passive=True, port=1790),
                   Neighbor("fd00:99:1::2", 64512)),
        originate=(Originate("203.0.113.5/32", med=100, communities=("64512:100",), prepend=(64512,)),
                   Originate("2001:db8::5/128"))), "/tmp/x.log")
    lines = [l.strip() for l in conf.splitlines()]
    for expected in ("router bgp 64500", "bgp router-id 10.99.100.1", "no bgp ebgp-requires-policy",
                     "bgp always-compare-med", "bgp graceful-restart", "timers bgp 1 3",
                     "neighbor 10.99.1.2 remote-as 64512", "neighbor 10.99.1.2 password s3cret",
                     "neighbor 10.99.1.2 passive", "neighbor 10.99.1.2 port 1790",
                     "neighbor fd00:99:1::2 activate", "set metric 100", "set community 64512:100",
                     "set as-path prepend 64512", "network 203.0.113.5/32 route-map ORIG0",
                     "network 2001:db8::5/128 route-map ORIG1"):
        assert expected in lines, expected
    assert "bgp bestpath as-path multipath-relax" not in lines
    # the v4 network is only in the ipv4 family, the v6 one only in ipv6
    v4 = conf.split("address-family ipv4 unicast")[1].split("exit-address-family")[0]
    assert "203.0.113.5/32" in v4 and "2001:db8::5/128" not in v4
    off = render_bgpd_conf(FrrConfig(asn=1, router_id="1.1.1.1", graceful_restart="disable"), "/x")
    assert " no bgp always-compare-med" in off and " bgp graceful-restart-disable" in off
    # FRR rejects `no bgp graceful-restart` when GR was never on: the default renders nothing
    assert "graceful-restart" not in render_bgpd_conf(FrrConfig(asn=1, router_id="1.1.1.1"), "/x")


def test_originate_rejects_a_str_for_a_tuple():
    with pytest.raises(TypeError, match="communities"):
        Originate("203.0.113.5/32", communities="64512:100")


def test_bird_show_route_all():
    routes = parse_routes(BIRD_SHOW_ROUTE_ALL, {"n0": "10.1.1.2", "n1": "10.1.2.2"})
    best, other = routes["203.0.113.9/32"]
    assert (best.best, best.peer, best.med, best.aspath, best.communities, best.localpref) == \
        (True, "10.1.2.2", 200, [64513], ["64513:200"], 100)
    assert (other.best, other.peer, other.nexthop, other.med, other.aspath) == \
        (False, "10.1.1.2", "10.1.1.2", 100, [64512, 64512])
    assert other.communities == ["64512:7", "64512:100"] and other.large_communities == ["64512:1:1"]


def test_render_bird_conf():
    conf = render_bird_conf(BirdConfig(
        asn=64500, router_id="10.99.100.1", always_compare_med=True, with_kernel=True, hold_time=3,
        neighbors=(Neighbor("10.99.1.2", 64512, password="pw"), Neighbor("10.99.9.9", 64500)),
        originate=(Originate("203.0.113.5/32", med=100, communities=("64512:100",),
                             large_communities=("64512:1:1",)),)), "/tmp/b.log")
    assert "neighbor 10.99.1.2 as 64512;" in conf and 'password "pw";' in conf
    assert "med metric yes;" in conf and "protocol kernel kernel4" in conf
    assert "hold time 3; keepalive time 1;" in conf
    assert "bgp_med = 100;" in conf and "bgp_community.add((64512,100));" in conf
    assert "bgp_large_community.add((64512,1,1));" in conf
    ibgp = conf.split("protocol bgp n1")[1]
    assert "direct;" in ibgp  # iBGP to a directly connected peer


def test_frr_ibgp_local_pref_in_both_views():
    detail = {"aspath": {"string": "Local", "segments": [], "length": 0}, "origin": "IGP", "metric": 2,
              "locPrf": 200, "valid": True, "bestpath": {"overall": True, "selectionReason": "Local Pref"},
              "nexthops": [{"ip": "10.1.2.2", "afi": "ipv4", "metric": 0, "accessible": True, "used": True}],
              "peer": {"peerId": "10.1.2.2", "routerId": "10.1.2.2", "type": "internal"}}
    table = {"valid": True, "pathFrom": "internal", "prefix": "203.0.113.5", "prefixLen": 32, "metric": 1,
             "locPrf": 100, "weight": 0, "peerId": "10.1.1.2", "path": "", "origin": "IGP",
             "nexthops": [{"ip": "10.1.1.2", "hostname": "frr", "afi": "ipv4", "used": True}]}
    d, t = parse_path("203.0.113.5/32", detail), parse_path("203.0.113.5/32", table)
    assert (d.localpref, d.best, d.aspath, d.peer) == (200, True, [], "10.1.2.2")
    assert (t.localpref, t.best, t.aspath, t.med) == (100, False, [], 1)
