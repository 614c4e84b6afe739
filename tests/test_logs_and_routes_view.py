"""logfmt lines and the route JSON shared by `plan --format json` and `/status`."""

from __future__ import annotations

import ipaddress
import logging

from bgpspeaker.logs import LogfmtFormatter, fields
from bgpspeaker.model import Community, RouteAttributes, RouteIntent, Tier
from bgpspeaker.routes_view import route_entries


def format_record(message, **extra):
    record = logging.LogRecord("bgpspeaker.test", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return LogfmtFormatter().format(record)


def test_logfmt_is_one_line_with_quoted_values():
    line = format_record("route announced", **fields(prefix="203.0.113.1/32", note='two words "quoted"\nnext'))
    assert "\n" not in line
    assert 'msg="route announced"' in line
    assert "prefix=203.0.113.1/32" in line
    assert r'note="two words \"quoted\"\nnext"' in line
    assert line.startswith("ts=") and " level=info " in line


def route(peer, prefix="203.0.113.1/32", services=("demo/web",), med=100):
    return RouteIntent(
        prefix=ipaddress.ip_network(prefix), peer=peer,
        attributes=RouteAttributes(next_hop=ipaddress.ip_address("10.99.1.2"), as_path=(64512, 64512), med=med,
                                   communities=(Community(64512, 200),)),
        tier=Tier.SECONDARY, services=services)


def test_route_entries_group_peers_with_identical_attributes():
    entries = route_entries([route("tor-b"), route("tor-a"), route("tor-c", med=999)])
    assert entries == [
        {"service": "demo/web", "prefix": "203.0.113.1/32", "tier": "secondary", "nextHop": "10.99.1.2",
         "med": 100, "localPref": None, "asPath": [64512, 64512], "communities": ["64512:200"],
         "largeCommunities": [], "peers": ["tor-a", "tor-b"]},
        {"service": "demo/web", "prefix": "203.0.113.1/32", "tier": "secondary", "nextHop": "10.99.1.2",
         "med": 999, "localPref": None, "asPath": [64512, 64512], "communities": ["64512:200"],
         "largeCommunities": [], "peers": ["tor-c"]},
    ]


def test_a_shared_address_appears_once_per_service():
    entries = route_entries([route("tor-a", services=("ns/a", "ns/b"))])
    assert [e["service"] for e in entries] == ["ns/a", "ns/b"]
