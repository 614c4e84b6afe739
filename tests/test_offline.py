"""`bgpspeaker plan` / `explain` end to end: real subprocesses on the shipped example files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgpspeaker import offline
from bgpspeaker.model import Snapshot

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "data" / "offline_speaker.yaml"
EXAMPLE = ROOT / "configs" / "objects" / "example.yaml"
MULTI = ROOT / "configs" / "objects" / "multicluster.yaml"


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bgpspeaker", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def plan_json(config, node, objects):
    done = cli("plan", "--config", config, "--node-name", node, "--objects", objects, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_plan_json_has_exactly_the_documented_shape():
    result, _ = plan_json(CONFIG, "node-a", EXAMPLE)
    assert set(result) == {"node", "routes", "skipped"} and result["node"] == "node-a"
    keys = {"service", "prefix", "tier", "nextHop", "med", "localPref", "asPath", "communities",
            "largeCommunities", "peers"}
    for route in result["routes"]:
        assert set(route) == keys
        assert isinstance(route["med"], int) and isinstance(route["peers"], list)
    for skip in result["skipped"]:
        assert set(skip) >= {"service", "reason"}


def test_plan_json_content_on_the_example():
    result, stderr = plan_json(CONFIG, "node-a", EXAMPLE)
    routes = {(r["service"], r["prefix"], tuple(r["peers"])): r for r in result["routes"]}
    web_tor = routes[("shop/web", "203.0.113.0/32", ("tor-a",))]
    assert web_tor == {
        "service": "shop/web", "prefix": "203.0.113.0/32", "tier": "primary", "nextHop": "10.0.0.2", "med": 100,
        "localPref": None, "asPath": [64512], "communities": ["64512:1", "64512:100"],
        "largeCommunities": ["64512:1:1"], "peers": ["tor-a"],
    }
    web_rr = routes[("shop/web", "203.0.113.0/32", ("rr",))]
    assert web_rr["localPref"] == 300 and web_rr["asPath"] == []
    api6 = routes[("shop/api", "2001:db8::a/128", ("tor-a",))]
    assert api6["tier"] == "secondary" and api6["nextHop"] == "fd00::2" and api6["asPath"] == [64512, 64512]
    assert "64512:777" in api6["communities"]
    # two Services sharing one address: one entry each, same prefix, the better tier
    dns = {r["service"]: r for r in result["routes"] if r["prefix"] == "203.0.113.1/32" and r["peers"] == ["tor-a"]}
    assert set(dns) == {"infra/dns-tcp", "infra/dns-udp"} and {r["tier"] for r in dns.values()} == {"primary"}
    assert {(s["service"], s["reason"]) for s in result["skipped"]} == {
        ("tenant/hijack", "notInPool"), ("tenant/typo", "invalidPreference"), ("tenant/idle", "noEndpoints")}
    assert "shop/internal" not in json.dumps(result)
    assert stderr == ""


def test_plan_on_another_node_of_the_example():
    result, _ = plan_json(CONFIG, "node-b", EXAMPLE)
    assert {r["peers"][0] for r in result["routes"]} <= {"tor-b", "rr"}
    assert ("shop/api", "noLocalEndpoints") in {(s["service"], s["reason"]) for s in result["skipped"]}
    result, _ = plan_json(CONFIG, "node-c", EXAMPLE)
    assert result["routes"] == [] and {s["reason"] for s in result["skipped"]} >= {"nodeNotReady"}


@pytest.mark.parametrize("cluster, node, tiers", [
    ("east", "east-1", {"default/demo": "primary", "default/west-first": "secondary"}),
    ("west", "west-1", {"default/demo": "secondary", "default/west-first": "primary"}),
    ("central", "central-1", {"default/demo": "tertiary"}),
])
def test_plan_multicluster_demo(cluster, node, tiers):
    config = ROOT / "configs" / f"{cluster}.yaml"
    if not config.exists():
        pytest.fail(f"{config} is missing (shipped by the config room)")
    result, _ = plan_json(config, node, MULTI)
    assert {r["service"]: r["tier"] for r in result["routes"]} == tiers
    prepends = {"primary": 1, "secondary": 2, "tertiary": 3}
    for route in result["routes"]:
        assert route["asPath"] == [64512] * prepends[route["tier"]]
        assert route["localPref"] is None  # eBGP only


def test_plan_text_is_a_table_with_skips_and_warnings(tmp_path):
    objects = tmp_path / "objects.yaml"
    objects.write_text(EXAMPLE.read_text().replace('"64512:777"', '"64512:777,64512:666"'))
    done = cli("plan", "--config", CONFIG, "--node-name", "node-a", "--objects", objects)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("node node-a: ")
    assert any(line.split()[:3] == ["SERVICE", "PREFIX", "TIER"] for line in lines)
    assert any("tenant/typo" in line and "invalidPreference" in line for line in lines)
    assert any("shop/api" in line and "communityNotAllowed" in line for line in lines)
    as_json = cli("plan", "--config", CONFIG, "--node-name", "node-a", "--objects", objects, "--format", "json")
    json.loads(as_json.stdout)  # warnings never break the JSON
    assert "communityNotAllowed" in as_json.stderr


def test_plan_reads_multi_document_yaml(tmp_path):
    import yaml
    items = yaml.safe_load(EXAMPLE.read_text())["items"]
    objects = tmp_path / "multi.yaml"
    objects.write_text(yaml.safe_dump_all(items))
    assert plan_json(CONFIG, "node-a", objects)[0] == plan_json(CONFIG, "node-a", EXAMPLE)[0]


def test_unknown_node_exits_2():
    done = cli("plan", "--config", CONFIG, "--node-name", "ghost", "--objects", EXAMPLE)
    assert done.returncode == 2
    assert "ghost" in done.stderr and "node-a" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("content, expected", [
    ("kind: List\nitems: [\n", "not valid YAML"),
    ("a: b: c\n", "not valid YAML"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
])
def test_bad_objects_file_exits_2(tmp_path, content, expected):
    objects = tmp_path / "bad.yaml"
    objects.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = cli("plan", "--config", CONFIG, "--node-name", "node-a", "--objects", objects)
    assert done.returncode == 2 and expected in done.stderr


def test_missing_objects_file_exits_2(tmp_path):
    done = cli("plan", "--config", CONFIG, "--node-name", "node-a", "--objects", tmp_path / "nope.yaml")
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_bad_config_exits_2_with_its_errors(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("cluster: {name: east}\nspeaker: {myASN: 0}\n")
    done = cli("plan", "--config", config, "--node-name", "node-a", "--objects", EXAMPLE)
    assert done.returncode == 2 and "speaker.myASN" in done.stderr and done.stdout == ""


def test_explain_announced_service():
    done = cli("explain", "shop/api", "--config", CONFIG, "--node-name", "node-a", "--objects", EXAMPLE)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0] == "Service shop/api on node node-a: announced"
    for fragment in ("assigned 203.0.113.10, 2001:db8::a from pool 'public'", "secondary",
                     "externalTrafficPolicy Local", "peers tor-a, rr", "2001:db8::a/128", "64512:777"):
        assert fragment in out


@pytest.mark.parametrize("service, node, reason", [
    ("tenant/hijack", "node-a", "[notInPool]"),
    ("tenant/typo", "node-a", "[invalidPreference]"),
    ("shop/api", "node-b", "[noLocalEndpoints]"),
    ("shop/web", "node-c", "[nodeNotReady]"),
])
def test_explain_says_why_not(service, node, reason):
    done = cli("explain", service, "--config", CONFIG, "--node-name", node, "--objects", EXAMPLE)
    assert done.returncode == 0, done.stderr
    assert "NOT announced" in done.stdout.splitlines()[0] and reason in done.stdout


def test_explain_agrees_with_plan_for_every_service():
    result, _ = plan_json(CONFIG, "node-a", EXAMPLE)
    announced = {r["service"] for r in result["routes"]}
    for service in ("shop/web", "shop/api", "infra/dns-tcp", "infra/dns-udp", "tenant/hijack", "tenant/typo",
                    "tenant/idle", "shop/internal"):
        done = cli("explain", service, "--config", CONFIG, "--node-name", "node-a", "--objects", EXAMPLE)
        assert done.returncode == 0
        assert (": announced" in done.stdout.splitlines()[0]) == (service in announced)


def test_explain_unknown_service_exits_3():
    done = cli("explain", "shop/nope", "--config", CONFIG, "--node-name", "node-a", "--objects", EXAMPLE)
    assert done.returncode == 3 and "shop/nope" in done.stderr


def test_explain_with_kubeconfig_uses_the_cluster_snapshot(monkeypatch, capsys):
    import yaml

    from bgpspeaker.kube import client
    from bgpspeaker.views import snapshot_from_objects

    snapshot = snapshot_from_objects(yaml.safe_load_all(EXAMPLE.read_text()))
    seen = []

    def fake_fetch(kubeconfig):
        seen.append(kubeconfig)
        return snapshot

    monkeypatch.setattr(client, "fetch_snapshot", fake_fetch)
    args = argparse.Namespace(service="shop/web", config=str(CONFIG), node_name="node-a", objects=None,
                              kubeconfig="/tmp/kubeconfig-test")
    assert offline.explain_command(args) == 0
    assert seen == ["/tmp/kubeconfig-test"]
    assert "Service shop/web on node node-a: announced" in capsys.readouterr().out

    def broken(kubeconfig):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(client, "fetch_snapshot", broken)
    assert offline.explain_command(args) == 1
    assert "connection refused" in capsys.readouterr().err


def test_load_objects_ignores_other_kinds(tmp_path):
    objects = tmp_path / "o.yaml"
    objects.write_text("kind: ConfigMap\nmetadata: {name: x}\n---\n---\nkind: Node\nmetadata: {name: n}\n")
    snapshot = offline.load_objects(str(objects))
    assert isinstance(snapshot, Snapshot) and set(snapshot.nodes) == {"n"} and not snapshot.services


def render_args(config, objects, node="node-a"):
    return ("render-exabgp", "--config", config, "--node-name", node, "--objects", objects)


def test_render_exabgp_prints_the_masked_config_of_the_node(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("do-not-print")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.read_text().replace("asn: 64500, nodeSelector: {rack: r1}}",
                                                 f"asn: 64500, passwordFile: {secret}, nodeSelector: {{rack: r1}}}}"))
    done = cli(*render_args(config, EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert "neighbor 10.0.0.1 {" in done.stdout and "********" in done.stdout
    assert "do-not-print" not in done.stdout + done.stderr
    done = cli(*render_args(config, EXAMPLE, node="nope"))
    assert done.returncode == 2 and done.stderr.startswith("bgpspeaker: node 'nope' is not among the Nodes")


# Every offline command that reads the objects file, with what it needs besides.
OBJECT_COMMANDS = {
    "render-exabgp": lambda objects: render_args(CONFIG, objects),
    "plan": lambda objects: ("plan", "--config", CONFIG, "--node-name", "node-a", "--objects", objects),
    "explain": lambda objects: ("explain", "shop/web", "--config", CONFIG, "--node-name", "node-a",
                                "--objects", objects),
}


@pytest.mark.parametrize("command", sorted(OBJECT_COMMANDS))
def test_every_offline_command_reports_a_bad_objects_file_the_same_way(command, tmp_path):
    """One loader: not UTF-8, not YAML or missing gives one `bgpspeaker: FILE: ...` line and exit code 2
    (render-exabgp used to crash with a traceback, exit code 1, on a non-UTF-8 file)."""
    latin1, broken = tmp_path / "latin1.yaml", tmp_path / "broken.yaml"
    latin1.write_bytes(b"kind: Node\nmetadata: {name: n\xe9}\n")
    broken.write_text("kind: [Node\n")
    for path, what in ((latin1, "not UTF-8 text"), (broken, "not valid YAML"),
                       (tmp_path / "missing.yaml", "cannot read objects")):
        done = cli(*OBJECT_COMMANDS[command](path))
        assert done.returncode == 2, (path, done.stderr)
        assert done.stderr.startswith(f"bgpspeaker: {path}: {what}"), done.stderr
        assert "Traceback" not in done.stderr and not done.stdout


@pytest.mark.parametrize("command", sorted(OBJECT_COMMANDS))
def test_every_offline_command_reports_a_bad_config_the_same_way(command, tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"cluster: {name: \xe9ast}\n")
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(CONFIG.read_text().replace("myASN: 64512", "myASN: 0"))
    for path, what in ((latin1, "is not UTF-8 text"), (invalid, "speaker.myASN: must be 1..4294967295, got 0")):
        args = [str(path) if arg == CONFIG else arg for arg in OBJECT_COMMANDS[command](EXAMPLE)]
        done = cli(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"bgpspeaker: {path}: invalid config:\n"), done.stderr
        assert what in done.stderr and "Traceback" not in done.stderr and not done.stdout


def test_plan_and_explain_show_the_cluster_maintenance_switch(tmp_path):
    config = tmp_path / "speaker.yaml"
    text = CONFIG.read_text()
    assert "cluster: {name: east, defaultTier: primary}" in text
    config.write_text(text.replace("cluster: {name: east, defaultTier: primary}",
                                   "cluster: {name: east, defaultTier: primary, maintenance: drain}"))
    result, _ = plan_json(config, "node-a", EXAMPLE)
    assert result["routes"] and all(r["tier"] == "tertiary" and "65535:0" in r["communities"]
                                    for r in result["routes"])
    done = cli("explain", "shop/api", "--config", config, "--node-name", "node-a", "--objects", EXAMPLE)
    assert done.returncode == 0 and "cluster.maintenance" in done.stdout, done.stdout
