"""Issue 14's secrets items, without a network: ExaBGP's config is private from its first byte,
its environment holds no password, and the regexes that guard config text match whole strings."""

from __future__ import annotations

import ipaddress
import os
import stat

import pytest

from bgpspeaker.config.schema import ClusterConfig, Config, PeerConfig, SpeakerConfig
from bgpspeaker.exabgp import commands
from bgpspeaker.exabgp.driver import child_environment, write_private
from bgpspeaker.exabgp.render import RenderError, render_config
from bgpspeaker.model import NodeView

NODE = NodeView("node-a", addresses=(("InternalIP", "10.0.0.2"),))


def config(**peer) -> Config:
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512),
                  peers=(PeerConfig(**{"name": "tor-a", "address": ipaddress.ip_address("10.0.0.1"), "asn": 64500,
                                       **peer}),))


@pytest.fixture
def open_umask():
    old = os.umask(0)  # the worst case: a file created without a mode would be 0666
    yield
    os.umask(old)


def test_exabgp_config_is_created_0600_never_chmodded_afterwards(tmp_path, monkeypatch, open_umask):
    """Opened with its mode, not chmod()ed after writing: between the two the MD5 secrets were
    world-readable. chmod is made to fail here, so only a file born 0600 passes."""
    def no_chmod(*args, **kwargs):
        raise AssertionError("chmod after the fact: the file was readable by others meanwhile")
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    target = tmp_path / "exabgp.conf"
    target.write_text("old")
    target_mode = stat.S_IMODE(target.stat().st_mode)
    assert target_mode == 0o666  # the old file was world-readable (umask 0)
    stale = tmp_path / f".exabgp.conf.{os.getpid()}.tmp"
    stale.write_text("left by a crash, world-readable")
    write_private(target, 'md5-password "s3cret";\n')
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == 'md5-password "s3cret";\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exabgp.conf"]


def test_exabgp_environment_holds_no_password(monkeypatch):
    environ = {"PATH": "/usr/bin", "TOR_A_PASSWORD": "s3cret", "UNRELATED": "x"}
    env = child_environment(environ, config(password_env="TOR_A_PASSWORD"))
    assert "TOR_A_PASSWORD" not in env and "s3cret" not in env.values()
    assert env["PATH"] == "/usr/bin" and env["UNRELATED"] == "x" and env["exabgp_api_ack"] == "true"


def test_a_path_with_a_trailing_newline_cannot_reach_the_config():
    """`^...$` with match() accepted "path\\n" (`$` matches before a final newline)."""
    with pytest.raises(RenderError, match="plain path"):
        render_config(config(), NODE, "/run/bgpspeaker/exabgp.sock\n", mask_secrets=True)
    with pytest.raises(RenderError, match="plain path"):
        render_config(config(), NODE, "/run/x.sock", mask_secrets=True, python="/usr/bin/python3\n")


def test_a_peer_name_with_a_trailing_newline_gets_no_description_line():
    text = render_config(config(name="tor-a\n"), NODE, "/run/x.sock", mask_secrets=True)
    assert "description" not in text
    assert 'description "tor-a";' in render_config(config(), NODE, "/run/x.sock", mask_secrets=True)


def test_command_parser_matches_whole_lines_only():
    line = commands.eor_line(ipaddress.ip_address("10.0.0.1"), "ipv4 unicast")
    assert commands.parse_line(line).action == "eor"
    with pytest.raises(ValueError):
        commands.parse_line(line + "\n")
