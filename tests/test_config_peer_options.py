"""Per-peer timers, per-peer graceful restart and MetalLB-shaped node selectors.

What ExaBGP 5.0.15 cannot do is refused by the loader with the reason (keepaliveTime other
than a third of holdTime, connectTime), never accepted and ignored.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpspeaker.config.load import ConfigError, config_warnings, load_config_text
from bgpspeaker.config.schema import (
    ClusterConfig, Config, ExabgpConfig, LabelRequirement, LabelSelector, PeerConfig, SpeakerConfig, may_overlap,
)
from bgpspeaker.exabgp.render import render_config, selected_peers
from bgpspeaker.model import NodeView, freeze_pairs

HEAD = """\
cluster: {name: east}
speaker: {myASN: 64512}
pools:
  - {name: vip, addresses: [203.0.113.0/28]}
peers:
"""


def load(peers: str, extra: str = ""):
    return load_config_text(HEAD + peers + extra)


def errors(peers: str, extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(peers, extra)
    return [str(issue) for issue in caught.value.issues]


def test_timers_and_graceful_restart_are_read():
    peer = load("  - {name: tor, address: 10.0.0.1, asn: 64500, holdTime: 9, keepaliveTime: 3, "
                "gracefulRestart: 30}\n").peers[0]
    assert (peer.hold_time, peer.keepalive_time, peer.graceful_restart) == (9, 3, 30)
    default = load("  - {name: tor, address: 10.0.0.1, asn: 64500}\n").peers[0]
    assert (default.keepalive_time, default.graceful_restart) == (None, None)


def test_keepalive_other_than_a_third_of_the_hold_time_is_refused_with_what_exabgp_does():
    assert errors("  - {name: tor, address: 10.0.0.1, asn: 64500, holdTime: 90, keepaliveTime: 10}\n") == [
        "peers[0].keepaliveTime: ExaBGP 5.0 sends keepalives every third of the hold time and cannot be told "
        "otherwise: with holdTime 90 that is 30; write 30, or set holdTime to 30, or leave keepaliveTime out (line 6)"]
    # the default holdTime (90) counts when holdTime is not written; 0 only with holdTime 0
    assert "that is 30" in errors("  - {name: tor, address: 10.0.0.1, asn: 64500, keepaliveTime: 3}\n")[0]
    load("  - {name: tor, address: 10.0.0.1, asn: 64500, holdTime: 0, keepaliveTime: 0}\n")
    load("  - {name: tor, address: 10.0.0.1, asn: 64500, holdTime: 10, keepaliveTime: 3}\n")  # int(10 / 3)


def test_connect_time_is_refused_naming_exabgps_own_schedule():
    (message,) = errors("  - {name: tor, address: 10.0.0.1, asn: 64500, connectTime: 5}\n")
    assert message.startswith("peers[0].connectTime: ExaBGP 5.0 has no connect-retry setting")
    assert "at most 60" in message and "remove connectTime" in message


def test_peer_graceful_restart_is_bounded_like_the_global_one():
    assert errors("  - {name: tor, address: 10.0.0.1, asn: 64500, gracefulRestart: 5000}\n") == [
        "peers[0].gracefulRestart: must be 0..4095, got 5000 (line 6)"]


def test_node_selectors_in_metallbs_shape():
    peer = load("""\
  - name: tor
    address: 10.0.0.1
    asn: 64500
    nodeSelectors:
      - matchLabels: {rack: r1}
        matchExpressions:
          - {key: zone, operator: In, values: [z2, z1]}
          - {key: maintenance, operator: DoesNotExist}
      - matchExpressions:
          - {key: edge, operator: Exists}
          - {key: rack, operator: NotIn, values: [r9]}
""").peers[0]
    assert peer.node_selectors == (
        LabelSelector((("rack", "r1"),), (LabelRequirement("zone", "In", ("z1", "z2")),
                                          LabelRequirement("maintenance", "DoesNotExist"))),
        LabelSelector((), (LabelRequirement("edge", "Exists"), LabelRequirement("rack", "NotIn", ("r9",)))))
    selects = [peer.selects(freeze_pairs(labels)) for labels in (
        {"rack": "r1", "zone": "z1"},                      # first selector
        {"rack": "r1", "zone": "z1", "maintenance": ""},    # DoesNotExist fails; second needs edge
        {"rack": "r1", "zone": "z3"},                       # not In
        {"edge": "", "rack": "r2"},                         # second selector
        {"edge": "", "rack": "r9"},                         # NotIn fails
        {"edge": ""},                                       # NotIn holds when the label is absent
    )]
    assert selects == [True, False, False, True, False, True]


def test_empty_node_selectors_select_every_node():
    peer = load("  - {name: tor, address: 10.0.0.1, asn: 64500, nodeSelectors: []}\n").peers[0]
    assert peer.selects(freeze_pairs({"any": "thing"})) and peer.selects(())


def test_bad_selectors_name_each_field():
    assert errors("""\
  - name: tor
    address: 10.0.0.1
    asn: 64500
    nodeSelector: {rack: r1}
    nodeSelectors:
      - matchExpressions:
          - {key: rack, operator: Exist}
          - {key: zone, operator: In}
          - {key: zone, operator: Exists, values: [z1]}
          - {operator: In, values: [x]}
          - {key: "bad key!", operator: NotIn, values: [x]}
      - {matchLabel: {rack: r1}}
""") == [
        "peers[0].nodeSelectors: set nodeSelector (matchLabels) or nodeSelectors, not both (line 11)",
        "peers[0].nodeSelectors[0].matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist, "
        "got 'Exist' (line 12)",
        "peers[0].nodeSelectors[0].matchExpressions[1].values: must list at least one value for operator In (line 13)",
        "peers[0].nodeSelectors[0].matchExpressions[2].values: must be empty for operator Exists (line 14)",
        "peers[0].nodeSelectors[0].matchExpressions[3].key: required field is missing (line 15)",
        "peers[0].nodeSelectors[0].matchExpressions[4].key: 'bad key!' is not a label key ([prefix/]name) (line 16)",
        "peers[0].nodeSelectors[1].matchLabel: unknown field (did you mean matchLabels?) (line 17)",
    ]


def test_same_address_needs_selectors_that_cannot_both_match():
    two = "  - {{name: a, address: 10.0.0.1, asn: 64500, {}}}\n  - {{name: b, address: 10.0.0.1, asn: 64500, {}}}\n"
    load(two.format("nodeSelectors: [{matchExpressions: [{key: rack, operator: In, values: [r1, r2]}]}]",
                    "nodeSelectors: [{matchExpressions: [{key: rack, operator: NotIn, values: [r1, r2]}]}]"))
    load(two.format("nodeSelectors: [{matchExpressions: [{key: edge, operator: Exists}]}]",
                    "nodeSelectors: [{matchExpressions: [{key: edge, operator: DoesNotExist}]}]"))
    load(two.format("nodeSelector: {rack: r1}", "nodeSelectors: [{matchLabels: {rack: r2}}]"))
    for a, b in (("nodeSelectors: [{matchExpressions: [{key: rack, operator: Exists}]}]", "nodeSelector: {rack: r2}"),
                 ("nodeSelectors: [{matchLabels: {rack: r1}}, {matchLabels: {rack: r2}}]", "nodeSelector: {rack: r2}"),
                 ("nodeSelectors: [{matchExpressions: [{key: rack, operator: NotIn, values: [r1]}]}]",
                  "nodeSelector: {zone: z1}")):
        assert errors(two.format(a, b)) == [
            "peers[1].address: 10.0.0.1 is already the address of peers[0] "
            "(give them nodeSelectors that cannot match the same node) (line 7)"]


_KEYS, _VALUES = ("a", "b"), ("1", "2", "3")
requirements = st.one_of(
    st.builds(LabelRequirement, st.sampled_from(_KEYS), st.sampled_from(("In", "NotIn")),
              st.lists(st.sampled_from(_VALUES), min_size=1, max_size=2, unique=True).map(tuple)),
    st.builds(LabelRequirement, st.sampled_from(_KEYS), st.sampled_from(("Exists", "DoesNotExist"))))
selectors = st.builds(LabelSelector,
                      st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(_VALUES), max_size=1).map(freeze_pairs),
                      st.lists(requirements, max_size=3).map(tuple))
# Every labelling of the keys over the values, or without the label: enough to witness any overlap.
_ALL_LABELS = [{k: v for k, v in zip(_KEYS, combo) if v is not None}
               for combo in itertools.product((None, *_VALUES, "other"), repeat=len(_KEYS))]


@settings(max_examples=400, deadline=None)
@given(selectors, selectors)
def test_may_overlap_is_exact(a, b):
    witnessed = any(a.matches(labels) and b.matches(labels) for labels in _ALL_LABELS)
    assert may_overlap(a, b) == witnessed


NODE = NodeView(name="node-1", labels=freeze_pairs({"rack": "r1"}), addresses=(("InternalIP", "10.0.0.10"),))


def _config(*peers: PeerConfig, gr: int = 120, shutdown: str = "withdraw") -> Config:
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512, shutdown=shutdown),
                  peers=peers, exabgp=ExabgpConfig(graceful_restart=gr))


def test_per_peer_graceful_restart_overrides_the_global_value_in_exabgps_config():
    ip = ipaddress.ip_address
    config = _config(PeerConfig("a", ip("10.0.0.1"), 64500, graceful_restart=30),
                     PeerConfig("b", ip("10.0.0.2"), 64500),
                     PeerConfig("c", ip("10.0.0.3"), 64500, graceful_restart=0), gr=120)
    text = render_config(config, NODE, "/run/x.sock", mask_secrets=True, python="/usr/bin/python3")
    blocks = text.split("\nneighbor ")[1:]
    assert [("graceful-restart 30;" in b, "graceful-restart 120;" in b, "graceful-restart" in b) for b in blocks] == [
        (True, False, True), (False, True, True), (False, False, False)]


def test_expressions_choose_the_rendered_peers():
    ip = ipaddress.ip_address
    config = _config(PeerConfig("a", ip("10.0.0.1"), 64500, node_selectors=(
                         LabelSelector(match_expressions=(LabelRequirement("rack", "In", ("r1", "r2")),)),)),
                     PeerConfig("b", ip("10.0.0.2"), 64500, node_selectors=(
                         LabelSelector(match_expressions=(LabelRequirement("rack", "Exists"),
                                                          LabelRequirement("rack", "NotIn", ("r1",)))),)))
    assert [p.name for _, p in selected_peers(config, NODE)] == ["a"]


def _graceful_warnings(config: Config) -> list[str]:
    return [w.path for w in config_warnings(config) if w.path == "speaker.shutdown" or "graceful" in w.path]


def test_keep_warns_about_each_peer_without_graceful_restart():
    ip = ipaddress.ip_address
    config = _config(PeerConfig("a", ip("10.0.0.1"), 64500, graceful_restart=0),
                     PeerConfig("b", ip("10.0.0.2"), 64500), gr=120, shutdown="keep")
    assert _graceful_warnings(config) == ["peers[0].gracefulRestart"]
    # the global 0 no longer matters when every peer sets its own time
    config = _config(PeerConfig("a", ip("10.0.0.1"), 64500, graceful_restart=60), gr=0, shutdown="keep")
    assert _graceful_warnings(config) == []
