"""Leader election on a Lease in the emulator: one writer at a time, takeover, release.

Two (or three) electors in one process stand in for replicas on different nodes; the
Lease and its resourceVersion conflicts are real. A monitor samples `is_leader` of every
elector throughout and fails if two ever claim leadership at once.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bgpspeaker.kube.client import api_client
from bgpspeaker.kube.leader import LeaderElector
from integration.kubeapi import run_emulator
from integration.lab.wait import wait_until
from integration.test_kube import FAST_LEASE, Replica, config, ingress_of, svc

pytestmark = pytest.mark.lab


@pytest.fixture
def emu():
    with run_emulator(bookmark_interval=1.0) as e:
        yield e


class Monitor:
    """Samples `is_leader` of each elector every few ms; records any overlap."""

    def __init__(self, electors: list) -> None:
        self.electors, self.overlaps = electors, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            leaders = [e.identity for e in self.electors if e.is_leader]
            if len(leaders) > 1:
                self.overlaps.append(leaders)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join()
        return self.overlaps


@pytest.fixture
def electors(emu):
    made: list[LeaderElector] = []
    clients: list = []

    def make(identity: str, **kwargs: Any) -> LeaderElector:
        clients.append(api_client(emu.kubeconfig))
        elector = LeaderElector(clients[-1], identity, namespace="default", name="alloc",
                                **{**FAST_LEASE, **kwargs})
        made.append(elector)
        return elector
    yield make
    for elector in made:
        elector.stop()
    for client in clients:
        client.close()


def lease(emu) -> dict:
    return emu.get_object("coordination.k8s.io/v1", "Lease", "default", "alloc")["spec"]


def test_exactly_one_of_three_leads_and_a_dead_leader_is_replaced(emu, electors):
    started: list[str] = []
    trio = [electors(name, on_started_leading=lambda n=name: started.append(n)) for name in ("a", "b", "c")]
    monitor = Monitor(trio)
    for e in trio:
        e.start()
    first = wait_until(lambda: [e for e in trio if e.is_leader], 10, "a leader")[0]
    assert lease(emu)["holderIdentity"] == first.identity
    first.stop(release=False)  # dies without a goodbye: the others wait out the lease
    rest = [e for e in trio if e is not first]
    second = wait_until(lambda: [e for e in rest if e.is_leader], 10, "a new leader")[0]
    spec = lease(emu)
    assert spec["holderIdentity"] == second.identity and spec["leaseTransitions"] == 1
    assert monitor.stop() == [], "two electors led at the same time"
    assert started == [first.identity, second.identity]


def test_release_on_stop_hands_over_without_waiting(emu, electors):
    a = electors("a", lease_duration=30.0, renew_deadline=20.0, renew_interval=0.25)
    a.start()
    wait_until(lambda: a.is_leader, 10, "a leads")
    b = electors("b", lease_duration=30.0, renew_deadline=20.0, renew_interval=0.25)
    b.start()
    monitor = Monitor([a, b])
    a.stop()  # releases: b takes over long before the 30 s lease would expire
    wait_until(lambda: b.is_leader, 5, "b takes over the released lease")
    assert monitor.stop() == []


def test_a_leader_that_cannot_renew_steps_down_before_others_take_over(emu, electors):
    a = electors("a")
    a.start()
    wait_until(lambda: a.is_leader, 10, "a leads")
    b = electors("b")
    b.start()
    monitor = Monitor([a, b])
    # a's renewals all fail (its PUTs get 503); b's too, but b only reads until expiry.
    emu.fail_next("PUT", "/apis/coordination.k8s.io/v1/namespaces/default/leases/alloc", 503, n=8)
    wait_until(lambda: not a.is_leader, 5, "a steps down")
    wait_until(lambda: a.is_leader or b.is_leader, 15, "someone leads again once writes succeed")
    assert monitor.stop() == [], "the old leader kept leading after the other took over"


def test_two_replicas_never_both_write_and_assign_every_service_once(emu):
    """The Done-when test: kill the leader mid-way; the other takes over; no duplicate or lost assignment."""
    cfg = config("203.0.113.0/26")
    a = Replica(emu, cfg, "node-a")
    try:
        wait_until(lambda: a.elector.is_leader and a.watcher.synced, 10, "a leads")
        b = Replica(emu, cfg, "node-b")
        try:
            monitor = Monitor([a.elector, b.elector])
            for i in range(20):
                emu.set_object(svc(f"s{i:02d}"))
            wait_until(lambda: all(ingress_of(emu, f"s{i:02d}") for i in range(20)), 15, "the first 20 assigned")
            for i in range(20, 40):  # more arrive while the leader dies
                emu.set_object(svc(f"s{i:02d}"))
                if i == 25:
                    a.kill()
            wait_until(lambda: b.elector.is_leader, 10, "b takes over")
            wait_until(lambda: all(ingress_of(emu, f"s{i:02d}") for i in range(40)), 15, "all 40 assigned")
            assert monitor.stop() == [], "both replicas led at once"
            ips = [ingress_of(emu, f"s{i:02d}") for i in range(40)]
            assert all(len(x) == 1 for x in ips)
            assert len({x[0] for x in ips}) == 40, "an address was assigned twice"
            everything = {f"default/s{i:02d}" for i in range(40)}
            # A round is recorded when its writes are done (after the last annotation patch).
            wait_until(lambda: set(a.written()) | set(b.written()) == everything, 10, "every write recorded")
            wrote_a, wrote_b = set(a.written()), set(b.written())
            assert wrote_a and wrote_b, "the takeover did not happen mid-way"
            assert not wrote_a & wrote_b, "both replicas wrote the same Service"
        finally:
            b.close()
    finally:
        a.close()
