"""Tier hysteresis in the planner: minReadyEndpoints, riseSeconds, their annotations, the
records handed from plan to plan, and that the incremental plan still equals a fresh one."""

from __future__ import annotations

import dataclasses
import random

import pytest

from bgpspeaker.allocator import allocate
from bgpspeaker.model import Endpoint, EndpointSliceView, Snapshot, Tier
from bgpspeaker.annotations import MIN_READY_ANNOTATION, RISE_ANNOTATION
from bgpspeaker.planner import PlanMemo, explain, plan
from tests.test_planner import CFG, PREF, TIERS, make_config, node, service

RISE = 5.0
HYST = dataclasses.replace(make_config(), tiers={
    **TIERS, Tier.PRIMARY: dataclasses.replace(TIERS[Tier.PRIMARY], min_ready_endpoints=2, rise_seconds=RISE)})


def slice_of(svc, ready: int, total: int = 4) -> EndpointSliceView:
    return EndpointSliceView(svc.namespace, f"{svc.name}-x", svc.name, endpoints=tuple(
        Endpoint((f"10.244.0.{i}",), i < ready, "node-a") for i in range(total)))


class Bed:
    """One Service on node-a planned over time, as the daemon does: memo, `now`, records passed back."""

    def __init__(self, config=HYST, svc=None):
        self.config, self.svc = config, svc or service("web", ann={PREF: "east,west"})
        self.allocation = allocate(config, [self.svc])
        self.memo, self.health, self.wake_at = PlanMemo(), None, None

    def snapshot(self, ready: int) -> Snapshot:
        return Snapshot.of([self.svc], [slice_of(self.svc, ready)], [node()])

    def at(self, now: float, ready: int, drained: bool = False):
        snap = self.snapshot(ready)
        result = plan(self.config, snap, "node-a", self.allocation, drained=drained, memo=self.memo, now=now,
                      health=self.health)
        fresh = plan(self.config, snap, "node-a", self.allocation, drained=drained, now=now, health=self.health)
        assert result == fresh and result.health == fresh.health and result.wake_at == fresh.wake_at
        self.health, self.wake_at = result.health, result.wake_at
        tiers = {r.tier for r in result.routes}
        assert len(tiers) <= 1
        return tiers.pop() if tiers else None

    def explain(self, now: float, ready: int) -> str:
        return "\n".join(s.detail for s in explain(self.config, self.snapshot(ready), "node-a", self.allocation,
                                                   self.svc.key, now=now, health=self.health).steps)


def test_below_min_ready_endpoints_announces_the_lowest_tier():
    bed = Bed()
    assert bed.at(0, ready=4) is Tier.PRIMARY
    assert bed.at(1, ready=1) is Tier.TERTIARY
    assert "1 ready endpoint(s), below minReadyEndpoints 2 (tier primary)" in bed.explain(1, ready=1)
    assert bed.at(2, ready=0) is None  # no endpoint at all: withdrawn, as always
    # the defaults (1, 0) change nothing: one ready endpoint is enough, at once
    plain = Bed(CFG)
    assert plain.at(0, ready=1) is Tier.PRIMARY and plain.at(1, ready=0) is None and plain.at(2, 1) is Tier.PRIMARY
    assert plain.health == {} and plain.wake_at is None


def test_rise_delays_the_return_to_primary_and_losing_health_is_immediate():
    bed = Bed()
    assert bed.at(0, ready=4) is Tier.PRIMARY  # no history (a fresh daemon): healthy counts as settled
    assert bed.at(10, ready=1) is Tier.TERTIARY and bed.health == {bed.svc.key: None}
    assert bed.at(11, ready=3) is Tier.TERTIARY and bed.wake_at == 11 + RISE  # healthy again: rising
    assert "announced with the tertiary tier for 3.0 s more" in bed.explain(13, ready=3)
    assert bed.at(15.9, ready=3) is Tier.TERTIARY
    assert bed.at(16, ready=3) is Tier.PRIMARY and bed.health == {} and bed.wake_at is None
    # a loss while rising restarts the wait
    assert bed.at(20, ready=0) is None
    assert bed.at(21, ready=4) is Tier.TERTIARY
    assert bed.at(23, ready=1) is Tier.TERTIARY and bed.wake_at is None
    assert bed.at(24, ready=4) is Tier.TERTIARY and bed.wake_at == 24 + RISE
    assert bed.at(29, ready=4) is Tier.PRIMARY


def test_flapping_readiness_moves_the_tier_no_more_often_than_rise_allows():
    """The lab's flapping scenario, pure: ready every other 0.5 s for 20 s. What moves traffic
    away from a standby cluster (secondary elsewhere) is this cluster becoming primary or
    ceasing to be: with rise 5 s, that happens once (the first loss), without it 40 times."""
    for config, expected in ((HYST, 1), (CFG, 40)):
        bed, changes, primary = Bed(config), 0, True
        now = 0.0
        assert bed.at(now, ready=4) is Tier.PRIMARY
        while now < 20:
            now += 0.25
            tier = bed.at(now, ready=4 if int(now * 2) % 2 == 0 else 0)
            changes += (tier is Tier.PRIMARY) != primary
            primary = tier is Tier.PRIMARY
        assert changes == expected, (config is HYST, changes)
    assert bed.at(now + RISE, ready=4) is Tier.PRIMARY


def test_annotations_override_the_tier_and_bad_ones_warn():
    svc = service("web", ann={PREF: "east,west", MIN_READY_ANNOTATION: "3", RISE_ANNOTATION: "0"})
    bed = Bed(svc=svc)
    assert bed.at(0, ready=2) is Tier.TERTIARY and bed.at(1, ready=3) is Tier.PRIMARY
    assert bed.at(2, ready=0) is None and bed.at(3, ready=3) is Tier.PRIMARY  # rise 0: at once
    assert "(annotation)" in bed.explain(3, ready=3)
    bad = service("web", ann={PREF: "east,west", MIN_READY_ANNOTATION: "many", RISE_ANNOTATION: "-1"})
    allocation = allocate(HYST, [bad])
    result = plan(HYST, Snapshot.of([bad], [slice_of(bad, 4)], [node()]), "node-a", allocation)
    assert sorted(w.reason for w in result.warnings) == ["invalidThreshold", "invalidThreshold"]
    assert all("from the primary tier" in w.message for w in result.warnings)
    assert {r.tier for r in result.routes} == {Tier.PRIMARY}


def test_drained_stays_lowest_and_a_secondary_service_uses_its_own_tier():
    bed = Bed()
    assert bed.at(0, ready=4, drained=True) is Tier.TERTIARY
    secondary = Bed(svc=service("web", ann={PREF: "west,east"}))  # secondary here: no min, no rise configured
    assert secondary.at(0, ready=1) is Tier.SECONDARY and secondary.at(1, 0) is None
    assert secondary.at(2, ready=1) is Tier.SECONDARY


@pytest.mark.parametrize("seed", range(4))
def test_memo_equals_fresh_with_time_and_records(seed):
    rnd = random.Random(seed)
    services = [service(f"s{i}", ann={PREF: "east,west"}) for i in range(8)]
    allocation = allocate(HYST, services)
    ready = {s.key: 4 for s in services}
    memo, health, now = PlanMemo(), None, 0.0
    for step in range(80):
        now += rnd.choice([0.1, 0.5, 1.0, 3.0])
        for s in rnd.sample(services, rnd.randint(0, 3)):
            ready[s.key] = rnd.choice([0, 1, 2, 4])
        snap = Snapshot.of(services, [slice_of(s, ready[s.key]) for s in services], [node()])
        got = plan(HYST, snap, "node-a", allocation, memo=memo, now=now, health=health)
        fresh = plan(HYST, snap, "node-a", allocation, now=now, health=health)
        assert got == fresh and got.health == fresh.health and got.wake_at == fresh.wake_at, step
        health = got.health
