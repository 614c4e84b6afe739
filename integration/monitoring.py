"""What the tests of configs/monitoring/ read from the shipped files, in one place.

The alert rules and the Grafana dashboard are only worth shipping if every query in
them runs and names a metric the daemon exports: a renamed metric would otherwise leave
a panel silently empty and an alert that can never fire. These helpers pull the PromQL
out of both files (with the dashboard's variables substituted as Grafana would) and
list the metric names a /metrics page exports, so the unit tests (promtool, no network)
and the lab test (a real Prometheus scraping a real speaker) check the same things.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parent.parent / "configs" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "dashboard.json"

# Metrics the rules and the dashboard use before the daemon exports them: each is being
# added by another change (see configs/monitoring/README.md). A query naming one runs
# (Prometheus answers an empty result), but the "exported" checks leave these names out.
# Once the daemon exports a name, these checks cover it like any other; remove it here.
PENDING_METRICS: dict[str, str] = {}  # none: every metric the files name is exported

_METRIC = re.compile(r"\bbgpspeaker_[a-z0-9_]+")
_LABEL_VALUES = re.compile(r"^label_values\((\w+),\s*(\w+)\)$")


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def substitute(expr: str, rate_interval: str = "1m") -> str:
    """The query Grafana sends with every speaker selected (`$instance` = All = `.*`)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", ".*")


def dashboard_queries(board: dict | None = None, rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable, variables substituted.

    A `label_values(metric, label)` variable is not PromQL: it becomes the equivalent
    `group by (label) (metric)`, which fails or comes back empty exactly when it would.
    """
    board = board or dashboard()
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets") or ():
            found.append((f"panel {panel['title']!r} {target['refId']}", substitute(target["expr"], rate_interval)))
    for variable in board.get("templating", {}).get("list", ()):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query)
        if not match:
            raise ValueError(f"variable {variable['name']}: only label_values(metric, label) is supported, "
                             f"got {query!r}")
        found.append((f"variable ${variable['name']}", f"group by ({match.group(2)}) ({match.group(1)})"))
    return found


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def exported_names(exposition: str) -> set[str]:
    """Every sample name a Prometheus text page can hold, from its `# TYPE` lines.

    A labelled metric that has no child yet (no peer, no reload so far) has TYPE and
    HELP lines but no sample, and is exported all the same: its series appear as soon as
    it is set. In the text format a counter's TYPE line already names it with `_total`.
    """
    suffixes = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("", "_count", "_sum"), "untyped": ("",)}
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {name + suffix for suffix in suffixes.get(kind.strip(), ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def used_metrics() -> dict[str, set[str]]:
    """{metric name: where it is used} over the alert rules and the dashboard."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for where, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    return used


def lab_rules(for_seconds: int) -> str:
    """The shipped rules with every `for:` shortened, expressions untouched (for the lab)."""
    document = yaml.safe_load(ALERTS.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{for_seconds}s"
    return yaml.safe_dump(document, sort_keys=False)
