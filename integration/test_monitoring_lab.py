"""configs/monitoring/ against a real Prometheus scraping a real `bgpspeaker run`.

    tor (FRR) ── node (bgpspeaker run :7472, Prometheus :9090 on the node's loopback)

The shipped rules are loaded with every `for:` cut to FOR_SECONDS (expressions as
shipped) and evaluated every second. While the session is up no alert is active; every
dashboard query and every rule expression runs without error, and those whose metrics
have samples on the speaker's /metrics return data; every metric they name is on that
/metrics page (or pending, see integration/monitoring.py). Then the router stops, and
the session alert must go pending and fire no sooner than its `for:` and within a few
scrape intervals after it.
"""

from __future__ import annotations

import time

import pytest

from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.prometheus import Prometheus
from integration.lab.wait import wait_until
from integration.monitoring import (
    PENDING_METRICS, alert_rules, dashboard_queries, exported_names, lab_rules, metric_names, used_metrics,
)
from integration.test_daemon import PREFIX, service_objects, start_speaker, world  # noqa: F401  (fixture)

pytestmark = pytest.mark.lab

FOR_SECONDS = 5
# Router stopped -> session down at the speaker (TCP closes: at once) -> next scrape (1 s)
# -> pending at the next evaluation (1 s) -> firing FOR_SECONDS later, at an evaluation.
SLACK_SECONDS = 6


def test_prometheus_scrapes_the_speaker_and_the_session_alert_fires_when_the_router_stops(lab, world, tmp_path):
    router, emu, node, _ = world
    speaker = start_speaker(lab, world, tmp_path)
    prometheus = Prometheus(lab, node, tmp_path / "prometheus", ["127.0.0.1:7472"], lab_rules(FOR_SECONDS)).start()
    wait_until(lambda: prometheus.query('bgpspeaker_bgp_session_up{peer="tor"} == 1'), 20,
               "the session up in Prometheus")

    # An endpoint event both ways, so the latency histogram and the update counter move.
    for ready in (False, True):
        endpoints = service_objects()[2]
        endpoints["endpoints"][0]["conditions"]["ready"] = ready
        emu.set_object(endpoints)
        wait_until(lambda ready=ready: (router.best_path(PREFIX) is not None) == ready, 15, f"route there: {ready}")
    wait_until(lambda: prometheus.query("bgpspeaker_event_to_ack_seconds_count >= 2"), 15, "events scraped")
    wait_until(lambda: prometheus.query("count_over_time(bgpspeaker_bgp_session_up[1m]) >= 3"), 15, "three scrapes")

    metrics_page = speaker.http("/metrics")[1]
    exported = exported_names(metrics_page)
    with_samples = {line.split("{")[0].split(" ")[0] for line in metrics_page.splitlines() if line and line[0] != "#"}
    assert {name for name in used_metrics() if name not in exported and name not in PENDING_METRICS} == set()

    queries = dashboard_queries(rate_interval="1m") + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    empty, answered = [], 0
    for where, expr in queries:
        result = prometheus.query(expr)  # raises on any error Prometheus reports
        answered += bool(result)
        if not result and metric_names(expr) <= with_samples and where.startswith(("panel", "variable")):
            empty.append(where)
    assert empty == [], f"queries with data on /metrics but none in Prometheus: {empty}"

    assert prometheus.alerts() == [], "no alert while the session is up"

    router.stop()
    stopped = time.monotonic()
    pending = wait_until(lambda: prometheus.alert_state("BgpSpeakerSessionDown", peer="tor") is not None,
                         FOR_SECONDS + SLACK_SECONDS, "the session alert pending") and time.monotonic() - stopped
    wait_until(lambda: prometheus.alert_state("BgpSpeakerSessionDown", peer="tor") == "firing",
               FOR_SECONDS + SLACK_SECONDS + 5, "the session alert firing")
    firing = time.monotonic() - stopped
    print(f"router stopped -> BgpSpeakerSessionDown pending after {pending:.2f} s, firing after {firing:.2f} s "
          f"(for: {FOR_SECONDS}s, scrape and evaluation every 1 s); {len(queries)} queries ran without error, "
          f"{answered} with data")
    assert firing >= FOR_SECONDS, firing  # never before its `for:`
    assert firing <= FOR_SECONDS + SLACK_SECONDS, firing
    # the speaker's only session: the node announces nothing, the critical alert follows
    wait_until(lambda: prometheus.alert_state("BgpSpeakerAllSessionsDown") == "firing", 10, "all sessions down firing")
