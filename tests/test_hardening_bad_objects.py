"""The bad-object catalog (configs/bad-objects/): every example gives exactly the reasons and
messages written in its header, and nothing else.

Table-driven from the files themselves, so the catalog users read and the test cannot
drift apart. Each file is planned in-process (config → allocate → plan, the same calls
as `bgpspeaker plan`), and a few through the real CLI to show the JSON users see.
Broken configs are catalogued in configs/bad/ (tests/test_config_catalog.py); not here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgpspeaker.allocator import allocate
from bgpspeaker.config.load import load_config
from bgpspeaker.offline import load_objects
from bgpspeaker.planner import plan
from bgpspeaker.views import endpoint_slice_from_dict

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "configs" / "bad-objects"
CONFIG = CATALOG / "speaker.yaml"
EXAMPLES = sorted(p for p in CATALOG.glob("*.yaml") if p.name != "speaker.yaml")
_EXPECT = re.compile(r"^# expect: (?P<service>\S+) (?P<reason>\w+)(?P<warning> \(warning, still announced\))?: "
                     r"(?P<message>.*)$")
_ANNOUNCED = re.compile(r"^# announced: (?P<service>\S+) (?P<prefix>\S+)$")


def header(path: Path) -> tuple[set, set]:
    expects, announced = set(), set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if m := _EXPECT.match(line):
            expects.add((m["service"], m["reason"], bool(m["warning"]), m["message"]))
        elif m := _ANNOUNCED.match(line):
            announced.add((m["service"], m["prefix"]))
    return expects, announced


def test_catalog_is_big_enough(capsys):
    assert len(EXAMPLES) >= 40, [p.name for p in EXAMPLES]
    kinds = {p.name.split("-")[0] for p in EXAMPLES}
    assert kinds == {"svc", "slice", "node"}, kinds
    with capsys.disabled():
        print(f"\n[hardening] bad-object catalog: {len(EXAMPLES)} examples in {CATALOG.relative_to(REPO)}")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_bad_object_gives_its_documented_reason(path):
    expects, announced = header(path)
    assert expects, f"{path.name}: no '# expect:' line"
    config = load_config(CONFIG)
    snapshot = load_objects(str(path))
    result = plan(config, snapshot, "node-a", allocate(config, snapshot.services.values()))
    got = {(s.service, s.reason, False, s.message) for s in result.skipped}
    got |= {(s.service, s.reason, True, s.message) for s in result.warnings}
    assert got == expects
    assert {(svc, str(r.prefix)) for r in result.routes for svc in r.services} == announced
    refused = {s.service for s in result.skipped}
    assert not refused & {svc for r in result.routes for svc in r.services}
    for _, _, _, message in expects:  # messages go into Events and logfmt lines
        assert message.isprintable(), repr(message)


@pytest.mark.parametrize("name", ["svc-requested-ip-outside-pools", "svc-community-not-allowed", "node-not-ready",
                                  "svc-ip-in-use"])
def test_cli_plan_json_shows_the_same(name):
    path = CATALOG / f"{name}.yaml"
    expects, announced = header(path)
    run = subprocess.run([sys.executable, "-m", "bgpspeaker", "plan", "--config", str(CONFIG), "--node-name",
                          "node-a", "--objects", str(path), "--format", "json"], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    skipped = {(s["service"], s["reason"], s["message"]) for s in out["skipped"]}
    assert skipped == {(s, r, m) for s, r, w, m in expects if not w}
    assert {(r["service"], r["prefix"]) for r in out["routes"]} == announced
    for s, r, w, m in expects:
        if w:  # warnings have no place in the JSON of docs/design.md §3.1: they go to stderr
            assert m in run.stderr, run.stderr


def test_endpoint_ready_string_false_is_not_ready():
    view = endpoint_slice_from_dict({"metadata": {"name": "x", "namespace": "shop",
                                                  "labels": {"kubernetes.io/service-name": "web"}},
                                     "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": "false"}}]})
    assert view.endpoints[0].ready is False


@pytest.mark.parametrize("garbage", ["\x07", "\x00", "cluster: {name: east}\x1b[31m\n"])
def test_config_with_a_control_character_is_a_config_error(tmp_path, garbage):
    from bgpspeaker.config.load import ConfigError
    path = tmp_path / "speaker.yaml"
    path.write_text(garbage + CONFIG.read_text())
    with pytest.raises(ConfigError):
        load_config(path)
