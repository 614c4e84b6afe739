"""BFD without a network: the config's bfdProfiles, bfdd's rendered config, the state
tracker fed with bfdd's own JSON (as FRR 8.4.4 prints it), and `bgpspeaker status`."""

from __future__ import annotations

import pytest

from bgpspeaker.bfd.render import bfd_peers, render_bfdd_config
from bgpspeaker.bfd.state import NOT_RUNNING, Tracker, parse_sessions
from bgpspeaker.client import format_status
from bgpspeaker.config.load import ConfigError, load_config_text
from bgpspeaker.config.schema import BfdProfile
from bgpspeaker.exabgp.render import RenderError
from bgpspeaker.model import NodeView

BASE = """\
cluster: {name: east}
speaker: {myASN: 64512}
pools:
  - {name: vip, addresses: [203.0.113.0/28]}
"""
NODE = NodeView("n1", labels=(("rack", "r1"),), addresses=(("InternalIP", "10.0.0.2"), ("InternalIP", "fd00::2")))


def load(extra: str):
    return load_config_text(BASE + extra)


def errors(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(extra)
    return [str(i) for i in caught.value.issues]


# --- config ------------------------------------------------------------------------------

def test_metallb_shaped_profile_loads_with_metallb_defaults():
    config = load("""\
peers:
  - {name: tor-a, address: 10.0.0.1, asn: 64500, bfdProfile: fast}
  - {name: tor-b, address: 10.0.0.254, asn: 64500}
bfdProfiles:
  - name: fast
    receiveInterval: 100
    transmitInterval: 100
    detectMultiplier: 3
    echoMode: false
    passiveMode: false
    minimumTtl: 254
  - {name: defaults}
""")
    assert config.peer("tor-a").bfd_profile == "fast" and config.peer("tor-b").bfd_profile is None
    assert config.bfd_profile("fast") == BfdProfile("fast", 100, 100, 3, False, 50, False, 254)
    assert config.bfd_profile("defaults") == BfdProfile("defaults", 300, 300, 3, False, 50, False, 254)


def test_profile_errors_have_field_paths():
    assert errors("""\
peers:
  - {name: tor-a, address: 10.0.0.1, asn: 64500, bfdProfile: Fast}
bfdProfiles:
  - {name: fast, receiveInterval: 9, echoInterval: 60001, minimumTtl: 255, passiveMode: 1, holdTime: 3}
""") == [
        "peers[0].bfdProfile: 'Fast' is not a DNS label (lowercase letters, digits and '-', at most 63, "
        "starting and ending with a letter or digit) (line 6)",
        "bfdProfiles[0].receiveInterval: must be 10..60000, got 9 (line 8)",
        "bfdProfiles[0].echoInterval: must be 10..60000, got 60001 (line 8)",
        "bfdProfiles[0].minimumTtl: must be 1..254, got 255 (line 8)",
        "bfdProfiles[0].passiveMode: must be true or false, got integer 1 (line 8)",
        "bfdProfiles[0].holdTime: unknown field (expected one of: name, receiveInterval, transmitInterval, "
        "detectMultiplier, echoMode, echoInterval, passiveMode, minimumTtl) (line 8)",
    ]


def test_a_bad_profile_does_not_also_make_its_references_unknown():
    # the profile's name is bad: the peer naming it gets no second, misleading error
    assert errors("""\
peers:
  - {name: tor-a, address: 10.0.0.1, asn: 64500, bfdProfile: fast}
bfdProfiles:
  - {name: Fast}
""") == ["bfdProfiles[0].name: 'Fast' is not a DNS label (lowercase letters, digits and '-', at most 63, "
         "starting and ending with a letter or digit) (line 8)"]
    assert errors("""\
peers:
  - {name: tor-a, address: 10.0.0.1, asn: 64500, bfdProfile: fast}
bfdProfiles: {name: fast}
""") == ["bfdProfiles: must be a list, got a mapping (line 7)"]


def test_reference_without_any_profile():
    assert errors("peers:\n  - {name: tor-a, address: 10.0.0.1, asn: 64500, bfdProfile: fast}\n") == [
        "peers[0].bfdProfile: unknown BFD profile 'fast' (bfdProfiles: none defined) (line 6)"]


# --- rendering ---------------------------------------------------------------------------

PEERS = """\
peers:
  - {name: tor-a, address: 10.0.0.1, asn: 64500, bfdProfile: fast}
  - {name: tor-v6, address: "fd00::1", asn: 64500, bfdProfile: fast}
  - {name: far, address: 192.0.2.1, asn: 64500, ebgpMultiHop: 3, sourceAddress: 10.0.0.9, bfdProfile: fast}
  - {name: plain, address: 10.0.0.3, asn: 64500}
  - {name: other-rack, address: 10.0.0.4, asn: 64500, bfdProfile: slow, nodeSelector: {rack: r2}}
bfdProfiles:
  - {name: fast, receiveInterval: 100, transmitInterval: 150, detectMultiplier: 4, minimumTtl: 250}
  - {name: slow, echoMode: true, echoInterval: 70, passiveMode: true}
"""


def test_render_one_session_per_bfd_peer_of_this_node():
    peers = bfd_peers(load(PEERS), NODE)
    assert [(p.name, str(p.local), p.multihop) for p in peers] == [
        ("tor-a", "10.0.0.2", False), ("tor-v6", "fd00::2", False), ("far", "10.0.0.9", True)]
    assert render_bfdd_config(peers) == """\
! rendered by bgpspeaker: edits are overwritten
bfd
 profile fast
  receive-interval 100
  transmit-interval 150
  detect-multiplier 4
 exit
 profile fast-multihop
  receive-interval 100
  transmit-interval 150
  detect-multiplier 4
  minimum-ttl 250
 exit
 peer 192.0.2.1 multihop local-address 10.0.0.9
  profile fast-multihop
 exit
 peer 10.0.0.1 local-address 10.0.0.2
  profile fast
 exit
 peer fd00::1 local-address fd00::2
  profile fast
 exit
exit
"""


def test_render_echo_and_passive_mode():
    node = NodeView("n2", labels=(("rack", "r2"),), addresses=(("InternalIP", "10.0.0.5"),))
    text = render_bfdd_config(bfd_peers(load(PEERS.replace("\"fd00::1\"", "10.0.0.7")), node))
    assert " profile slow\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n" \
           "  echo-mode\n  echo transmit-interval 70\n  echo receive-interval 70\n  passive-mode\n exit\n" in text
    assert " peer 10.0.0.4 local-address 10.0.0.5\n  profile slow\n" in text


def test_no_bfd_profile_no_peers():
    assert bfd_peers(load("peers:\n  - {name: tor-a, address: 10.0.0.1, asn: 64500}\n"), NODE) == ()


def test_a_node_without_an_address_of_the_family_is_a_render_error():
    node = NodeView("v4only", addresses=(("InternalIP", "10.0.0.2"),))
    with pytest.raises(RenderError, match=r"peers\[1\]\.sourceAddress"):
        bfd_peers(load(PEERS), node)


# --- state -------------------------------------------------------------------------------

def peers_json(status: str, diagnostic: str = "ok", remote: str = "ok", seconds: int = 5) -> list[dict]:
    row = {"multihop": False, "peer": "10.0.0.1", "local": "10.0.0.2", "vrf": "default", "id": 1, "remote-id": 2,
           "passive-mode": False, "status": status, "diagnostic": diagnostic, "remote-diagnostic": remote,
           "receive-interval": 100, "transmit-interval": 100, "detect-multiplier": 3}
    row["uptime" if status == "up" else "downtime"] = seconds
    return [row]


def counters_json(ups: int, downs: int) -> list[dict]:
    return [{"multihop": False, "peer": "10.0.0.1", "local": "10.0.0.2", "vrf": "default",
             "control-packet-input": 26, "control-packet-output": 1019, "session-up": ups, "session-down": downs,
             "zebra-notifications": 1}]


def test_parse_sessions_from_bfdd_json():
    sessions = parse_sessions(peers_json("down", "control detection time expired", seconds=7), counters_json(2, 2))
    s = sessions["10.0.0.1"]
    assert (s.status, s.diagnostic, s.seconds_in_status, s.ups, s.downs) == (
        "down", "control detection time expired", 7, 2, 2)
    assert parse_sessions({"error": "x"}, None) == {} and parse_sessions([None, {"peer": 3}], []) == {}


def test_tracker_counts_every_transition_and_says_why_down():
    t = Tracker(["10.0.0.1"])
    assert t.states["10.0.0.1"].why_down == NOT_RUNNING
    assert t.observe(parse_sessions(peers_json("down", seconds=1), counters_json(0, 0)), 100.0) == {}
    assert t.states["10.0.0.1"].why_down == "never came up"
    assert t.observe(parse_sessions(peers_json("up", seconds=0), counters_json(1, 0)), 101.0) == {"10.0.0.1": 1}
    state = t.states["10.0.0.1"]
    assert (state.up, state.since, state.transitions, state.why_down) == (True, 101.0, 1, None)
    # a flap shorter than a poll: the status looks unchanged, bfdd's counters tell
    assert t.observe(parse_sessions(peers_json("up", seconds=0), counters_json(2, 1)), 102.0) == {"10.0.0.1": 2}
    assert t.states["10.0.0.1"].since == 101.0 and t.states["10.0.0.1"].transitions == 3
    t.observe(parse_sessions(peers_json("down", "control detection time expired"), counters_json(2, 2)), 103.0)
    state = t.states["10.0.0.1"]
    assert (state.status, state.why_down, state.since, state.transitions) == (
        "down", "control detection time expired", 103.0, 4)
    t.observe(parse_sessions(peers_json("down", "ok", "neighbor signaled session down"), counters_json(2, 2)), 104.0)
    assert t.states["10.0.0.1"].why_down == "peer says: neighbor signaled session down"


def test_tracker_survives_a_bfdd_restart():
    t = Tracker(["10.0.0.1"])
    t.observe(parse_sessions(peers_json("up"), counters_json(3, 2)), 10.0)
    assert t.states["10.0.0.1"].transitions == 5
    t.observe(None, 11.0)  # bfdd gone: down, and that is a transition
    assert (t.states["10.0.0.1"].status, t.states["10.0.0.1"].why_down, t.states["10.0.0.1"].transitions) == (
        "down", NOT_RUNNING, 6)
    t.observe(parse_sessions(peers_json("up", seconds=0), counters_json(1, 0)), 12.0)  # the new bfdd's counters
    assert t.states["10.0.0.1"].transitions == 7 and t.states["10.0.0.1"].since == 12.0


def test_tracker_first_sight_takes_bfdds_age_and_retarget_keeps_history():
    t = Tracker(["10.0.0.1"])
    t.observe(parse_sessions(peers_json("up", seconds=30), counters_json(1, 0)), 100.0)
    assert t.states["10.0.0.1"].since == 70.0
    t.retarget(["10.0.0.1", "10.0.0.9"])
    assert t.states["10.0.0.1"].transitions == 1 and t.states["10.0.0.9"].status == "down"
    t.retarget([])
    assert t.states == {}


# --- bgpspeaker status --------------------------------------------------------------------

def test_status_shows_bfd_per_peer():
    status = {"node": "n1", "cluster": "east", "ready": True, "drain": None, "leader": False, "kubernetes": {},
              "peers": [{"name": "tor-a", "address": "10.0.0.1", "asn": 64500, "up": False,
                         "lastDownReason": "hold timer", "bfd": {"status": "down", "up": False,
                                                                 "whyDown": "control detection time expired",
                                                                 "since": 1.0, "transitions": 4}},
                        {"name": "tor-b", "address": "10.0.0.2", "asn": 64500, "up": True, "bfd": None}],
              "routes": []}
    text = format_status(status)
    assert "down (hold timer); bfd down (control detection time expired), 4 transitions" in text
    assert "tor-b" in text and "bfd" not in text.split("tor-b")[1].splitlines()[0]


# --- damping -------------------------------------------------------------------------------

def test_damping_holds_from_the_third_quick_flap_and_releases_when_the_penalty_decays():
    from bgpspeaker.bfd.state import Damping, FlapState

    d = Damping()
    s = FlapState().flapped(d, 0.0)
    assert not s.held and s.penalty == 1000
    s = s.flapped(d, 6.0)
    assert not s.held  # two flaps 6 s apart: 1000 * 2^(-6/30) + 1000 = 1870
    s = s.flapped(d, 12.0)
    assert s.held  # the third within ~20 s
    until = s.held_until(d)
    assert 12.0 + 30 < until < 12.0 + 60
    assert s.tick(d, until - 1).held and not s.tick(d, until + 1).held


def test_damping_spaced_flaps_never_hold_and_a_hold_is_bounded():
    from bgpspeaker.bfd.state import Damping, FlapState

    d = Damping()
    s = FlapState()
    for minute in range(10):  # a flap a minute: the penalty decays to 250 + 1000 between them
        s = s.flapped(d, minute * 60.0)
        assert not s.held
    for i in range(50):  # a storm: the penalty stops at the ceiling, the hold at max_hold
        s = s.flapped(d, 1000.0 + i * 0.1)
    assert s.held and s.held_until(d) - s.at <= d.max_hold + 1e-6


def test_tracker_reports_new_downs_from_bfdds_counters_not_from_our_own_stops():
    t = Tracker(["10.0.0.1"])
    t.observe(parse_sessions(peers_json("up"), counters_json(1, 0)), 1.0)
    assert t.new_downs == {}
    t.observe(parse_sessions(peers_json("up"), counters_json(2, 1)), 2.0)  # a flap between polls
    assert t.new_downs == {"10.0.0.1": 1}
    t.observe(None, 3.0)  # bfdd stopped (by us, or it died): not a flap of the session
    assert t.new_downs == {}
    t.observe(parse_sessions(peers_json("down", "control detection time expired"), counters_json(1, 1)), 4.0)
    assert t.new_downs == {"10.0.0.1": 1}  # a new bfdd's own count
