"""Loading and validating the YAML config: values, every error with its path and line."""

from __future__ import annotations

import ipaddress
import json
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpspeaker.config.load import ConfigError, ConfigIssue, config_warnings, load_config, load_config_text
from bgpspeaker.config.schema import DEFAULT_TIERS, TierAttributes
from bgpspeaker.model import Community, LargeCommunity, Tier

# The example of docs/design.md §3.2 "Configuration", minus passwordFile (tested on its own).
DESIGN_EXAMPLE = """\
cluster: {name: east, defaultTier: primary}
speaker:
  myASN: 64512
  routerID: auto
  loadBalancerClass: ""
  shutdown: withdraw
  drainSeconds: 5
exabgp: {gracefulRestart: 120}
peers:
  - name: tor-a
    address: 10.0.0.1
    asn: 64500
    port: 179
    holdTime: 90
    ebgpMultiHop: 2
    sourceAddress: 10.0.0.10
    nodeSelector: {rack: r1}
pools:
  - name: public
    addresses: [203.0.113.0/28, 203.0.113.100-203.0.113.120, "2001:db8::/124"]
    autoAssign: true
    avoidBuggyIPs: false
    namespaces: []
    allowedCommunities: []
tiers:
  primary:   {med: 100, localPref: 300, asPathPrepend: 0, communities: ["64512:100"]}
  secondary: {med: 200, localPref: 200, asPathPrepend: 1, communities: ["64512:200"]}
  tertiary:  {med: 300, localPref: 100, asPathPrepend: 2, communities: ["64512:300"]}
advertisements:
  - {pools: [public], peers: [tor-a], communities: ["64512:1"], largeCommunities: ["64512:1:1"]}
metrics: {address: "0.0.0.0:7472"}
"""

MINIMAL = """\
cluster: {name: east}
speaker: {myASN: 64512}
peers:
  - {name: tor-a, address: 10.99.1.1, asn: 64500}
pools:
  - {name: vip, addresses: [203.0.113.0/28]}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    return [str(issue) for issue in caught.value.issues]


def with_peer(extra: str) -> str:
    """MINIMAL with lines added to peers[0] (written in block style, first line 4)."""
    peer = "peers:\n  - name: tor-a\n    address: 10.99.1.1\n    asn: 64500\n" + textwrap.indent(extra, "    ")
    return MINIMAL.replace("peers:\n  - {name: tor-a, address: 10.99.1.1, asn: 64500}\n", peer)


# --- values ---------------------------------------------------------------------------


def test_design_example_loads_into_typed_values():
    config = load_config_text(DESIGN_EXAMPLE)
    assert config.cluster.name == "east" and config.cluster.default_tier is Tier.PRIMARY
    assert config.speaker.my_asn == 64512 and config.speaker.router_id is None
    assert config.speaker.drain_seconds == 5.0 and config.exabgp.graceful_restart == 120
    (peer,) = config.peers
    assert peer.address == ipaddress.ip_address("10.0.0.1") and peer.asn == 64500
    assert peer.source_address == ipaddress.ip_address("10.0.0.10") and peer.ebgp_multihop == 2
    assert peer.node_selector == (("rack", "r1"),)
    (pool,) = config.pools
    assert pool.addresses[0] == ipaddress.ip_network("203.0.113.0/28")
    assert pool.addresses[-1] == ipaddress.ip_network("2001:db8::/124")
    assert config.tiers[Tier.SECONDARY] == TierAttributes(200, 200, 1, (Community(64512, 200),))
    (advertisement,) = config.advertisements
    assert advertisement.large_communities == (LargeCommunity(64512, 1, 1),)
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 7472)


def test_a_range_is_stored_as_the_cidrs_covering_exactly_its_addresses():
    config = load_config_text(MINIMAL.replace("[203.0.113.0/28]", "[203.0.113.100-203.0.113.120]"))
    networks = config.pools[0].addresses
    covered = [address for network in networks for address in network]
    assert covered == [ipaddress.ip_address(f"203.0.113.{n}") for n in range(100, 121)]
    assert [str(n) for n in networks] == ["203.0.113.100/30", "203.0.113.104/29", "203.0.113.112/29",
                                          "203.0.113.120/32"]


def test_range_summary_is_minimal_and_exact():
    config = load_config_text(MINIMAL.replace("[203.0.113.0/28]", "[10.0.0.1 - 10.0.0.6]"))
    assert [str(n) for n in config.pools[0].addresses] == ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31",
                                                           "10.0.0.6/32"]


def test_a_single_address_is_a_host_network():
    config = load_config_text(MINIMAL.replace("[203.0.113.0/28]", "[203.0.113.7, '2001:db8::7']"))
    assert [str(n) for n in config.pools[0].addresses] == ["203.0.113.7/32", "2001:db8::7/128"]


def test_defaults_when_optional_sections_are_absent_or_empty():
    config = load_config_text(MINIMAL + "exabgp:\nmetrics:\nadvertisements:\n")
    assert config.exabgp.graceful_restart == 120 and config.metrics.port == 7472
    assert config.peers[0].port == 179 and config.peers[0].hold_time == 90
    assert config.speaker.shutdown == "withdraw" and config.cluster.default_tier is Tier.PRIMARY
    assert config.pools[0].auto_assign is True and config.advertisements == ()
    assert all(config.tiers[tier] is DEFAULT_TIERS[tier] for tier in Tier)


def test_a_written_tier_is_taken_as_written_and_missing_tiers_default():
    config = load_config_text(MINIMAL + "tiers:\n  primary: {med: 10}\n  secondary: {med: null, localPref: 5}\n")
    assert config.tiers[Tier.PRIMARY] == TierAttributes(med=10)
    assert config.tiers[Tier.SECONDARY] == TierAttributes(local_pref=5)
    assert config.tiers[Tier.TERTIARY] is DEFAULT_TIERS[Tier.TERTIARY]


def test_default_tier_none_and_router_id_and_ipv6_metrics():
    config = load_config_text(MINIMAL.replace("{name: east}", "{name: east, defaultTier: none}")
                              .replace("{myASN: 64512}", "{myASN: 64512, routerID: 10.1.2.3}")
                              + "metrics: {address: '[::]:9100'}\n")
    assert config.cluster.default_tier is None
    assert config.speaker.router_id == ipaddress.IPv4Address("10.1.2.3")
    assert (config.metrics.host, config.metrics.port) == ("::", 9100)


def test_strings_are_taken_as_written_not_as_yaml_1_1_guesses():
    # Unquoted, YAML 1.1 reads 64512:10 as a base-60 integer and `no` as false.
    config = load_config_text(MINIMAL.replace("{name: vip,", "{name: no, namespaces: [on],")
                              + "tiers:\n  primary: {communities: [64512:10], largeCommunities: [1:2:3]}\n")
    assert config.pools[0].name == "no" and config.pools[0].namespaces == ("on",)
    assert config.tiers[Tier.PRIMARY].communities == (Community(64512, 10),)
    assert config.tiers[Tier.PRIMARY].large_communities == (LargeCommunity(1, 2, 3),)


def test_anchors_and_merge_keys_work():
    config = load_config_text(MINIMAL.replace(
        "peers:\n  - {name: tor-a, address: 10.99.1.1, asn: 64500}\n",
        "peers:\n  - &tor {name: tor-a, address: 10.99.1.1, asn: 64500, holdTime: 9}\n"
        "  - {<<: *tor, name: tor-b, address: 10.99.1.2}\n"))
    assert [(p.name, str(p.address), p.hold_time) for p in config.peers] == [
        ("tor-a", "10.99.1.1", 9), ("tor-b", "10.99.1.2", 9)]


def test_loading_twice_gives_equal_configs():
    # The daemon's reload compares configs to skip no-op reloads.
    assert load_config_text(DESIGN_EXAMPLE) == load_config_text(DESIGN_EXAMPLE)


def test_same_peer_address_is_fine_when_node_selectors_cannot_overlap():
    config = load_config_text(MINIMAL.replace(
        "peers:\n  - {name: tor-a, address: 10.99.1.1, asn: 64500}\n",
        "peers:\n  - {name: tor-r1, address: 10.0.0.1, asn: 64500, nodeSelector: {rack: r1}}\n"
        "  - {name: tor-r2, address: 10.0.0.1, asn: 64500, nodeSelector: {rack: r2}}\n"))
    assert len(config.peers) == 2
    assert errors(MINIMAL.replace(
        "peers:\n  - {name: tor-a, address: 10.99.1.1, asn: 64500}\n",
        "peers:\n  - {name: tor-r1, address: 10.0.0.1, asn: 64500, nodeSelector: {rack: r1}}\n"
        "  - {name: tor-r2, address: 10.0.0.1, asn: 64500, nodeSelector: {zone: z1}}\n")) == [
        "peers[1].address: 10.0.0.1 is already the address of peers[0] "
        "(give them nodeSelectors that cannot match the same node) (line 5)"]


# --- errors: format, collection, lines ------------------------------------------------


def test_error_format_is_one_issue_per_line_with_path_and_line():
    with pytest.raises(ConfigError) as caught:
        load_config_text(with_peer("port: 0\nholdTime: 1\n"))
    error = caught.value
    assert error.issues == (ConfigIssue("peers[0].port", "must be 1..65535, got 0", 7),
                            ConfigIssue("peers[0].holdTime", "must be 0 (no keepalives) or 3..65535, got 1", 8))
    assert str(error) == ("peers[0].port: must be 1..65535, got 0 (line 7)\n"
                          "peers[0].holdTime: must be 0 (no keepalives) or 3..65535, got 1 (line 8)")
    assert error.source == "<string>"


def test_issue_without_path_or_line():
    assert str(ConfigIssue("", "the file is empty")) == "the file is empty"
    assert str(ConfigIssue("a.b", "bad")) == "a.b: bad"


def test_every_error_is_reported_and_no_partial_config_is_returned():
    text = DESIGN_EXAMPLE.replace("myASN: 64512", "myASN: 0").replace("holdTime: 90", "holdTime: 2") \
        .replace("203.0.113.0/28", "203.0.113.0/33").replace("64512:200", "64512:x")
    assert [line.split(":")[0] for line in errors(text)] == [
        "speaker.myASN", "peers[0].holdTime", "pools[0].addresses[0]", "tiers.secondary.communities[0]"]


@pytest.mark.parametrize("value, message", [
    ('"64500"', "must be an integer, got string '64500'"),
    ("true", "must be an integer, got boolean true"),
    ("yes", "must be an integer, got boolean yes"),
    ("64500.0", "must be an integer, got number 64500.0"),
    ("[64500]", "must be an integer, got a list"),
    ("", "must be an integer, got null"),
    ("0x10", "write 0x10 as a plain decimal number (YAML reads it as 16)"),
    ("4294967296", "must be 1..4294967295, got 4294967296"),
    ("-1", "must be 1..4294967295, got -1"),
])
def test_asn_type_and_range(value, message):
    text = MINIMAL.replace("asn: 64500", f"asn: {value}")
    assert errors(text) == [f"peers[0].asn: {message} (line 4)"]


@pytest.mark.parametrize("value, ok", [(0, True), (1, False), (2, False), (3, True), (65535, True), (65536, False)])
def test_hold_time_bounds(value, ok):
    text = with_peer(f"holdTime: {value}\n")
    if ok:
        assert load_config_text(text).peers[0].hold_time == value
    else:
        assert errors(text) == [f"peers[0].holdTime: must be 0 (no keepalives) or 3..65535, got {value} (line 7)"]


@pytest.mark.parametrize("field, value, message", [
    ("autoAssign", "1", "must be true or false, got integer 1"),
    ("avoidBuggyIPs", "'yes'", "must be true or false, got string 'yes'"),
    ("namespaces", "[default, default]", "'default' is listed twice (also [0])"),
    ("allowedCommunities", "['1:2:3:4']", "'1:2:3:4' is not a community (ASN:VALUE)"),
])
def test_pool_field_errors(field, value, message):
    text = MINIMAL.replace("addresses: [203.0.113.0/28]}", f"addresses: [203.0.113.0/28], {field}: {value}}}")
    path = "pools[0]." + field + ("[1]" if "twice" in message else "[0]" if field == "allowedCommunities" else "")
    assert errors(text) == [f"{path}: {message} (line 6)"]


@pytest.mark.parametrize("address, message", [
    ("0.0.0.0", "0.0.0.0 is a unspecified address"),
    ("'::1'", "::1 is a loopback address"),
    ("224.0.0.5", "224.0.0.5 is a multicast address"),
    ("255.255.255.255", "255.255.255.255 is a broadcast address"),
    ("10.0.0", "'10.0.0' is not an IP address"),
    ("10.0.0.1/32", "'10.0.0.1/32' is not an IP address"),
])
def test_peer_address_errors(address, message):
    assert errors(MINIMAL.replace("address: 10.99.1.1", f"address: {address}")) == [
        f"peers[0].address: {message} (line 4)"]


def test_ipv6_peer_is_accepted():
    config = load_config_text(MINIMAL.replace("address: 10.99.1.1", "address: '2001:db8::1'"))
    assert config.peers[0].address.version == 6


@pytest.mark.parametrize("where, replace, value", [
    ("peers[0].address", "10.99.1.1", "fe80::1%eth0"),
    ("peers[0].address", "10.99.1.1", "2001:db8::1%x\nannounce route 192.0.2.0/24 next-hop self"),
    ("pools[0].addresses[0]", "203.0.113.0/28", "2001:db8::%x/128"),
    ("pools[0].addresses[0]", "203.0.113.0/28", "2001:db8::1%a-2001:db8::5"),
    ("metrics.address", "0.0.0.0:1", "[fe80::1%eth0]:7472"),
])
def test_scope_ids_cannot_smuggle_text_into_addresses(where, replace, value):
    # ipaddress keeps any text after '%' (newlines too) and str() returns it: refuse it.
    text = (MINIMAL + "metrics: {address: 0.0.0.0:1}\n").replace(replace, json.dumps(value))
    (found,) = errors(text)
    reason = "contains a line break" if "\n" in value else ": IPv6 scope ids (%...) are not supported"
    assert found.startswith(f"{where}: {value!r}") and reason in found
    assert "\n" not in found  # the newline is shown escaped, never printed


def test_control_characters_never_reach_the_output():
    found = errors(MINIMAL.replace("{name: east}", '{name: "east\\nspeaker.myASN: ok", "x\\ny": 1}'))
    assert found == ["cluster.name: 'east\\nspeaker.myASN: ok' contains a line break or another control "
                     "character (line 1)",
                     "cluster.'x\\ny': unknown field (expected one of: name, defaultTier, maintenance) (line 1)"]


@pytest.mark.parametrize("entry, message", [
    ("10.0.0.0/33", "'10.0.0.0/33' is not a network"),
    ("10.0.0.1/24", "'10.0.0.1/24' has host bits set: did you mean 10.0.0.0/24 (or 10.0.0.1/32 for the single "
                    "address)?"),
    ("'2001:db8::1/64'", "'2001:db8::1/64' has host bits set: did you mean 2001:db8::/64 (or 2001:db8::1/128 for "
                         "the single address)?"),
    ("10.0.0.9-10.0.0.1", "'10.0.0.9-10.0.0.1' is backwards: 10.0.0.9 comes after 10.0.0.1"),
    ("10.0.0.1-10.0.0.0/24", "'10.0.0.1-10.0.0.0/24' is not a range of two IP addresses (a-b)"),
    ("224.0.0.0/24", "'224.0.0.0/24' overlaps 224.0.0.0/4 (multicast), which cannot be a Service address"),
    ("0.0.0.0/0", "'0.0.0.0/0' overlaps 0.0.0.0/8 (this-network), which cannot be a Service address"),
    ("'fe80::/64'", "'fe80::/64' overlaps fe80::/10 (link-local), which cannot be a Service address"),
    ("203.0.113.0/28 ", None),
])
def test_pool_address_errors(entry, message):
    text = MINIMAL.replace("[203.0.113.0/28]", f"[{entry}]")
    if message is None:
        load_config_text(text)
    else:
        assert errors(text) == [f"pools[0].addresses[0]: {message} (line 6)"]


def test_overlaps_name_both_pools_and_the_common_range():
    text = MINIMAL + "  - {name: b, addresses: ['2001:db8::/64', 203.0.113.14-203.0.113.30]}\n"
    assert errors(text) == ["pools[1].addresses[1]: 203.0.113.14-203.0.113.30 overlaps pools[0].addresses[0] "
                            "203.0.113.0/28 (pool vip): 203.0.113.14/31 is in both (line 7)"]
    text = MINIMAL + "  - {name: b, addresses: [203.0.113.13-203.0.113.30]}\n"
    assert errors(text)[0].endswith("(pool vip): 203.0.113.13-203.0.113.15 is in both (line 7)")


def test_unknown_fields_suggest_the_right_name():
    assert errors(with_peer("HoldTime: 9\nsourceadress: 10.0.0.1\nfoo: 1\n")) == [
        "peers[0].HoldTime: unknown field (did you mean holdTime?) (line 7)",
        "peers[0].sourceadress: unknown field (did you mean sourceAddress?) (line 8)",
        "peers[0].foo: unknown field (expected one of: name, address, asn, port, holdTime, keepaliveTime, "
        "connectTime, gracefulRestart, passwordFile, passwordEnv, ebgpMultiHop, sourceAddress, nodeSelector, "
        "nodeSelectors, bfdProfile) (line 9)",
    ]


def test_missing_required_fields_point_at_their_mapping():
    assert errors("cluster: {}\nspeaker:\n  routerID: auto\n") == [
        "cluster.name: required field is missing (line 1)",
        "speaker.myASN: required field is missing (line 3)",
    ]


def test_wrong_container_types():
    assert errors("cluster: east\nspeaker: {myASN: 64512}\npeers: {name: tor-a}\n") == [
        "cluster: must be a mapping, got string 'east' (line 1)",
        "peers: must be a list, got a mapping (line 3)",
    ]


@pytest.mark.parametrize("text, message", [
    ("cluster: [\n", "not valid YAML: expected the node content, but found '<stream end>' (while parsing a "
                     "flow node) (line 2)"),
    ("a: 1\n---\nb: 2\n", "not valid YAML: the file holds several YAML documents: expected one (line 2)"),
    ("", "the file is empty: expected a mapping with cluster, speaker, peers, pools"),
    ("just a string\n", "the config must be a mapping (cluster, speaker, peers, ...), got string "
                        "'just a string' (line 1)"),
])
def test_not_a_config_at_all(text, message):
    assert errors(text) == [message]


def test_absurd_nesting_is_an_error_not_a_crash():
    assert errors("[" * 5000 + "]" * 5000) == ["not valid YAML: nested too deeply"]


def test_load_balancer_class_and_drain_seconds():
    config = load_config_text(MINIMAL.replace("{myASN: 64512}", "{myASN: 64512, loadBalancerClass: example.com/bgp, "
                                                                "drainSeconds: 2.5}"))
    assert config.speaker.load_balancer_class == "example.com/bgp" and config.speaker.drain_seconds == 2.5
    assert errors(MINIMAL.replace("{myASN: 64512}", "{myASN: 64512, loadBalancerClass: 'a b', drainSeconds: .inf}")) == [
        "speaker.loadBalancerClass: 'a b' is not a class name like example.com/lb (line 2)",
        "speaker.drainSeconds: must be a number of seconds >= 0, got .inf (line 2)"]


def test_unsafe_tags_are_refused_not_executed():
    found = errors(MINIMAL + "metrics: {address: !!python/object/apply:os.getpid []}\n")
    assert found[0].startswith("metrics.address: ")
    assert errors(MINIMAL.replace("{name: east}", "{name: !!python/name:os.system ''}")) == [
        "cluster.name: cannot read '': could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/name:os.system' (line 1)"]
    assert errors(MINIMAL.replace("asn: 64500", "asn: !!int abc")) == [
        "peers[0].asn: cannot read 'abc': invalid literal for int() with base 10: 'abc' (line 4)"]
    assert errors("!!int x\n") == ["cannot read 'x': invalid literal for int() with base 10: 'x' (line 1)"]


def test_alias_bombs_are_linear():
    # safe_load would build 10**9 list items; the node tree is walked once per node.
    bomb = "x0: &a0 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"x{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    found = errors(MINIMAL + bomb)
    assert found[0] == "x0: unknown field (expected one of: cluster, speaker, exabgp, peers, pools, tiers, " \
                       "advertisements, bfdProfiles, metrics, health, sharedStore) (line 7)"
    assert len(found) == 10


def test_load_config_from_a_file(tmp_path):
    path = tmp_path / "speaker.yaml"
    path.write_text(MINIMAL)
    assert load_config(path).cluster.name == "east"
    assert load_config(str(path)).pools[0].name == "vip"


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "cannot read {path}: No such file or directory"),
    (lambda p: p.mkdir(), "cannot read {path}: Is a directory"),
    (lambda p: p.write_bytes(b"cluster: {name: \xff}\n"), "{path} is not UTF-8 text (byte 16)"),
])
def test_load_config_file_problems_are_config_errors(tmp_path, make, message):
    path = tmp_path / "speaker.yaml"
    make(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(issue) for issue in caught.value.issues] == [message.format(path=path)]
    assert caught.value.source == str(path)


# --- secrets ----------------------------------------------------------------------------

SECRET = "s3cr3t-value"


def test_password_file_is_checked_and_only_its_path_kept(tmp_path):
    secret = tmp_path / "tor-a.password"
    secret.write_text(SECRET + "\n")
    config = load_config_text(with_peer(f"passwordFile: {secret}\n"))
    assert config.peers[0].password_file == str(secret)
    assert SECRET not in repr(config)
    from bgpspeaker.config.secrets import peer_password
    assert peer_password(config.peers[0]) == SECRET


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"x" * 81, "is longer than 80 bytes, the kernel's TCP MD5 key limit"),
    (SECRET.encode() + b"\nsecond line\n", "contains a line break or another control character"),
    (b'se"cret', "contains a double quote or a backslash, which ExaBGP's config cannot hold"),
    (b"\xffsecret", "is not UTF-8 text"),
])
def test_bad_password_files_name_the_path_never_the_content(tmp_path, content, problem):
    secret = tmp_path / "pw"
    secret.write_bytes(content)
    found = errors(with_peer(f"passwordFile: {secret}\n"))
    assert found == [f"peers[0].passwordFile: {secret} {problem} (line 7)"]
    if len(content) > 2:
        assert content.decode(errors="replace")[:6] not in found[0]


def test_password_file_must_be_a_regular_file(tmp_path):
    assert errors(with_peer(f"passwordFile: {tmp_path}\n")) == [
        f"peers[0].passwordFile: {tmp_path} is not a regular file (line 7)"]


def test_password_env(monkeypatch):
    monkeypatch.setenv("TOR_A_PASSWORD", SECRET)
    config = load_config_text(with_peer("passwordEnv: TOR_A_PASSWORD\n"))
    assert config.peers[0].password_env == "TOR_A_PASSWORD"
    monkeypatch.setenv("TOR_A_PASSWORD", "")
    assert errors(with_peer("passwordEnv: TOR_A_PASSWORD\n")) == [
        "peers[0].passwordEnv: environment variable TOR_A_PASSWORD is empty (line 7)"]
    assert errors(with_peer("passwordEnv: 'TOR-A'\n")) == [
        "peers[0].passwordEnv: must be the name of an environment variable holding the password "
        "(the value is not shown: it may be the password itself) (line 7)"]


def test_password_file_and_env_together_is_an_error(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text(SECRET)
    monkeypatch.setenv("TOR_A_PASSWORD", SECRET)
    assert errors(with_peer(f"passwordFile: {secret}\npasswordEnv: TOR_A_PASSWORD\n")) == [
        "peers[0]: set passwordFile or passwordEnv, not both (line 4)"]


# --- robustness: any YAML gives a Config or a ConfigError, never another exception -----

BASE = yaml.safe_load(DESIGN_EXAMPLE)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["10.0.0.1", "2001:db8::/64", "1:2", "1:2:3", "auto",
                                                           "10.0.0.0/33", "a-b", "[::]:1", "primary"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, prefix + (index,))


PATHS = [p for p in _paths(BASE) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values)
def test_any_mutation_gives_a_config_or_a_config_error(path, value):
    import copy
    document = copy.deepcopy(BASE)
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    try:
        load_config_text(yaml.safe_dump(document))
    except ConfigError as error:
        assert error.issues and all(isinstance(issue, ConfigIssue) for issue in error.issues)


def test_tier_hysteresis_fields_load_and_bad_values_name_their_path():
    config = load_config_text(MINIMAL + "tiers:\n  primary: {med: 100, minReadyEndpoints: 3, riseSeconds: 30}\n")
    assert config.tiers[Tier.PRIMARY].min_ready_endpoints == 3 and config.tiers[Tier.PRIMARY].rise_seconds == 30.0
    assert config.tiers[Tier.SECONDARY].min_ready_endpoints == 1 and config.tiers[Tier.SECONDARY].rise_seconds == 0
    found = errors(MINIMAL + "tiers:\n  primary: {minReadyEndpoints: 0, riseSeconds: -1}\n")
    assert any(e.startswith("tiers.primary.minReadyEndpoints") for e in found), found
    assert any(e.startswith("tiers.primary.riseSeconds") for e in found), found


def test_cluster_maintenance_is_none_drain_or_withdraw():
    assert load_config_text(MINIMAL).cluster.maintenance is None
    for written, value in (("none", None), ("drain", "drain"), ("withdraw", "withdraw")):
        text = MINIMAL.replace("cluster: {name: east}", f"cluster: {{name: east, maintenance: {written}}}")
        assert load_config_text(text).cluster.maintenance == value
    found = errors(MINIMAL.replace("cluster: {name: east}", "cluster: {name: east, maintenance: off}"))
    assert len(found) == 1 and found[0].startswith("cluster.maintenance"), found


def test_shared_pool_reservations_and_store(tmp_path):
    kubeconfig = tmp_path / "records.kubeconfig"
    config = load_config_text(f"""
cluster: {{name: west, defaultTier: secondary}}
speaker: {{myASN: 64512}}
sharedStore: {{kubeconfig: {kubeconfig}, namespace: bgpspeaker-records}}
pools:
  - name: vip
    addresses: [203.0.113.0/28]
    shared: true
    reservations:
      - {{address: 203.0.113.5, service: default/shop}}
""")
    pool = config.pools[0]
    assert pool.shared and pool.reservations == ((ipaddress.ip_address("203.0.113.5"), "default/shop"),)
    assert config.shared_store.kubeconfig == str(kubeconfig) and config.shared_store.namespace == "bgpspeaker-records"
    # a shared pool with a store raises no "stands in for others" warning
    assert not [w for w in config_warnings(config) if w.path.endswith(".shared")]


def test_shared_store_kubeconfig_must_be_absolute():
    with pytest.raises(ConfigError) as error:
        load_config_text("cluster: {name: east}\nspeaker: {myASN: 64512}\n"
                         "sharedStore: {kubeconfig: records.kubeconfig}\n")
    assert "sharedStore.kubeconfig: 'records.kubeconfig' must be an absolute path" in str(error.value)


def test_fleet_warnings_name_pools_several_clusters_announce_without_one_store(tmp_path):
    from bgpspeaker.config.warn import fleet_warnings

    east = load_config_text("cluster: {name: east}\nspeaker: {myASN: 64512}\n"
                            "pools: [{name: vip, addresses: [203.0.113.0/28]}]\n")
    west = load_config_text("cluster: {name: west}\nspeaker: {myASN: 64512}\n"
                            "pools: [{name: other, addresses: [203.0.113.8/29]}]\n")
    found = [str(w) for w in fleet_warnings([("east.yaml", east), ("west.yaml", west)])]
    assert found == ["west.yaml: pools[0]: pool other overlaps pool vip of east.yaml, and they are not both "
                     "shared: mark them shared, with one sharedStore"]
