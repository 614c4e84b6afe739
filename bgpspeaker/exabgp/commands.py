"""ExaBGP API command text, built only from typed, validated values (docs/design.md invariant 4).

Why this module is the only place that writes command text: ExaBGP parses each line of
our stream as a command, so a newline or a keyword smuggled into any value (a Service
annotation, a community, a peer name) would be a command injection. Here every
component is rendered with str() from an ipaddress object, an int or a (Large)Community
that validated itself, after an exact type check; anything else is a TypeError or
ValueError before a byte is written. `parse_line` reads our own grammar back, so a
property test can show that whatever values come in, exactly the intended single
command goes out.

Measured rules behind the checks (docs/reference/exabgp-api.md):
- Next-hops in 127/8 made FRR send NOTIFICATION 3/8 and the session flapped forever,
  because ExaBGP re-sends its RIB on every reconnect (§9): loopback, unspecified,
  multicast, link-local, reserved, 0/8 and IPv4-mapped next-hops are refused (the rule
  is model.next_hop_problem, which the planner applies first).
- ExaBGP accepted an IPv6 prefix with an IPv4 next-hop without complaint (run here,
  `announce attributes next-hop 10.0.0.1 nlri 2001:db8::5/128` → done): a next-hop of the
  other family is refused, as is a batch mixing families.
- An explicit as-path is sent verbatim on eBGP (§9): putting our ASN first is the
  caller's (planner's) job; here every ASN must be 1..4294967295 (0 is reserved, RFC 7607).
  An empty as-path is omitted: ExaBGP then sends an empty AS_PATH on iBGP and
  [local-as] on eBGP.
- Every line names its neighbors (`neighbor A , neighbor B ...`, with the spaces, §5):
  a command without a filter would go to every peer, iBGP attributes included.
- Withdraws need no next-hop: `withdraw attributes nlri ...` removed v4 and v6 prefixes
  from the adj-rib-out (run here).
- `announce eor` is answered at once when no peer is established (§5), so the channel
  sends it only with an empty window; this module just builds it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from bgpspeaker.model import (
    HOST_PREFIX_TYPES,
    Community,
    IPAddress,
    IPNetwork,
    LargeCommunity,
    RouteAttributes,
    next_hop_problem,
)

MAX_U32 = 0xFFFFFFFF
FAMILIES = ("ipv4 unicast", "ipv6 unicast")

SHOW_NEIGHBOR_JSON = "show neighbor json"
CLEAR_ADJ_RIB_OUT = "clear adj-rib out"
RELOAD = "reload"  # re-read the config file (as SIGUSR1); answered at once, so sent alone (reload.py)
SHOW_NEIGHBOR_CONFIGURATION = "show neighbor configuration"  # queued; the configured neighbors as text

_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)
_NETWORK_TYPES = (ipaddress.IPv4Network, ipaddress.IPv6Network, *HOST_PREFIX_TYPES)


def _int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int:  # bool is an int subclass; so are IntEnums: both refused
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}, got {value}")
    return value


def _address(value: object, what: str) -> IPAddress:
    if type(value) not in _ADDRESS_TYPES:
        raise TypeError(f"{what} must be an ipaddress IPv4Address/IPv6Address, got {type(value).__name__}")
    # str() of a scoped IPv6 address prints the scope verbatim, whatever text it holds
    # (newlines included): it must never reach a command line (found by the injection fuzz).
    if getattr(value, "scope_id", None) is not None:
        raise ValueError(f"{what} must not carry an IPv6 scope id")
    return value  # type: ignore[return-value]


def check_next_hop(next_hop: object) -> IPAddress:
    """The next-hop, if a router will accept it; ValueError naming the reason otherwise."""
    nh = _address(next_hop, "next-hop")
    problem = next_hop_problem(nh)  # the planner's rule too: plan/explain skip what this refuses
    if problem:
        raise ValueError(f"next-hop {nh} is not usable ({problem})")
    return nh


def _peers(peers: Iterable[IPAddress]) -> list[IPAddress]:
    result = [_address(p, "peer address") for p in peers]
    if not result:
        raise ValueError("a command needs at least one neighbor (never broadcast to every peer)")
    return sorted(set(result), key=lambda a: (a.version, int(a)))


def _prefixes(prefixes: Iterable[IPNetwork], version: Optional[int] = None) -> list[IPNetwork]:
    result = []
    for p in prefixes:
        if type(p) not in _NETWORK_TYPES:
            raise TypeError(f"prefix must be an ipaddress IPv4Network/IPv6Network, got {type(p).__name__}")
        if getattr(p.network_address, "scope_id", None) is not None:  # same hazard as in _address
            raise ValueError("a prefix must not carry an IPv6 scope id")
        result.append(p)
    if not result:
        raise ValueError("a command needs at least one prefix")
    versions = {p.version for p in result}
    if len(versions) != 1:
        raise ValueError("IPv4 and IPv6 prefixes cannot share one command")
    if version is not None and versions != {version}:
        raise ValueError(f"next-hop is IPv{version} but the prefixes are IPv{versions.pop()}")
    return result


def _neighbor_filter(peers: Iterable[IPAddress]) -> str:
    return " , ".join(f"neighbor {p}" for p in _peers(peers))


def attribute_text(attributes: RouteAttributes) -> str:
    """`next-hop X origin igp [med N] [local-preference N] [as-path [..]] [community [..]] [large-community [..]]`."""
    if type(attributes) is not RouteAttributes:
        raise TypeError(f"attributes must be RouteAttributes, got {type(attributes).__name__}")
    a = attributes
    parts = [f"next-hop {check_next_hop(a.next_hop)}", "origin igp"]
    if a.med is not None:
        parts.append(f"med {_int(a.med, 0, MAX_U32, 'med')}")
    if a.local_pref is not None:
        parts.append(f"local-preference {_int(a.local_pref, 0, MAX_U32, 'local-preference')}")
    as_path = tuple(a.as_path)
    if as_path:
        parts.append("as-path [" + " ".join(str(_int(n, 1, MAX_U32, "as-path ASN")) for n in as_path) + "]")
    if a.communities:
        for c in a.communities:
            if type(c) is not Community:
                raise TypeError(f"community must be a Community, got {type(c).__name__}")
        parts.append("community [" + " ".join(str(c) for c in a.communities) + "]")
    if a.large_communities:
        for lc in a.large_communities:
            if type(lc) is not LargeCommunity:
                raise TypeError(f"large community must be a LargeCommunity, got {type(lc).__name__}")
        parts.append("large-community [" + " ".join(str(c) for c in a.large_communities) + "]")
    return " ".join(parts)


def announce_line(peers: Iterable[IPAddress], attributes: RouteAttributes, prefixes: Iterable[IPNetwork]) -> str:
    """One `announce attributes ... nlri ...` command (no newline)."""
    attrs = attribute_text(attributes)
    nets = _prefixes(prefixes, attributes.next_hop.version)
    return f"{_neighbor_filter(peers)} announce attributes {attrs} nlri " + " ".join(str(p) for p in nets)


def withdraw_line(peers: Iterable[IPAddress], prefixes: Iterable[IPNetwork]) -> str:
    """One `withdraw attributes nlri ...` command (no newline)."""
    nets = _prefixes(prefixes)
    return f"{_neighbor_filter(peers)} withdraw attributes nlri " + " ".join(str(p) for p in nets)


def eor_line(peer: IPAddress, family: str) -> str:
    """End-of-RIB for one peer and family (`ipv4 unicast` / `ipv6 unicast`)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return f"neighbor {_address(peer, 'peer address')} announce eor {family}"


# --- reading our own grammar back (tests, logs) ----------------------------------------

_IP = r"[0-9a-f.:]+"
_NET = r"[0-9a-f.:]+/\d{1,3}"
_FILTER = rf"(?P<peers>neighbor {_IP}(?: , neighbor {_IP})*)"
_ANNOUNCE = re.compile(
    rf"{_FILTER} announce attributes next-hop (?P<nh>{_IP}) origin igp"
    r"(?: med (?P<med>\d+))?(?: local-preference (?P<lp>\d+))?"
    r"(?: as-path \[(?P<asp>\d+(?: \d+)*)\])?"
    r"(?: community \[(?P<comm>\d+:\d+(?: \d+:\d+)*)\])?"
    r"(?: large-community \[(?P<lcomm>\d+:\d+:\d+(?: \d+:\d+:\d+)*)\])?"
    rf" nlri (?P<nlri>{_NET}(?: {_NET})*)"
)
_WITHDRAW = re.compile(rf"{_FILTER} withdraw attributes nlri (?P<nlri>{_NET}(?: {_NET})*)")
_EOR = re.compile(rf"neighbor (?P<peer>{_IP}) announce eor (?P<family>ipv[46] unicast)")


@dataclass(frozen=True)
class Parsed:
    action: str  # announce | withdraw | eor
    peers: tuple[IPAddress, ...]
    attributes: Optional[RouteAttributes] = None
    prefixes: tuple[IPNetwork, ...] = ()
    family: Optional[str] = None


def parse_line(line: str) -> Parsed:
    """Parse a line this module produced (strict: anything else is a ValueError)."""
    if m := _ANNOUNCE.fullmatch(line):
        attrs = RouteAttributes(
            next_hop=ipaddress.ip_address(m["nh"]),
            as_path=tuple(int(x) for x in m["asp"].split()) if m["asp"] else (),
            med=int(m["med"]) if m["med"] else None,
            local_pref=int(m["lp"]) if m["lp"] else None,
            communities=tuple(Community.parse(c) for c in m["comm"].split()) if m["comm"] else (),
            large_communities=tuple(LargeCommunity.parse(c) for c in m["lcomm"].split()) if m["lcomm"] else (),
        )
        return Parsed("announce", _parse_peers(m["peers"]), attrs, _parse_nets(m["nlri"]))
    if m := _WITHDRAW.fullmatch(line):
        return Parsed("withdraw", _parse_peers(m["peers"]), None, _parse_nets(m["nlri"]))
    if m := _EOR.fullmatch(line):
        return Parsed("eor", (ipaddress.ip_address(m["peer"]),), family=m["family"])
    raise ValueError(f"not a command of our grammar: {line!r}")


def _parse_peers(text: str) -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_address(p.removeprefix("neighbor ")) for p in text.split(" , "))


def _parse_nets(text: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(p) for p in text.split())
