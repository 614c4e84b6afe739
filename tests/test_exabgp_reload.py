"""reload.py: which config changes ExaBGP's live reload applies per peer, and which restart it."""

from __future__ import annotations

import dataclasses
import ipaddress

from bgpspeaker.config.schema import ClusterConfig, Config, ExabgpConfig, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp.reload import ReloadPlan, loaded, plan_reload
from bgpspeaker.exabgp.render import render_config
from bgpspeaker.model import NodeView, freeze_pairs

A = ipaddress.ip_address
NODE = NodeView(name="node-1", labels=freeze_pairs({"rack": "r1"}), addresses=(("InternalIP", "10.0.0.10"),))
TOR_A = PeerConfig("tor-a", A("10.0.0.1"), 64500)
TOR_B = PeerConfig("tor-b", A("10.0.0.2"), 64500)


def text(*peers: PeerConfig, gr: int = 0, router_id: str = "10.0.0.10", asn: int = 64512,
         socket: str = "/run/x/exabgp.sock", node: NodeView = NODE) -> str:
    config = Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=asn, router_id=A(router_id)),
                    peers=peers, exabgp=ExabgpConfig(graceful_restart=gr))
    return render_config(config, node, socket, mask_secrets=True, python="/usr/bin/python3")


BASE = text(TOR_A, TOR_B)


def test_per_peer_changes_are_reloads_naming_only_that_peer():
    for change in (dict(hold_time=30), dict(port=1179), dict(asn=64501), dict(ebgp_multihop=2),
                   dict(source_address=A("10.0.0.11")), dict(password_file="/etc/x"), dict(graceful_restart=30)):
        assert plan_reload(BASE, text(TOR_A, dataclasses.replace(TOR_B, **change))) == \
            ReloadPlan(changed=("10.0.0.2",)), change
    assert plan_reload(BASE, text(TOR_A)) == ReloadPlan(removed=("10.0.0.2",))
    assert plan_reload(text(TOR_A), BASE) == ReloadPlan(added=("10.0.0.2",))
    # a node label that deselects a peer is the same as removing it
    selective = dataclasses.replace(TOR_B, node_selector=freeze_pairs({"rack": "r2"}))
    assert plan_reload(BASE, text(TOR_A, selective)) == ReloadPlan(removed=("10.0.0.2",))
    assert plan_reload(BASE, BASE) == ReloadPlan()
    # the global graceful restart time changes every peer: a reload that re-opens them all
    assert plan_reload(BASE, text(TOR_A, TOR_B, gr=120)) == ReloadPlan(changed=("10.0.0.1", "10.0.0.2"))


def test_changes_every_session_shares_or_ours_restart():
    for other, why in ((text(TOR_A, TOR_B, router_id="10.0.0.99"), "router ID"),
                       (text(TOR_A, TOR_B, asn=64513), "router ID"),
                       (text(TOR_A, TOR_B, socket="/run/y/exabgp.sock"), "relay process"),
                       (text(TOR_A, dataclasses.replace(TOR_B, name="tor-c")), "renamed")):
        plan = plan_reload(BASE, other)
        assert plan.restart is not None and why in plan.restart, (why, plan)


def test_loaded_compares_exabgps_printout_with_our_blocks():
    shown = ["neighbor 10.0.0.1 {", '  description "tor-a";', "  router-id 10.0.0.10;", "  host-name None;",
             "  local-address 10.0.0.10;", "  local-as 64512;", "  peer-as 64500;", "  hold-time 90;",
             "  connect 179;", "  capability {", "    asn4 enable;", "  }", "}"]
    assert loaded(text(TOR_A), shown)
    assert not loaded(text(dataclasses.replace(TOR_A, hold_time=30)), shown)  # the old config still runs
    assert not loaded(BASE, shown)  # tor-b not there yet
    assert not loaded(text(), shown)  # tor-a still there
