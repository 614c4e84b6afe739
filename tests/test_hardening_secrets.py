"""Secrets (docs/design.md invariant 5): an MD5 password never appears in what the user-facing
commands print — `check-config` and `render-exabgp` — whether the config is right or the
password file is broken. Run through the real CLI (a subprocess), as an operator runs it.

The daemon side (logs, /status, /metrics, Events) and a real MD5 session are in
integration/test_attacks_secrets.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

OBJECTS = """\
apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  conditions: [{type: Ready, status: "True"}]
  addresses: [{type: InternalIP, address: 10.0.0.2}]
"""


def _config(peer_extra: str) -> str:
    return ("cluster: {name: east}\nspeaker: {myASN: 64512}\npeers:\n"
            f"  - {{name: tor-a, address: 10.0.0.1, asn: 64500, {peer_extra}}}\n"
            "pools:\n  - {name: p, addresses: [203.0.113.0/28]}\n")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgpspeaker", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})), timeout=60)


@pytest.fixture
def secret() -> str:
    return f"Md5-{uuid.uuid4().hex}"  # unique: a hit can only be a leak


def _leaks(secret: str, *texts: str) -> bool:
    # also partial leaks: any 8-character window of the secret
    return any(secret[i:i + 8] in text for text in texts for i in range(len(secret) - 7))


def test_check_config_and_render_never_print_the_password_file_content(tmp_path, secret):
    pw = tmp_path / "tor-a.password"
    pw.write_text(secret + "\n")
    conf = tmp_path / "speaker.yaml"
    conf.write_text(_config(f"passwordFile: {pw}"))
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS)
    check = _cli("check-config", str(conf))
    assert check.returncode == 0, check.stdout + check.stderr
    render = _cli("render-exabgp", "--config", str(conf), "--node-name", "node-a", "--objects", str(objects))
    assert render.returncode == 0, render.stderr
    assert 'md5-password "********";' in render.stdout  # the session does have a password...
    assert not _leaks(secret, check.stdout, check.stderr, render.stdout, render.stderr)  # ...never shown
    # the unmasked text (what ExaBGP runs) does hold it: the masking is real, not an empty password
    from bgpspeaker.config.load import load_config
    from bgpspeaker.exabgp.render import render_config
    from bgpspeaker.model import NodeView
    text = render_config(load_config(conf), NodeView("node-a", addresses=(("InternalIP", "10.0.0.2"),)),
                         "/run/x.sock", mask_secrets=False)
    assert f'md5-password "{secret}";' in text


def test_password_from_the_environment_is_not_printed(tmp_path, secret):
    conf = tmp_path / "speaker.yaml"
    conf.write_text(_config("passwordEnv: TOR_A_PASSWORD"))
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS)
    env = {"TOR_A_PASSWORD": secret}
    check = _cli("check-config", str(conf), env=env)
    render = _cli("render-exabgp", "--config", str(conf), "--node-name", "node-a", "--objects", str(objects), env=env)
    assert check.returncode == 0 and render.returncode == 0, check.stdout + render.stderr
    assert "********" in render.stdout
    assert not _leaks(secret, check.stdout, check.stderr, render.stdout, render.stderr)


@pytest.mark.parametrize("content, words", [
    ("{s}\nx\n", "line break"),
    ("{s}" * 4, "longer than 80 bytes"),
    ("{s}\x07", "control character"),
    ("\n", "empty"),
])
def test_broken_password_file_error_names_the_file_not_the_content(tmp_path, secret, content, words):
    pw = tmp_path / "tor-a.password"
    pw.write_text(content.format(s=secret))
    conf = tmp_path / "speaker.yaml"
    conf.write_text(_config(f"passwordFile: {pw}"))
    check = _cli("check-config", str(conf))
    assert check.returncode == 2
    assert words in check.stdout and str(pw) in check.stdout, check.stdout
    assert not _leaks(secret, check.stdout, check.stderr)


def test_password_with_a_quote_is_refused_without_showing_it(tmp_path, secret):
    pw = tmp_path / "tor-a.password"
    pw.write_text(f'{secret}"; }} neighbor 6.6.6.6 {{ peer-as 1;\n')
    conf = tmp_path / "speaker.yaml"
    conf.write_text(_config(f"passwordFile: {pw}"))
    objects = tmp_path / "objects.yaml"
    objects.write_text(OBJECTS)
    check = _cli("check-config", str(conf))
    render = _cli("render-exabgp", "--config", str(conf), "--node-name", "node-a", "--objects", str(objects))
    assert not _leaks(secret, check.stdout, check.stderr, render.stdout, render.stderr)
    # the renderer must never write it into ExaBGP's config (it would end the statement)
    from bgpspeaker.config.load import ConfigError, load_config
    from bgpspeaker.exabgp.render import RenderError, render_config
    from bgpspeaker.model import NodeView
    try:
        config = load_config(conf)
    except ConfigError:
        return  # refused at load time: fine
    with pytest.raises(RenderError) as refused:
        render_config(config, NodeView("node-a", addresses=(("InternalIP", "10.0.0.2"),)), "/run/x.sock",
                      mask_secrets=False)
    assert not _leaks(secret, str(refused.value))


@pytest.mark.parametrize("field", ["passwordFile", "passwordEnv"])
def test_password_written_in_the_wrong_field_is_not_echoed(tmp_path, secret, field):
    conf = tmp_path / "speaker.yaml"
    conf.write_text(_config(f"{field}: {secret}"))
    check = _cli("check-config", str(conf))
    assert check.returncode == 2
    assert not _leaks(secret, check.stdout, check.stderr), check.stdout
