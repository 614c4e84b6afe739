"""The daemon's Kubernetes side against the API emulator, through the official client.

Informer (list, watch, 410 relist, outage), KubeWatcher (one cache on an asyncio loop),
and the allocator's writer wired as the daemon wires them: informer → allocate() →
StatusWriter. Only loopback sockets; every wait is a condition with a deadline.
The helpers here (LoopThread, Replica) are reused by test_kube_leader.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import threading
import time
from typing import Any, Callable, Optional

import pytest

from bgpspeaker import views
from bgpspeaker.allocator import ALLOCATED_FROM_POOL_ANNOTATION, allocate, is_managed
from bgpspeaker.config.schema import ClusterConfig, Config, PeerConfig, PoolConfig, SpeakerConfig
from bgpspeaker.kube.client import api_client, fetch_snapshot
from bgpspeaker.kube.events import EventRecorder
from bgpspeaker.kube.leader import LeaderElector
from bgpspeaker.kube.status import StatusWriter, WriteResult
from bgpspeaker.kube.watcher import KubeWatcher
from bgpspeaker.metrics import Metrics
from bgpspeaker.planner import plan
from integration.kubeapi import run_emulator
from integration.lab.wait import wait_until

pytestmark = pytest.mark.lab

# Short watch timeouts and backoff so the tests exercise re-watches and reconnects.
FAST = dict(watch_timeout=5.0, backoff_initial=0.1, backoff_max=1.0)
# A lease short enough for a takeover within a test, with client-go's proportions.
FAST_LEASE = dict(lease_duration=1.5, renew_deadline=1.0, renew_interval=0.25, retry_period=0.2)


# ---- objects ---------------------------------------------------------------------------------

def svc(name: str, namespace: str = "default", annotations: Optional[dict] = None, **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                     "ipFamilies": ["IPv4"], **spec}}


def endpoint_slice(name: str, service: str, namespace: str = "default", ip: str = "10.1.0.1",
                   node: str = "node-a", ready: bool = True) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}


def node(name: str, ip: str = "10.0.0.2", heartbeat: str = "2026-01-01T00:00:00Z") -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"rack": "r1"}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}}


def config(*cidrs: str) -> Config:
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512),
                  pools=(PoolConfig("public", tuple(ipaddress.ip_network(c) for c in cidrs)),))


def ingress_of(emu, name: str, namespace: str = "default") -> list[str]:
    obj = emu.get_object("v1", "Service", namespace, name)
    return [] if obj is None else list(views.service_from_dict(obj).ingress_ips)


def pool_annotation_of(emu, name: str, namespace: str = "default") -> Optional[str]:
    obj = emu.get_object("v1", "Service", namespace, name)
    return None if obj is None else ((obj["metadata"].get("annotations") or {}).get(ALLOCATED_FROM_POOL_ANNOTATION))


def service_lists(emu, since: int = 0) -> list[dict]:
    """LIST (not WATCH) requests for Services, from request number `since` on."""
    return [r for r in emu.requests[since:] if r["method"] == "GET" and r["path"] == "/api/v1/services"
            and str(r["query"].get("watch", "")).lower() not in ("true", "1")]


# ---- an asyncio loop in a thread, standing in for the daemon's ------------------------------

class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"test-loop-{os.getpid()}", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the loop and return its result: reads the loop-owned state safely."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Watching:
    """A KubeWatcher on a LoopThread that records every snapshot its on_change sees."""

    def __init__(self, emu, **options: Any) -> None:
        self.loop = LoopThread()
        self.api = api_client(emu.kubeconfig)
        self.metrics = Metrics()
        self.snapshots: list = []
        self.watcher = KubeWatcher(self.api, self.loop.loop, self._on_change, self.metrics, **{**FAST, **options})
        self.watcher.start()

    def _on_change(self) -> None:
        self.snapshots.append(self.watcher.snapshot())

    @property
    def changes(self) -> int:
        return self.loop.call(lambda: len(self.snapshots))

    def snapshot(self):
        return self.loop.call(self.watcher.snapshot)

    def state(self, name: str) -> Any:
        return self.loop.call(lambda: getattr(self.watcher, name))

    def restarts(self, resource: str) -> float:
        return self.metrics.registry.get_sample_value("bgpspeaker_kube_watch_restarts_total",
                                                      {"resource": resource}) or 0.0

    def close(self) -> None:
        self.watcher.stop()
        self.loop.close()
        self.api.close()


class Replica:
    """What the daemon runs for the Kubernetes side: watcher, elector, allocate(), writer.

    Reconciles are coalesced like the daemon's: on_change marks dirty, one task drains.
    """

    def __init__(self, emu, cfg: Config, identity: str, lease: str = "alloc", events: bool = False) -> None:
        self.cfg, self.identity = cfg, identity
        self.loop = LoopThread()
        self.api = api_client(emu.kubeconfig)
        self.metrics = Metrics()
        self.events = EventRecorder(self.api, identity, interval=0.5) if events else None
        self.elector = LeaderElector(self.api, identity, namespace="default", name=lease, loop=self.loop.loop,
                                     on_change=self.kick, **FAST_LEASE)
        self.writer = StatusWriter(self.api, lambda: self.elector.is_leader, events=self.events)
        self.rounds: list[tuple[frozenset, WriteResult]] = []  # (Service keys seen, what was written)
        self.dirty = asyncio.Event()
        self.loop.call(lambda: None)
        self.task = asyncio.run_coroutine_threadsafe(self._reconcile_loop(), self.loop.loop)
        self.watcher = KubeWatcher(self.api, self.loop.loop, self.kick, self.metrics, **FAST)
        self.watcher.start()
        self.elector.start()

    def kick(self) -> None:
        self.dirty.set()

    async def _reconcile_loop(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            if not self.watcher.synced:
                continue
            snapshot = self.watcher.snapshot()
            allocation = allocate(self.cfg, snapshot.services.values())
            if self.elector.is_leader:
                result = await asyncio.to_thread(self._write, allocation, snapshot.services)
                if result.failed:  # as the daemon should: retry failures shortly
                    self.loop.loop.call_later(0.2, self.kick)

    def _write(self, allocation, services) -> WriteResult:
        # Recorded in the worker thread: a write completes (and counts) even when kill()
        # cancels the reconcile task that waits for it.
        result = self.writer.write(allocation, services)
        self.rounds.append((frozenset(services), result))
        return result

    def written(self) -> list[str]:
        return [key for _, result in list(self.rounds) for key in result.written]

    def kill(self) -> None:
        """Stop as a crash would: no Lease release, no goodbye."""
        self.elector.stop(release=False)
        self.task.cancel()
        self.watcher.stop()

    def close(self) -> None:
        self.task.cancel()
        self.elector.stop()
        self.watcher.stop()
        if self.events is not None:
            self.events.stop()
        self.loop.close()
        self.api.close()


@pytest.fixture
def emu():
    with run_emulator(bookmark_interval=1.0) as e:
        yield e


@pytest.fixture
def watching(emu):
    made: list[Watching] = []

    def make(**options: Any) -> Watching:
        made.append(Watching(emu, **options))
        return made[-1]
    yield make
    for w in made:
        w.close()


# ---- informer / watcher ----------------------------------------------------------------------

def test_fetch_snapshot_lists_all_three_kinds(emu):
    emu.load_objects([svc("web"), endpoint_slice("web-1", "web"), node("node-a")])
    snapshot = fetch_snapshot(emu.kubeconfig)
    assert list(snapshot.services) == ["default/web"]
    assert snapshot.endpoint_slices["default/web-1"].service_key == "default/web"
    assert snapshot.nodes["node-a"].address_of(4) == ipaddress.ip_address("10.0.0.2")


def test_fetch_snapshot_follows_pages(emu):
    emu.load_objects([svc(f"s{i:04d}") for i in range(1203)])  # pages of 500, each parsed as it streams
    assert len(fetch_snapshot(emu.kubeconfig).services) == 1203
    assert [q["query"]["limit"] for q in service_lists(emu)] == ["500", "500", "500"]


# ---- the EndpointSlices of Services we never announce are not cached (issue 14) ---------------

SLICES_OF_DEFAULT = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


def announcing_config() -> Config:
    return Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512),
                  peers=(PeerConfig("tor", ipaddress.ip_address("10.0.0.1"), 64500),),
                  pools=(PoolConfig("public", (ipaddress.ip_network("203.0.113.0/24"),)),))


def slice_ips(w: Watching) -> dict[str, set[str]]:
    """slice key -> its endpoints' addresses, as the watcher's snapshot has them."""
    return {key: {a for e in view.endpoints for a in e.addresses}
            for key, view in w.snapshot().endpoint_slices.items()}


def test_slices_are_cached_only_for_services_we_may_announce(emu, watching):
    cfg = announcing_config()
    emu.load_objects([svc("web", type="ClusterIP"), endpoint_slice("web-1", "web"),
                      svc("api"), endpoint_slice("api-1", "api", ip="10.1.0.2"), node("node-a")])
    w = watching(announced=lambda s: is_managed(cfg, s))  # what the daemon passes

    def announced() -> set[str]:
        snapshot = w.snapshot()
        return {k for r in plan(cfg, snapshot, "node-a", allocate(cfg, snapshot.services.values())).routes
                for k in r.services}

    def informer_cache() -> set[str]:
        return set(dict(w.watcher._slices._cache))

    wait_until(lambda: w.state("synced") and set(slice_ips(w)) == {"default/api-1"}, 10, "web-1 dropped")
    assert informer_cache() == {"default/api-1"}
    assert announced() == {"default/api"}

    # ClusterIP -> LoadBalancer: the slice the watch dropped is listed by its label, its
    # endpoint counts, and web is announced; no relist, no restart.
    since = len(emu.requests)
    emu.set_object(svc("web"))
    wait_until(lambda: announced() == {"default/api", "default/web"}, 10, "web announced")
    assert informer_cache() == {"default/api-1", "default/web-1"}
    assert [r["query"].get("labelSelector") for r in emu.requests[since:]
            if r["method"] == "GET" and r["path"] == SLICES_OF_DEFAULT] == ["kubernetes.io/service-name=web"]

    # ... and back: its slice is dropped, and its changes are not cached any more.
    emu.set_object(svc("web", type="ClusterIP"))
    wait_until(lambda: set(slice_ips(w)) == {"default/api-1"}, 10, "web-1 dropped again")
    assert announced() == {"default/api"}
    emu.set_object(endpoint_slice("web-1", "web", ip="10.1.0.9"))
    emu.set_object(endpoint_slice("api-1", "api", ip="10.1.0.3"))  # the watch has passed web-1 once this shows
    wait_until(lambda: slice_ips(w).get("default/api-1") == {"10.1.0.3"}, 10, "api-1 changed")
    assert set(slice_ips(w)) == {"default/api-1"} and informer_cache() == {"default/api-1"}
    assert len([r for r in emu.requests if r["method"] == "GET" and r["path"] == "/apis/discovery.k8s.io/v1/endpointslices"
                and str(r["query"].get("watch", "")).lower() not in ("true", "1")]) == 1  # the first list only
    assert w.restarts("endpointslices") == 0


def test_a_reload_that_changes_the_class_decides_the_slices_again(emu, watching):
    current = [announcing_config()]  # the daemon's self.config, replaced by a reload
    emu.load_objects([svc("gold", loadBalancerClass="example.com/gold"), endpoint_slice("gold-1", "gold"),
                      svc("web"), endpoint_slice("web-1", "web"), node("node-a")])
    w = watching(announced=lambda s: is_managed(current[0], s))
    wait_until(lambda: w.state("synced") and set(slice_ips(w)) == {"default/web-1"}, 10, "gold-1 dropped")
    current[0] = dataclasses.replace(current[0], speaker=SpeakerConfig(my_asn=64512,
                                                                       load_balancer_class="example.com/gold"))
    w.loop.call(w.watcher.reannounce)  # what Daemon.reload_config does
    wait_until(lambda: set(slice_ips(w)) == {"default/gold-1"}, 10, "gold's slices instead of web's")


def test_many_services_turned_ours_at_once_are_fetched_by_one_relist(emu, watching):
    from bgpspeaker.kube.informer import MAX_GROUP_LISTS
    n = MAX_GROUP_LISTS + 5
    every = [False]
    emu.load_objects([svc(f"c{i}", type="ClusterIP") for i in range(n)] + [node("node-a")]
                     + [endpoint_slice(f"c{i}-1", f"c{i}", ip=f"10.4.0.{i + 1}") for i in range(n)])
    w = watching(announced=lambda s: every[0] or s.type == "LoadBalancer")
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    assert slice_ips(w) == {}
    every[0] = True
    w.loop.call(w.watcher.reannounce)
    wait_until(lambda: len(slice_ips(w)) == n, 10, "every slice, by one LIST of them all")
    assert len([r for r in emu.requests if r["method"] == "GET" and r["path"] == "/apis/discovery.k8s.io/v1/endpointslices"
                and str(r["query"].get("watch", "")).lower() not in ("true", "1")]) == 2
    assert not [r for r in emu.requests if r["path"] == SLICES_OF_DEFAULT]


def test_slices_of_a_service_turned_announceable_miss_no_event(emu, watching):
    # The race between the two watches: slices made before their Service, changed and
    # added while the Service turns LoadBalancer (the slice watch may see those events
    # before or after the Service's), then the Service turned back while a slice goes.
    emu.load_objects([node("node-a")])
    w = watching(announced=lambda s: s.type == "LoadBalancer")
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    names = [f"s{i}" for i in range(6)]
    for name in names:
        emu.set_object(endpoint_slice(f"{name}-1", name, ip="10.2.0.1"))
    for name in names:
        emu.set_object(svc(name))
        for k in range(2, 5):
            emu.set_object(endpoint_slice(f"{name}-1", name, ip=f"10.2.0.{k}"))
        emu.set_object(endpoint_slice(f"{name}-2", name, ip="10.3.0.1"))
    want = {f"default/{n}-1": {"10.2.0.4"} for n in names} | {f"default/{n}-2": {"10.3.0.1"} for n in names}
    wait_until(lambda: slice_ips(w) == want, 15, "every slice as it is in the API")
    for name in names[:3]:
        emu.set_object(svc(name, type="ClusterIP"))
        emu.delete_object("discovery.k8s.io/v1", "EndpointSlice", "default", f"{name}-2")
        emu.set_object(endpoint_slice(f"{name}-1", name, ip="10.2.0.9"))
    want = {f"default/{n}-1": {"10.2.0.4"} for n in names[3:]} | {f"default/{n}-2": {"10.3.0.1"} for n in names[3:]}
    wait_until(lambda: slice_ips(w) == want, 15, "only the LoadBalancer Services' slices")
    emu.set_object(svc(names[0]))  # and on again: its one remaining slice, as it is now
    want[f"default/{names[0]}-1"] = {"10.2.0.9"}
    wait_until(lambda: slice_ips(w) == want, 15, "s0-1 listed again")


def test_watcher_syncs_then_follows_changes_and_drops_noise(emu, watching):
    emu.load_objects([svc("web"), endpoint_slice("web-1", "web"), node("node-a")])
    w = watching()
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    snap = w.snapshot()
    assert set(snap.services) == {"default/web"} and set(snap.nodes) == {"node-a"}
    before = w.changes

    emu.set_object(svc("api"))
    wait_until(lambda: "default/api" in w.snapshot().services, 10, "the new Service")
    emu.set_object(endpoint_slice("web-1", "web", ready=False))
    wait_until(lambda: not w.snapshot().endpoint_slices["default/web-1"].endpoints[0].ready, 10, "slice update")
    emu.delete_object("v1", "Service", "default", "api")
    wait_until(lambda: "default/api" not in w.snapshot().services, 10, "the deletion")
    assert w.changes == before + 3

    # A heartbeat changes the Node's resourceVersion, not its view: nothing goes downstream.
    emu.set_object(node("node-a", heartbeat="2026-01-01T00:00:10Z"))
    emu.set_object(svc("marker"))
    wait_until(lambda: "default/marker" in w.snapshot().services, 10, "the marker after the heartbeat")
    assert w.changes == before + 4


def test_the_node_is_listed_before_services_and_slices(emu, watching):
    """ExaBGP's config depends on this Node: its list goes first, so the BGP session can come
    up while the big lists are read. Side by side, the Services (not delayed) would arrive first."""
    emu.load_objects([svc("web"), endpoint_slice("web-1", "web"), node("node-a")])
    emu.delay("/api/v1/nodes", 0.5)
    w = watching()
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    first = w.loop.call(lambda: w.snapshots[0])
    assert set(first.nodes) == {"node-a"} and not first.services and not first.endpoint_slices


def test_services_and_slices_are_listed_while_the_node_list_hangs(emu, watching):
    """The wait for the Node list is bounded (NODES_FIRST_WAIT): a hung Node list delays them, never stops them."""
    emu.load_objects([svc("web"), endpoint_slice("web-1", "web"), node("node-a")])
    emu.delay("/api/v1/nodes", 6)
    w = watching()
    wait_until(lambda: "default/web" in w.snapshot().services and "default/web-1" in w.snapshot().endpoint_slices,
               5, "the Service and its slice, with the Node list still hanging")
    assert not w.state("synced")


def test_relist_after_410_of_1000_unchanged_services_yields_no_change(emu, watching):
    emu.load_objects([svc(f"s{i:04d}") for i in range(1000)])
    w = watching()
    wait_until(lambda: w.state("synced"), 20, "initial sync")
    assert len(w.snapshot().services) == 1000
    services_informer = next(i for i in w.watcher._informers if i.resource.name == "services")
    views = dict(services_informer._cache)
    before, lists_before = w.changes, len(service_lists(emu))

    compacted = emu.compact()  # every resourceVersion handed out so far is now too old
    emu.close_watches()  # the re-watch from the old RV gets 410 Expired
    wait_until(lambda: w.state("resource_versions")["services"] == str(compacted), 20,
               "the services relist at the compaction point")
    assert len(service_lists(emu)) > lists_before, "no relist happened"
    assert w.restarts("services") >= 1
    assert w.changes == before, "a relist of unchanged objects produced a downstream change"
    # ...and kept the very same view objects: one copy of the cache during a relist (peak
    # RSS), and the daemon's identity-keyed caches stay valid.
    relisted = dict(services_informer._cache)
    assert relisted.keys() == views.keys() and all(v is views[k] for k, v in relisted.items())

    # The pipeline is alive after the relist: one real change is exactly one change.
    emu.set_object(svc("s0000", annotations={"bgpspeaker.io/cluster-preference": "east"}))  # one we read
    wait_until(lambda: w.changes == before + 1, 10, "the change after the relist")


def test_relist_after_410_delivers_what_changed_meanwhile(emu, watching):
    emu.load_objects([svc("keep"), svc("gone"), svc("edit")])
    w = watching()
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    emu.pause_events()  # changes land in the store but reach no watcher...
    emu.set_object(svc("new"))
    emu.delete_object("v1", "Service", "default", "gone")
    emu.set_object(svc("edit", externalTrafficPolicy="Local"))
    compacted = emu.compact()  # ...and are compacted away: only a relist can find them
    emu.close_watches()
    emu.resume_events()
    wait_until(lambda: set(w.snapshot().services) == {"default/keep", "default/new", "default/edit"}, 20,
               "the relist's diff")
    assert w.snapshot().services["default/edit"].external_traffic_policy == "Local"
    assert int(w.state("resource_versions")["services"]) >= compacted


def test_watch_closed_every_second_loses_no_event(emu, watching):
    w = watching(watch_timeout=30.0)
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    lists_before = len(service_lists(emu))
    stop = threading.Event()

    def closer():
        while not stop.wait(1.0):
            emu.close_watches()
    thread = threading.Thread(target=closer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 4.0
        i = 0
        while time.monotonic() < deadline:  # ~4 closes land in the middle of this stream of writes
            emu.set_object(svc(f"s{i:04d}"))
            if i % 3 == 0:
                emu.set_object(svc(f"s{i:04d}", externalTrafficPolicy="Local"))
            if i % 5 == 4:
                emu.delete_object("v1", "Service", "default", f"s{i - 1:04d}")
            i += 1
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    expected = {f"default/{o['metadata']['name']}": views.service_from_dict(o)
                for o in emu.snapshot()["v1/Service"]}
    wait_until(lambda: dict(w.snapshot().services) == expected, 10, "the cache to equal the store")
    assert w.restarts("services") >= 3  # the watches really were cut...
    assert len(service_lists(emu)) == lists_before  # ...and resumed from their RV, never relisted
    assert not w.state("stale")


def _outage(emu, watching, seconds: float) -> None:
    emu.load_objects([svc(f"s{i:03d}") for i in range(100)] + [endpoint_slice("s000-1", "s000"), node("node-a")])
    w = watching(backoff_max=2.0)
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    before_snapshot, before = w.snapshot(), w.changes
    emu.outage(seconds)
    wait_until(lambda: w.state("stale"), 10, "the stale flag during the outage")
    # Hold for most of the outage: nothing may come out of the watcher meanwhile.
    time.sleep(max(0.0, seconds - 2.0))
    assert w.changes == before and w.snapshot() == before_snapshot, "the outage changed the state downstream"
    wait_until(lambda: not w.state("stale"), seconds + 20, "recovery after the outage")
    assert w.changes == before, "a relist after the outage produced a change"
    assert w.snapshot() == before_snapshot
    for resource in ("services", "endpointslices", "nodes"):
        assert w.restarts(resource) >= 1
    emu.set_object(svc("after"))  # and it follows changes again
    wait_until(lambda: "default/after" in w.snapshot().services, 10, "a change after the recovery")


def test_api_outage_withdraws_nothing_and_recovers(emu, watching):
    _outage(emu, watching, 6.0)


@pytest.mark.slow
def test_60s_api_outage_withdraws_nothing_and_recovers(emu, watching):
    _outage(emu, watching, 60.0)


def test_errors_on_relist_back_off_and_keep_the_cache(emu, watching):
    emu.load_objects([svc("web")])
    w = watching()
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    before = w.changes
    emu.fail_next("GET", "/api/v1/services", 503, n=4)  # the relists after the cut fail 4 times
    emu.close_watches()
    emu.fail_next("GET", "/api/v1/services", 500, n=1)
    emu.compact()
    emu.close_watches()
    wait_until(lambda: w.state("resource_versions")["services"] is not None and not w.state("stale")
               and w.restarts("services") >= 2, 20, "recovery after the failing relists")
    assert w.changes == before
    emu.set_object(svc("after"))
    wait_until(lambda: "default/after" in w.snapshot().services, 10, "a change after the recovery")


# ---- the allocator's writer, wired as in the daemon -------------------------------------------

@pytest.fixture
def replicas(emu):
    made: list[Replica] = []

    def make(cfg: Config, identity: str, **kwargs: Any) -> Replica:
        made.append(Replica(emu, cfg, identity, **kwargs))
        return made[-1]
    yield make
    for r in made:
        r.close()


def test_service_gets_ip_within_one_reconcile_and_delete_releases_it(emu, replicas):
    r = replicas(config("203.0.113.10/32"), "node-a", events=True)  # a pool of exactly one address
    wait_until(lambda: r.elector.is_leader and r.watcher.synced, 10, "leader and synced")
    emu.set_object(svc("first"))
    # Two writes (the annotation on the main resource, then status): wait for both.
    wait_until(lambda: ingress_of(emu, "first") == ["203.0.113.10"] and pool_annotation_of(emu, "first") == "public",
               10, "first's status and annotation")
    # Within one reconcile: the first round that saw the Service wrote its status.
    first_seen = wait_until(lambda: next((result for keys, result in r.rounds if "default/first" in keys), None),
                            10, "the round that saw first")
    assert "default/first" in first_seen.written

    # The status comes back through the watch; the next round has nothing to write.
    emu.set_object(svc("second"))  # the pool is full: refused, with a Warning Event
    wait_until(lambda: any(e["reason"] == "AllocationFailed" for e in emu.events_for("default", "second")), 10,
               "the refusal Event")
    assert ingress_of(emu, "second") == []
    assert r.written().count("default/first") == 1, "the status was written more than once"

    emu.delete_object("v1", "Service", "default", "first")  # releases the address...
    wait_until(lambda: ingress_of(emu, "second") == ["203.0.113.10"], 10, "second gets the released address")
    wait_until(lambda: any(e["reason"] == "IPAllocated" and "203.0.113.10" in e["message"]
                           for e in emu.events_for("default", "second")), 10, "the IPAllocated Event")


def test_type_change_and_refusal_clear_the_status(emu, replicas):
    r = replicas(config("203.0.113.0/29"), "node-a")
    wait_until(lambda: r.elector.is_leader and r.watcher.synced, 10, "leader and synced")
    emu.set_object(svc("web"))
    emu.set_object(svc("other", loadBalancerClass="example.com/other"))  # not ours: never touched
    wait_until(lambda: ingress_of(emu, "web"), 10, "web's status")
    changed = emu.get_object("v1", "Service", "default", "web")  # as `kubectl patch` would: status and
    changed["spec"]["type"] = "ClusterIP"                          # annotations stay, only the type changes
    emu.set_object(changed)  # a type change releases...
    wait_until(lambda: ingress_of(emu, "web") == [] and pool_annotation_of(emu, "web") is None, 10,
               "web's status and annotation cleared")
    # The allocator trusts a status address only under our annotation: it is written
    # before the address and removed after it.
    web_patches = [q["path"].rsplit("/", 1)[-1] for q in emu.requests
                   if q["method"] == "PATCH" and "/services/web" in q["path"]]
    assert web_patches == ["web", "status", "status", "web"]
    emu.set_object(svc("asks", annotations={"bgpspeaker.io/load-balancer-ips": "203.0.113.3"}))
    wait_until(lambda: ingress_of(emu, "asks") == ["203.0.113.3"], 10, "the requested address")
    # ...and so does a request the pools refuse (a tenant cannot keep an address by asking).
    asks = emu.get_object("v1", "Service", "default", "asks")
    asks["metadata"]["annotations"]["bgpspeaker.io/load-balancer-ips"] = "198.51.100.1"
    emu.set_object(asks)  # status and our annotation still there: the writer must clear them
    wait_until(lambda: ingress_of(emu, "asks") == [] and pool_annotation_of(emu, "asks") is None, 10,
               "the refused Service's status and annotation cleared")
    assert not any(key == "default/other" for key in r.written())
    assert ingress_of(emu, "other") == []


def test_status_conflict_is_retried_from_a_fresh_read(emu, replicas):
    r = replicas(config("203.0.113.0/29"), "node-a")
    wait_until(lambda: r.elector.is_leader and r.watcher.synced, 10, "leader and synced")
    emu.fail_next("PATCH", "/api/v1/namespaces/default/services/web/status", 409, n=2)
    emu.set_object(svc("web"))
    wait_until(lambda: ingress_of(emu, "web") == ["203.0.113.0"], 10, "web's status")
    patches = [q for q in emu.requests if q["method"] == "PATCH" and q["path"].endswith("/web/status")]
    reads = [q for q in emu.requests if q["method"] == "GET" and q["path"] == "/api/v1/namespaces/default/services/web"]
    assert len(patches) == 3 and len(reads) >= 3  # two conflicts, each followed by a fresh read
    assert all(q["content_type"] == "application/merge-patch+json" for q in patches)


def test_no_write_when_status_already_matches(emu, replicas):
    emu.load_objects([svc(f"s{i}") for i in range(5)])
    r = replicas(config("203.0.113.0/29"), "node-a")
    wait_until(lambda: r.elector.is_leader and r.watcher.synced, 10, "leader and synced")
    wait_until(lambda: all(ingress_of(emu, f"s{i}") and pool_annotation_of(emu, f"s{i}") for i in range(5)), 10,
               "every status and annotation")
    writes = lambda: [q for q in emu.requests if q["method"] in ("PATCH", "PUT") and "/services/" in q["path"]]
    settled = len(writes())
    for _ in range(3):  # reconciles with nothing to do send nothing
        rounds = len(r.rounds)
        r.loop.loop.call_soon_threadsafe(r.kick)
        wait_until(lambda: len(r.rounds) > rounds, 10, "one more reconcile")
    assert len(writes()) == settled


def test_stop_ends_every_thread_promptly_even_mid_watch(emu):
    w = Watching(emu)
    try:
        wait_until(lambda: w.state("synced"), 10, "initial sync")
    finally:
        w.close()  # the informers are blocked reading their watches: stop() must interrupt them
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("informer-") and t.is_alive()]
    assert leftovers == []


def test_a_server_closing_every_watch_at_once_is_not_hammered(emu, watching):
    w = watching()
    wait_until(lambda: w.state("synced"), 10, "initial sync")
    stop = threading.Event()

    def closer():  # every watch is cut a few ms after it opens, with nothing in it
        while not stop.wait(0.005):
            emu.close_watches()
    thread = threading.Thread(target=closer, daemon=True)
    before = len(emu.requests)
    thread.start()
    try:
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join()
    watches = [q for q in emu.requests[before:] if q["path"] == "/api/v1/services"]
    # Without backoff this is hundreds (one per cut); with it, a handful per second.
    assert len(watches) < 30, len(watches)
    emu.set_object(svc("after"))
    wait_until(lambda: "default/after" in w.snapshot().services, 15, "the watch resumes afterwards")
