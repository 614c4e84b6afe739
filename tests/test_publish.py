"""What the daemon reports (bgpspeaker/publish.py): each change told once, without network.

The Publisher writes into a real prometheus registry (read back with get_sample_value)
and an Event sink that lists what it was given.
"""

from __future__ import annotations

import ipaddress

from bgpspeaker.allocator import IP_IN_USE, Allocation, Assignment, Refusal
from bgpspeaker.config.schema import ClusterConfig, Config, PoolConfig, SpeakerConfig
from bgpspeaker.metrics import Metrics
from bgpspeaker.model import ServiceView, Snapshot, Tier
from bgpspeaker.planner import Plan, Skip
from bgpspeaker.publish import Publisher, address_conflicts, describe, pending_to_tell

IP, NET = ipaddress.ip_address, ipaddress.ip_network
CONFIG = Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(64512),
                pools=(PoolConfig("public", (NET("203.0.113.0/28"),)), PoolConfig("other", (NET("198.51.100.0/28"),))))
SNAPSHOT = Snapshot.of(services=[ServiceView("default", "a", type="LoadBalancer"),
                                 ServiceView("default", "b", type="LoadBalancer")])


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, bool]] = []

    def record(self, obj, reason, message, *, warning=False) -> None:
        self.events.append((obj.key, reason, message, warning))


def publisher() -> tuple[Publisher, Metrics, Sink]:
    metrics, sink = Metrics(), Sink()
    out = Publisher(metrics, "node-a")
    out.events = sink
    return out, metrics, sink


def test_describe_an_announcement_or_why_not():
    state = frozenset({(NET("2001:db8::5/128"), Tier.PRIMARY), (NET("203.0.113.5/32"), Tier.PRIMARY)})
    assert describe(state) == "203.0.113.5/32=primary 2001:db8::5/128=primary"  # IPv4 first
    assert describe("noEndpoints") == "not announced: noEndpoints"


def test_the_conflicts_are_the_ip_in_use_refusals():
    held = Refusal(IP_IN_USE, "203.0.113.1 is held", "public")
    assert address_conflicts({"default/a": held, "default/b": Refusal("notInPool", "x")}) == {("default/a", held)}
    # A pool renamed by a config reload: the same conflict, not counted (nor told) again.
    renamed = Refusal(IP_IN_USE, "203.0.113.1 is held", "public-renamed")
    assert address_conflicts({"default/a": renamed}) - address_conflicts({"default/a": held}) == set()


def test_a_waiting_service_is_told_once_and_again_only_after_it_stopped_waiting():
    new, told = pending_to_tell({"default/b": "w", "default/a": "w"}, set())
    assert new == ["default/a", "default/b"] and told == {"default/a", "default/b"}
    assert pending_to_tell({"default/a": "w", "default/b": "w"}, told) == ([], told)
    new, told = pending_to_tell({"default/a": "w"}, told)  # b got its record
    assert new == [] and told == {"default/a"}
    assert pending_to_tell({"default/a": "w", "default/b": "w"}, told)[0] == ["default/b"]


def test_the_first_plan_is_a_summary_then_each_change_is_one_event():
    out, _, sink = publisher()
    no_endpoints = Plan(routes=(), skipped=(Skip("default/a", "noEndpoints", "no ready endpoint"),))
    assert not out.planned
    out.plan(SNAPSHOT, no_endpoints, ())
    assert out.planned and sink.events == []  # 10,000 Services must not make 10,000 Events at start
    out.plan(SNAPSHOT, no_endpoints, ())
    assert sink.events == []  # no change, nothing told
    ignored = Skip("default/b", "communityNotAllowed", "community 65000:1 is not allowed")
    moved = Plan(routes=(), skipped=(Skip("default/a", "notLocal", "no endpoint on this node"),), warnings=(ignored,))
    out.plan(SNAPSHOT, moved, ())
    out.plan(SNAPSHOT, moved, ())
    assert sink.events == [
        ("default/a", "AnnouncementChanged", "node node-a: not announced: notLocal", True),
        ("default/b", "CommunityNotAllowed", "community 65000:1 is not allowed", True),
    ]


def test_allocation_metrics_and_conflicts_counted_once_on_the_leader():
    out, metrics, _ = publisher()
    allocation = Allocation(assigned={"default/a": Assignment("public", (IP("203.0.113.1"),))},
                            refused={"default/b": Refusal(IP_IN_USE, "203.0.113.1 is held by default/a", "public")},
                            pending={"default/c": "its record"})
    out.allocation(CONFIG, SNAPSHOT, allocation, leader=True)
    out.allocation(CONFIG, SNAPSHOT, allocation, leader=True)  # an endpoint event: the same allocation
    out.allocation(CONFIG, SNAPSHOT, Allocation(assigned=allocation.assigned, refused=allocation.refused),
                   leader=True)  # a new allocation, the same conflict
    value = metrics.registry.get_sample_value
    assert value("bgpspeaker_allocator_conflicts_total", {"pool": "public"}) == 1
    assert value("bgpspeaker_allocator_addresses_in_use", {"pool": "public"}) == 1
    assert value("bgpspeaker_allocator_addresses", {"pool": "public"}) == 16
    assert value("bgpspeaker_allocator_pending_services") == 0


def test_services_waiting_for_an_unreachable_store_are_told_once_each():
    out, _, sink = publisher()
    out.records_pending({"default/a": "waiting for its record"}, SNAPSHOT, {"local": "HTTP 503"})
    out.records_pending({"default/a": "waiting for its record"}, SNAPSHOT, {"local": "HTTP 503"})
    assert sink.events == [("default/a", "AllocationPending",
                            "waiting for its record; cannot write it now (local record store: HTTP 503); retrying",
                            True)]
