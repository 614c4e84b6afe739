"""The EventRecorder against the emulator: Events land on the Service, deduplicated by
count, and a flapping Service is rate limited instead of flooding the API."""

from __future__ import annotations

import pytest

from bgpspeaker.kube.client import api_client
from bgpspeaker.kube.events import EventRecorder, ObjectRef
from bgpspeaker.model import ServiceView
from integration.kubeapi import run_emulator
from integration.lab.wait import wait_until

pytestmark = pytest.mark.lab


@pytest.fixture
def emu():
    with run_emulator(bookmark_interval=3600) as e:
        yield e


@pytest.fixture
def recorder(emu):
    made: list[EventRecorder] = []
    client = api_client(emu.kubeconfig)

    def make(**kwargs) -> EventRecorder:
        made.append(EventRecorder(client, "node-a", **kwargs))
        return made[-1]
    yield make
    for r in made:
        r.stop()
    client.close()


def event_posts(emu) -> list[dict]:
    return [q for q in emu.requests if q["path"].endswith("/events") or "/events/" in q["path"]]


def test_event_lands_on_the_service_with_source_and_instance(emu, recorder):
    r = recorder(interval=0.2)
    r.record(ServiceView("default", "web", uid="u-1"), "IPAllocated", "Assigned IP 203.0.113.1 from pool public")
    r.record(ObjectRef("default", "web", "u-1"), "AllocationFailed", "poolExhausted: no address", warning=True)
    events = wait_until(lambda: len(emu.events_for("default", "web")) == 2 and emu.events_for("default", "web"), 10,
                        "two Events")
    by_reason = {e["reason"]: e for e in events}
    allocated = by_reason["IPAllocated"]
    assert allocated["type"] == "Normal" and allocated["count"] == 1
    assert allocated["involvedObject"] == {"apiVersion": "v1", "kind": "Service", "namespace": "default",
                                           "name": "web", "uid": "u-1"}
    assert allocated["source"] == {"component": "bgpspeaker", "host": "node-a"}
    assert allocated["reportingInstance"] == "node-a"
    assert by_reason["AllocationFailed"]["type"] == "Warning"


def test_identical_repeats_patch_the_count(emu, recorder):
    r = recorder(interval=0.2)
    web = ServiceView("default", "web")
    for n in range(1, 4):
        r.record(web, "AnnouncementChanged", "node node-a: announced 203.0.113.1=primary")
        wait_until(lambda: sum(e["count"] for e in emu.events_for("default", "web")) == n, 10, f"count {n}")
    events = emu.events_for("default", "web")
    assert len(events) == 1 and events[0]["count"] == 3
    assert [q["method"] for q in event_posts(emu)] == ["POST", "PATCH", "PATCH"]


def test_a_flapping_service_is_rate_limited_and_nothing_is_lost(emu, recorder):
    r = recorder(interval=1.0)
    web = ServiceView("default", "web")
    for i in range(600):  # as fast as the loop can: a Service flapping between two states
        r.record(web, "AnnouncementChanged", "announced" if i % 2 else "withdrawn")
    r.record(ServiceView("default", "db"), "IPAllocated", "Assigned IP 203.0.113.2 from pool public")
    wait_until(lambda: sum(e["count"] for e in emu.events_for("default", "web")) == 600, 15,
               "all 600 occurrences counted")
    # One write right away, then the rest aggregated into one write per interval.
    assert len([q for q in event_posts(emu) if "db" not in str(q["body"])]) <= 3
    assert r.writes <= 4
    assert len(emu.events_for("default", "db")) == 1  # another object is not held back by the flapping one


def test_record_never_blocks_when_the_api_is_slow(emu, recorder):
    emu.delay("/api/v1/namespaces/*/events", 3.0)
    r = recorder(interval=0.1, queue_size=5)
    for i in range(50):  # returns at once; what does not fit is dropped and counted
        r.record(ServiceView("default", f"s{i}"), "IPAllocated", "x")
    assert r.dropped >= 40
    emu.delay("/api/v1/namespaces/*/events", 0)


def test_the_queue_is_fair_between_services_and_counts_stay_exact(emu, recorder):
    """Issue 14: a Service making thousands of Events while the thread waits on the API
    filled the shared queue, and every other Service's Events were dropped."""
    emu.delay("/api/v1/namespaces/*/events", 1.0)
    r = recorder(interval=0.1, queue_size=100)
    r.record(ServiceView("default", "first"), "IPAllocated", "x")  # the thread is now stuck in its POST
    wait_until(lambda: event_posts(emu), 5, "the first POST in flight")
    noisy = ServiceView("default", "noisy")
    for i in range(5000):
        r.record(noisy, "CommunityNotAllowed", f"annotation bgpspeaker.io/communities: 64512:{i} not allowed")
    r.record(ServiceView("default", "quiet"), "IPAllocated", "Assigned IP 203.0.113.9 from pool public")
    assert r.dropped == 0
    emu.delay("/api/v1/namespaces/*/events", 0)
    wait_until(lambda: emu.events_for("default", "quiet"), 15, "the quiet Service's Event")
    wait_until(lambda: sum(e["count"] for e in emu.events_for("default", "noisy")) == 5000, 30,
               "every occurrence of the noisy one counted")
