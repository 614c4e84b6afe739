"""The announcement ledger: by difference, exactly what a full recomputation says."""

from __future__ import annotations

import pytest

from bgpspeaker.allocator import allocate
from bgpspeaker.ledger import AnnouncementLedger
from bgpspeaker.model import Snapshot
from bgpspeaker.planner import PlanMemo, plan
from tests.test_planner import CFG, _scenario, endpoints, node, random_inputs


def full_states(routes, skipped) -> dict:
    """What the daemon computed from the whole plan on every event before the ledger."""
    items: dict[str, set] = {}
    for route in routes:
        for service in route.services:
            items.setdefault(service, set()).add((route.prefix, route.tier))
    states: dict[str, object] = {service: frozenset(found) for service, found in items.items()}
    for skip in skipped:
        states.setdefault(skip.service, skip.reason)
    return states


def labels_of(states: dict) -> set:
    return {(*service.split("/", 1), str(prefix.network_address), tier.value)
            for service, state in states.items() if isinstance(state, frozenset) for prefix, tier in state}


@pytest.mark.parametrize("seed", range(6))
def test_the_ledger_equals_a_full_recomputation_through_random_changes(seed):
    memo, ledger = PlanMemo(), AnnouncementLedger()
    states_before: dict = {}
    labels: set = set()
    touched = []
    for step, change, config, snap, allocation, drained, withdrawn in random_inputs(seed, 80, withdraw=True):
        result = plan(config, snap, "node-a", allocation, drained=drained, memo=memo)
        routes = () if withdrawn else result.routes  # the daemon then announces nothing, whatever the plan says
        changes = ledger.update(routes, result.skipped)

        expected = full_states(routes, result.skipped)
        assert ledger.states == expected, (step, change)
        assert ledger.announced == sum(isinstance(v, frozenset) for v in expected.values())
        wanted = {key: expected.get(key) for key in expected.keys() | states_before.keys()
                  if expected.get(key) != states_before.get(key)}
        assert changes.states == wanted, (step, change)
        assert not changes.labels_added & changes.labels_removed
        labels = (labels - changes.labels_removed) | changes.labels_added
        assert labels == labels_of(expected), (step, change)
        states_before = expected
        touched.append(len(changes.states))
    assert any(0 < n < len(states_before) for n in touched), "never a partial change: this test proved nothing"


def test_an_endpoint_event_touches_only_its_service():
    services, slices = _scenario(3)
    slices = [endpoints(s, "node-a") for s in services]
    nodes = [node()]
    allocation = allocate(CFG, services)
    memo, ledger = PlanMemo(), AnnouncementLedger()
    first = plan(CFG, Snapshot.of(services, slices, nodes), "node-a", allocation, memo=memo)
    ledger.update(first.routes, first.skipped)
    announced = [s for s in services if isinstance(ledger.states.get(s.key), frozenset)]
    assert len(announced) > 5
    victim = announced[2]
    slices = [endpoints(s, "node-a", ready=s is not victim) for s in services]
    second = plan(CFG, Snapshot.of(services, slices, nodes), "node-a", allocation, memo=memo)
    changes = ledger.update(second.routes, second.skipped)
    assert changes.states == {victim.key: "noEndpoints"}
    assert {label[:2] for label in changes.labels_removed} == {(victim.namespace, victim.name)}
    assert not changes.labels_added


def test_a_route_moving_to_another_tier_swaps_its_label():
    ledger = AnnouncementLedger()
    services, slices = _scenario(1)
    nodes = [node()]
    allocation = allocate(CFG, services)
    slices = [endpoints(s, "node-a") for s in services]
    primary = plan(CFG, Snapshot.of(services, slices, nodes), "node-a", allocation)
    ledger.update(primary.routes, primary.skipped)
    drained = plan(CFG, Snapshot.of(services, slices, nodes), "node-a", allocation, drained=True)
    changes = ledger.update(drained.routes, drained.skipped)
    moved = {label[:3] for label in changes.labels_added}
    assert moved and moved == {label[:3] for label in changes.labels_removed}
    assert {label[3] for label in changes.labels_added} == {"tertiary"}


def test_a_service_skipped_twice_shows_the_plans_first_reason():
    from bgpspeaker.planner import Skip
    skips = (Skip("default/web", "invalidNextHop", "fd00::9: b"), Skip("default/web", "notInPool", "a"))
    ledger = AnnouncementLedger()
    assert ledger.update((), skips).states == {"default/web": "invalidNextHop"}  # plans sort skips by reason
    assert ledger.update((), skips[1:]).states == {"default/web": "notInPool"}
    assert ledger.update((), ()).states == {"default/web": None}
    assert ledger.states == {}
