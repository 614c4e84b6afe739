"""Command text: exact rendering, refusals, and the no-injection property."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpspeaker.exabgp.commands import (
    announce_line, check_next_hop, eor_line, parse_line, withdraw_line,
)
from bgpspeaker.model import Community, LargeCommunity, RouteAttributes

A = ipaddress.ip_address
N = ipaddress.ip_network
PEER_A, PEER_B = A("10.0.0.1"), A("10.0.0.3")


def attrs(**kw) -> RouteAttributes:
    kw.setdefault("next_hop", A("10.0.0.2"))
    kw.setdefault("as_path", (64512,))
    return RouteAttributes(**kw)


def test_announce_full_attribute_set():
    line = announce_line([PEER_B, PEER_A], attrs(
        med=100, local_pref=300, as_path=(64512, 64512),
        communities=(Community(64512, 100), Community(65535, 0)),
        large_communities=(LargeCommunity(64512, 1, 1),)),
        [N("203.0.113.5/32"), N("203.0.113.6/32")])
    assert line == ("neighbor 10.0.0.1 , neighbor 10.0.0.3 announce attributes next-hop 10.0.0.2 origin igp "
                    "med 100 local-preference 300 as-path [64512 64512] community [64512:100 65535:0] "
                    "large-community [64512:1:1] nlri 203.0.113.5/32 203.0.113.6/32")


def test_announce_minimal_omits_empty_as_path():
    assert announce_line([PEER_A], attrs(as_path=()), [N("203.0.113.5/32")]) == (
        "neighbor 10.0.0.1 announce attributes next-hop 10.0.0.2 origin igp nlri 203.0.113.5/32")


def test_ipv6():
    line = announce_line([PEER_A], attrs(next_hop=A("fd00::2")), [N("2001:db8::5/128")])
    assert line.endswith("next-hop fd00::2 origin igp as-path [64512] nlri 2001:db8::5/128")
    assert withdraw_line([A("fd00::1")], [N("2001:db8::5/128")]) == (
        "neighbor fd00::1 withdraw attributes nlri 2001:db8::5/128")


def test_withdraw_and_eor():
    assert withdraw_line([PEER_A, PEER_A], [N("203.0.113.5/32")]) == (
        "neighbor 10.0.0.1 withdraw attributes nlri 203.0.113.5/32")
    assert eor_line(PEER_A, "ipv6 unicast") == "neighbor 10.0.0.1 announce eor ipv6 unicast"
    with pytest.raises(ValueError):
        eor_line(PEER_A, "ipv4 flow\nclear adj-rib out")


@pytest.mark.parametrize("nh", ["127.0.0.1", "127.1.2.3", "0.0.0.0", "0.1.2.3", "224.0.0.5", "169.254.1.1",
                                "255.255.255.255", "240.0.0.1", "::1", "::", "fe80::1", "ff02::1",
                                "::ffff:127.0.0.1", "::ffff:10.0.0.1"])
def test_unusable_next_hops_are_refused(nh):
    with pytest.raises(ValueError, match="next-hop"):
        check_next_hop(A(nh))
    with pytest.raises(ValueError):
        announce_line([PEER_A], attrs(next_hop=A(nh)), [N("203.0.113.5/32") if A(nh).version == 4
                                                         else N("2001:db8::5/128")])


@pytest.mark.parametrize("bad, exc", [
    (dict(next_hop="10.0.0.2"), TypeError),
    (dict(med=-1), ValueError),
    (dict(med=2 ** 32), ValueError),
    (dict(med=True), TypeError),
    (dict(med="1 nlri 1.2.3.4/32"), TypeError),
    (dict(local_pref=1.5), TypeError),
    (dict(as_path=(0,)), ValueError),
    (dict(as_path=(64512, "1]\nclear adj-rib out")), TypeError),
    (dict(communities=("64512:1",)), TypeError),
    (dict(large_communities=(Community(1, 2),)), TypeError),
])
def test_untyped_or_out_of_range_values_are_refused(bad, exc):
    with pytest.raises(exc):
        announce_line([PEER_A], attrs(**bad), [N("203.0.113.5/32")])


def test_other_refusals():
    with pytest.raises(ValueError, match="neighbor"):
        announce_line([], attrs(), [N("203.0.113.5/32")])
    with pytest.raises(TypeError):
        announce_line(["10.0.0.1"], attrs(), [N("203.0.113.5/32")])
    with pytest.raises(ValueError, match="prefix"):
        announce_line([PEER_A], attrs(), [])
    with pytest.raises(TypeError):
        withdraw_line([PEER_A], ["203.0.113.5/32"])
    with pytest.raises(ValueError, match="IPv4 and IPv6"):
        withdraw_line([PEER_A], [N("203.0.113.5/32"), N("2001:db8::/64")])
    with pytest.raises(ValueError, match="IPv4"):  # ExaBGP would accept this; we do not
        announce_line([PEER_A], attrs(), [N("2001:db8::5/128")])
    with pytest.raises(TypeError):
        announce_line([PEER_A], object(), [N("203.0.113.5/32")])


# --- property: any typed input → exactly one line of the grammar, parsing back to the input

U32 = st.integers(0, 2 ** 32 - 1)
V4 = st.integers(0, 2 ** 32 - 1).map(ipaddress.IPv4Address)
V6 = st.integers(0, 2 ** 128 - 1).map(ipaddress.IPv6Address)
# most of the IPv6 space is "reserved"; global unicast (2000::/3) keeps the filter cheap
V6_GLOBAL = st.integers(0, 2 ** 125 - 1).map(lambda n: ipaddress.IPv6Address((1 << 125) | n))


def usable(address) -> bool:
    try:
        check_next_hop(address)
        return True
    except ValueError:
        return False


def networks(version: int):
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return st.builds(lambda n, length: cls((n, length), strict=False),
                     st.integers(0, 2 ** bits - 1), st.integers(0, bits))


COMMUNITIES = st.lists(st.builds(Community, st.integers(0, 65535), st.integers(0, 65535)),
                       max_size=5, unique=True).map(lambda c: tuple(sorted(c)))
LARGE = st.lists(st.builds(LargeCommunity, U32, U32, U32), max_size=4, unique=True).map(lambda c: tuple(sorted(c)))


@st.composite
def commands(draw):
    version = draw(st.sampled_from([4, 6]))
    next_hop = draw((V4 if version == 4 else V6_GLOBAL | V6).filter(usable))
    attributes = RouteAttributes(
        next_hop=next_hop,
        as_path=tuple(draw(st.lists(st.integers(1, 2 ** 32 - 1), max_size=6))),
        med=draw(st.none() | U32), local_pref=draw(st.none() | U32),
        communities=draw(COMMUNITIES), large_communities=draw(LARGE))
    peers = draw(st.lists(V4 | V6, min_size=1, max_size=4, unique=True))
    prefixes = draw(st.lists(networks(version), min_size=1, max_size=20))
    return peers, attributes, prefixes


def key(a):
    return (a.version, int(a))


@settings(max_examples=500, deadline=None)
@given(commands())
def test_announce_is_one_line_of_the_grammar_that_parses_back(cmd):
    peers, attributes, prefixes = cmd
    line = announce_line(peers, attributes, prefixes)
    assert "\n" not in line and "\r" not in line and line.isascii() and line.isprintable()
    parsed = parse_line(line)
    assert parsed.action == "announce"
    assert parsed.peers == tuple(sorted(set(peers), key=key))
    assert parsed.attributes == attributes
    assert parsed.prefixes == tuple(prefixes)


@settings(max_examples=300, deadline=None)
@given(commands())
def test_withdraw_is_one_line_of_the_grammar_that_parses_back(cmd):
    peers, _, prefixes = cmd
    line = withdraw_line(peers, prefixes)
    assert "\n" not in line and line.isprintable()
    parsed = parse_line(line)
    assert (parsed.action, parsed.peers, parsed.prefixes) == ("withdraw", tuple(sorted(set(peers), key=key)),
                                                              tuple(prefixes))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["med", "local_pref", "as_path", "next_hop", "communities"]))
def test_text_anywhere_is_refused(text, field):
    values = {"med": text, "local_pref": text, "as_path": (64512, text), "next_hop": text, "communities": (text,)}
    with pytest.raises((TypeError, ValueError)):
        announce_line([PEER_A], attrs(**{field: values[field]}), [N("203.0.113.5/32")])


def test_parse_line_is_strict():
    for junk in ["announce route 1.2.3.4/32 next-hop 10.0.0.2",
                 "neighbor 10.0.0.1 announce attributes next-hop 10.0.0.2 origin igp nlri 1.2.3.4/32\nclear adj-rib out",
                 "neighbor 10.0.0.1 withdraw attributes nlri 1.2.3.4/32 ; shutdown"]:
        with pytest.raises(ValueError):
            parse_line(junk)


@pytest.mark.parametrize("scope", ["eth0", "x\nclear adj-rib out", "1 nlri 10.0.0.0"])
def test_scoped_ipv6_values_are_refused(scope):
    scoped = ipaddress.IPv6Address(f"2001:db8::1%{scope}")
    with pytest.raises(ValueError, match="scope"):
        announce_line([scoped], attrs(next_hop=A("2001:db8::2")), [N("2001:db8::5/128")])
    with pytest.raises(ValueError, match="scope"):
        announce_line([PEER_A], attrs(next_hop=scoped), [N("2001:db8::5/128")])
    with pytest.raises(ValueError, match="scope"):
        withdraw_line([PEER_A], [ipaddress.IPv6Network(f"2001:db8::%{scope}/128")])
