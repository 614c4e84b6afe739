"""model.parse_ip: the one parser of untrusted address text (pure)."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpspeaker import model

OCTET_TEXT = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["", "0", "00", "01", "010", "255", "256", "0x1", "1e2", "+1", "-1", " 1", "1 ", "٣"]),
)
IPV4ISH = st.lists(OCTET_TEXT, min_size=1, max_size=6).map(".".join)


def _outcome(parse, text):
    try:
        return parse(text)
    except ValueError:
        return "refused"


@settings(max_examples=2000, deadline=None)
@given(st.one_of(IPV4ISH, st.text(alphabet="0123456789.:abcdef%x \\n", max_size=20)))
def test_parse_ip_accepts_and_refuses_exactly_what_ipaddress_does(text):
    """The IPv4 fast path (inet_pton) must not widen what is accepted (leading zeros,
    fewer octets, hex, whitespace) nor narrow it: same answer as ipaddress, scopes aside."""
    model._parse_plain_ip.cache_clear()
    expected = "refused" if "%" in text or not text.isascii() else _outcome(ipaddress.ip_address, text)
    got = _outcome(model.parse_ip, text)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("text", ["1.2.3.04", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1.2.3.4 ", "0x7f.0.0.1", "256.0.0.1",
                                  "1..2.3", "1.2.3.4\n", "fd00::1%eth0", "1.2.3.٤"])
def test_parse_ip_refuses_what_a_loose_parser_accepts(text):
    with pytest.raises(ValueError):
        model.parse_ip(text)


def test_parse_ip_parses_both_families():
    assert model.parse_ip("203.0.113.7") == ipaddress.IPv4Address("203.0.113.7")
    assert model.parse_ip("0.0.0.0") == ipaddress.IPv4Address(0)
    assert model.parse_ip("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert model.parse_ip("::ffff:1.2.3.4") == ipaddress.IPv6Address("::ffff:1.2.3.4")


@pytest.mark.parametrize("text", ["203.0.113.5", "0.0.0.0", "2001:db8::5", "::ffff:1.2.3.4"])
def test_a_host_prefix_is_the_network_ipaddress_makes_without_its_costs(text):
    """model.host_prefix: equal to the plainly parsed network, with the same hash (dict keys
    mix both), printed and ordered the same, hosts() the same; but its hash is computed once
    and it keeps no hosts() closure of its own (170 of the 400 bytes a route's prefix kept)."""
    address = ipaddress.ip_address(text)
    prefix, plain = model.host_prefix(address), ipaddress.ip_network(address)
    assert prefix == plain and plain == prefix and hash(prefix) == hash(plain)
    assert {plain: "found"}[prefix] == "found" and {prefix: "found"}[plain] == "found"
    assert repr(prefix) == repr(plain) and str(prefix) == str(plain) and not prefix < plain and not plain < prefix
    assert isinstance(prefix, type(plain)) and prefix.prefixlen == plain.prefixlen == address.max_prefixlen
    assert prefix.hosts() == plain.hosts() == [address] and type(prefix.hosts()) is type(plain.hosts())
    assert "hosts" not in vars(prefix) and "hosts" in vars(plain)
    wider = prefix.supernet()  # ipaddress makes it with our class: still hashable, still equal
    assert wider == plain.supernet() and hash(wider) == hash(plain.supernet())
    assert list(wider.hosts()) == list(plain.supernet().hosts())


def test_text_the_fast_parser_refuses_gets_ipaddress_s_own_error():
    """What inet_pton refuses is handed to ipaddress, whose message names the text (an
    embedded NUL made inet_pton raise a ValueError of its own, which named nothing)."""
    for text in ("1.2.3.4\x00x", "1.2.3.04"):
        with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
            model.parse_ip(text)
