"""RouteIntents as the JSON entries of docs/design.md §3.1, shared by `plan --format json` and `/status`.

One shape in one place, so what `plan` predicts offline and what a running daemon shows
can be compared line by line. A route goes to several peers with identical attributes
more often than not, so entries group peers: one entry per (service, prefix, attributes).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from bgpspeaker.model import JSON, RouteIntent


def route_entries(routes: Iterable[RouteIntent]) -> list[dict[str, JSON]]:
    peers_by_route: dict[tuple, list[str]] = defaultdict(list)
    for route in routes:
        for service in route.services:
            peers_by_route[(service, route.prefix, route.tier, route.attributes)].append(route.peer)
    entries = []
    for (service, prefix, tier, attributes), peers in peers_by_route.items():
        entries.append(
            {
                "service": service,
                "prefix": str(prefix),
                "tier": tier.value,
                "nextHop": str(attributes.next_hop),
                "med": attributes.med,
                "localPref": attributes.local_pref,
                "asPath": list(attributes.as_path),
                "communities": [str(c) for c in attributes.communities],
                "largeCommunities": [str(c) for c in attributes.large_communities],
                "peers": sorted(peers),
            }
        )
    entries.sort(key=lambda e: (e["service"], e["prefix"].count(":"), e["prefix"], e["peers"]))
    return entries
