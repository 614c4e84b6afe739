"""ExaBGP config rendering: exact text, peer selection, secrets, and ExaBGP's own validator."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgpspeaker.config.schema import ClusterConfig, Config, ExabgpConfig, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp.render import RenderError, exabgp_environment, render_config
from bgpspeaker.model import NodeView, freeze_pairs

A = ipaddress.ip_address
EXABGP = str(Path(sys.executable).parent / "exabgp")

NODE = NodeView(name="node-1", labels=freeze_pairs({"rack": "r1"}),
                addresses=(("InternalIP", "10.0.0.10"), ("InternalIP", "fd00::10")))


def config(*peers: PeerConfig, gr: int = 120, router_id=None) -> Config:
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512, router_id=router_id),
                  peers=peers, exabgp=ExabgpConfig(graceful_restart=gr))


def test_full_neighbor(tmp_path):
    secret = tmp_path / "tor-a.password"
    secret.write_text("s3cret-pw\n")
    cfg = config(PeerConfig("tor-a", A("10.0.0.1"), 64500, port=1179, hold_time=9, password_file=str(secret),
                            ebgp_multihop=2, node_selector=freeze_pairs({"rack": "r1"})))
    text = render_config(cfg, NODE, "/run/x/exabgp.sock", mask_secrets=False, python="/usr/bin/python3")
    assert text == """\
# bgpspeaker: ExaBGP config for node node-1 (generated; do not edit)
process bgpspeaker {
    run /usr/bin/python3 -m bgpspeaker.exabgp.relay /run/x/exabgp.sock;
    encoder json;
}

neighbor 10.0.0.1 {
    description "tor-a";
    router-id 10.0.0.10;
    local-address 10.0.0.10;
    local-as 64512;
    peer-as 64500;
    connect 1179;
    hold-time 9;
    outgoing-ttl 2;
    md5-password "s3cret-pw";
    group-updates true;
    manual-eor true;
    family {
        ipv4 unicast;
        ipv6 unicast;
    }
    capability { graceful-restart 120; }
    api { processes [ bgpspeaker ]; neighbor-changes; }
}
"""


def test_masked_secret_never_opens_the_file(tmp_path):
    cfg = config(PeerConfig("tor-a", A("10.0.0.1"), 64500, password_file=str(tmp_path / "missing")))
    text = render_config(cfg, NODE, "/run/x.sock", mask_secrets=True)
    assert 'md5-password "********";' in text
    with pytest.raises(RenderError, match=r"peers\[0\].passwordFile"):
        render_config(cfg, NODE, "/run/x.sock", mask_secrets=False)


@pytest.mark.parametrize("content", ['a"b', "a\\b", "x" * 81, "", "two\nlines"])
def test_bad_password_content_is_refused_without_showing_it(tmp_path, content):
    secret = tmp_path / "pw"
    secret.write_text(content)
    cfg = config(PeerConfig("tor-a", A("10.0.0.1"), 64500, password_file=str(secret)))
    with pytest.raises(RenderError) as info:
        render_config(cfg, NODE, "/run/x.sock", mask_secrets=False)
    assert content not in str(info.value) or not content


def test_node_selector_router_id_source_address_and_families():
    cfg = config(PeerConfig("tor-a", A("10.0.0.1"), 64500, node_selector=freeze_pairs({"rack": "r2"})),
                 PeerConfig("tor-b", A("fd00::1"), 64512, source_address=A("fd00::99")),
                 gr=0, router_id=A("192.0.2.1"))
    text = render_config(cfg, NODE, "/run/x.sock", mask_secrets=True)
    assert "10.0.0.1" not in text  # selector does not match rack r1
    assert "neighbor fd00::1 {" in text and "local-address fd00::99;" in text
    assert "router-id 192.0.2.1;" in text and "graceful-restart" not in text
    v4only = NodeView(name="n", addresses=(("InternalIP", "10.0.0.10"),))
    text = render_config(config(PeerConfig("tor-a", A("10.0.0.1"), 64500)), v4only, "/run/x.sock",
                         mask_secrets=True)
    assert "ipv4 unicast;" in text and "ipv6 unicast;" not in text


def test_errors_name_the_field():
    v6only = NodeView(name="n", addresses=(("InternalIP", "fd00::10"),))
    with pytest.raises(RenderError, match="speaker.routerID"):
        render_config(config(PeerConfig("t", A("fd00::1"), 1)), v6only, "/run/x.sock", mask_secrets=True)
    with pytest.raises(RenderError, match=r"peers\[0\].sourceAddress"):
        render_config(config(PeerConfig("t", A("10.0.0.1"), 1), router_id=A("1.1.1.1")), v6only, "/run/x.sock",
                      mask_secrets=True)
    with pytest.raises(RenderError, match="relay socket"):
        render_config(config(), NODE, "/run/x.sock; run /bin/sh", mask_secrets=True)


def test_odd_peer_name_is_not_rendered():
    text = render_config(config(PeerConfig('x"; }', A("10.0.0.1"), 64500)), NODE, "/run/x.sock", mask_secrets=True)
    assert "description" not in text


def test_environment():
    env = exabgp_environment("daemon")
    assert env["exabgp_daemon_user"] == "daemon" and env["exabgp_api_ack"] == "true"
    assert env["exabgp_api_cli"] == "false" and env["exabgp_tcp_bind"] == ""
    assert env["exabgp_log_level"] == "WARNING" and env["exabgp_daemon_daemonize"] == "false"
    assert exabgp_environment()["exabgp_daemon_user"]  # the current user by default


def test_exabgp_validates_the_rendered_config(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("lab-secret")
    cfg = config(PeerConfig("tor-a", A("10.0.0.1"), 64500, hold_time=3, password_file=str(secret), ebgp_multihop=3),
                 PeerConfig("tor-b", A("fd00::1"), 64512, port=1790, hold_time=0))
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_config(cfg, NODE, str(tmp_path / "s.sock"), mask_secrets=False))
    env = dict(os.environ, **exabgp_environment())
    proc = subprocess.run([EXABGP, "validate", str(conf)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scoped_ipv6_addresses_never_reach_the_config():
    scoped = ipaddress.IPv6Address("fe80::1%eth0;}\nneighbor 6.6.6.6 {")
    for peer in (PeerConfig("t", scoped, 1), PeerConfig("t", A("fd00::1"), 1, source_address=scoped)):
        with pytest.raises(RenderError, match="scope id"):
            render_config(config(peer), NODE, "/run/x.sock", mask_secrets=True)
