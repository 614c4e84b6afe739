"""configs/monitoring/: the alert rules and the dashboard, checked with Prometheus' own promtool.

No network here (the lab test, test_monitoring_lab.py, runs them in a real Prometheus):
`promtool check rules` and the rule unit tests (alerts.test.yaml) pass, and would fail
if a rule's threshold, `for:` or aggregation changed (each mutant below must break
them); every alert has a unit test; every dashboard query is valid PromQL (promtool
checks it as a recording rule); every metric the files name is one the daemon's
registry exports, or is on the short list of metrics other changes are adding.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from prometheus_client import generate_latest

from bgpspeaker.metrics import Metrics
from integration.monitoring import (
    ALERT_TESTS, ALERTS, PENDING_METRICS, alert_rules, dashboard, dashboard_queries, exported_names, used_metrics,
)


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `make setup` installs Debian's prometheus package")
    return subprocess.run([path, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass():
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_expects_it_to_fire():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {case["alertname"] for test in tests for case in test.get("alert_rule_test", ()) if case["exp_alerts"]}
    assert {rule["alert"] for rule in alert_rules()} == firing


# Each change to the shipped rules must make the unit tests fail: they pin the thresholds,
# the `for:` times and the aggregation over speakers, not just "the file loads".
MUTANTS = [
    ("expr: bgpspeaker_bgp_session_up == 0\n        for: 2m", "expr: bgpspeaker_bgp_session_up == 0\n        for: 1m"),
    ("expr: bgpspeaker_bgp_session_up == 0\n        for: 2m", "expr: bgpspeaker_bgp_session_up == 0\n        for: 3m"),
    ("max without (peer) (bgpspeaker_bgp_session_up) == 0", "min without (peer) (bgpspeaker_bgp_session_up) == 0"),
    ("> 0.9\n", "> 0.95\n"),
    ("max without (instance, pod) (bgpspeaker_allocator_addresses_in_use)\n            / ",
     "bgpspeaker_allocator_addresses_in_use\n            / ignoring (instance) group_left "),
    ("bgpspeaker_event_to_ack_seconds_bucket[5m])) > 1", "bgpspeaker_event_to_ack_seconds_bucket[5m])) > 3"),
    ("increase(bgpspeaker_exabgp_restarts_total[15m]) > 2", "increase(bgpspeaker_exabgp_restarts_total[15m]) > 0"),
    ("max without (instance, pod) (bgpspeaker_allocator_pending_services) > 0",
     "bgpspeaker_allocator_pending_services > 0"),
    ("bgpspeaker_allocator_conflicts_total[10m]", "bgpspeaker_allocator_conflicts_total[30m]"),
    ('result="invalid"', 'result=~".+"'),
    ("expr: bgpspeaker_bfd_session_up == 0\n        for: 1m", "expr: bgpspeaker_bfd_session_up == 0\n        for: 5m"),
]


@pytest.mark.parametrize("old,new", MUTANTS, ids=[f"mutant-{i}" for i in range(len(MUTANTS))])
def test_unit_tests_catch_a_changed_rule(tmp_path, old, new):
    text = ALERTS.read_text()
    assert text.count(old) == 1, old
    (tmp_path / ALERTS.name).write_text(text.replace(old, new))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    assert promtool("check", "rules", ALERTS.name, cwd=tmp_path).returncode == 0  # still a valid file
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests did not notice {old!r} -> {new!r}"


def test_every_dashboard_query_is_valid_promql(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": expr}
                                                        for i, (_, expr) in enumerate(queries)]}]}
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard-rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_grafana_json_with_a_datasource_variable():
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "instance"]
    for panel in board["panels"]:
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_every_metric_named_is_exported_by_the_daemon_or_pending():
    exported = exported_names(generate_latest(Metrics().registry).decode())
    used = used_metrics()
    unknown = {name: sorted(where) for name, where in used.items()
               if name not in exported and name not in PENDING_METRICS}
    assert unknown == {}
    # Pending names must be used somewhere (else drop them from the list) and be real names.
    assert set(PENDING_METRICS) <= set(used)
    now_exported = sorted(set(PENDING_METRICS) & exported)
    print(f"pending metrics the daemon now exports (remove them from PENDING_METRICS): {now_exported}")
