"""Unit tests of the pure parts of bgpspeaker/kube: what the status writer decides, watch
line splitting, object keys and the elector's parameter checks. The I/O is tested
against the emulator in integration/test_kube*.py."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from bgpspeaker.allocator import ALLOCATED_FROM_POOL_ANNOTATION, Allocation, Assignment, Refusal
from bgpspeaker.kube.informer import ENDPOINT_SLICES, NODES, SERVICES, iter_lines
from bgpspeaker.kube.leader import LeaderElector
from bgpspeaker.kube.status import Desired, desired_state, needs_write
from bgpspeaker.model import ServiceView, freeze_pairs

IP = ipaddress.ip_address


def service(name="web", ingress=(), pool=None, **kwargs) -> ServiceView:
    annotations = {ALLOCATED_FROM_POOL_ANNOTATION: pool} if pool else {}
    return ServiceView("default", name, ingress_ips=tuple(ingress), annotations=freeze_pairs(annotations), **kwargs)


ASSIGNED = Allocation(assigned={"default/web": Assignment("public", (IP("203.0.113.1"), IP("2001:db8::1")))},
                      refused={"default/bad": Refusal("notInPool", "198.51.100.1 is in no pool")})


@pytest.mark.parametrize("svc, expected", [
    # assigned, status empty: write both addresses (family order) and the pool
    (service(), Desired(("203.0.113.1", "2001:db8::1"), "public")),
    # assigned and already written: nothing to send
    (service(ingress=("203.0.113.1", "2001:db8::1"), pool="public"), None),
    # status right, annotation missing (e.g. written by an older version): annotation only
    (service(ingress=("203.0.113.1", "2001:db8::1")), Desired(("203.0.113.1", "2001:db8::1"), "public")),
    # refused while holding an address: clear it
    (service("bad", ingress=("198.51.100.1",)), Desired((), None)),
    # refused and holding nothing: nothing to send
    (service("bad"), None),
    # not ours any more (type changed) but we wrote its status: clear ours
    (service("old", ingress=("203.0.113.9",), pool="public", type="ClusterIP"), Desired((), None)),
    # not ours and never written by us (another controller's class): never touched
    (service("other", ingress=("192.0.2.1",), load_balancer_class="example.com/lb"), None),
])
def test_needs_write(svc, expected):
    assert needs_write(ASSIGNED, svc) == expected


def test_a_service_waiting_for_its_record_keeps_what_its_status_shows():
    """Records mode: a pending Service (its record being created, or its store unreadable)
    is not cleared: its status stays until the allocator has decided."""
    waiting = Allocation(assigned={}, refused={}, pending={"default/web": "waiting for the allocation record"})
    assert desired_state(waiting, service(ingress=("203.0.113.1",), pool="public")) is None


def test_desired_state_of_an_unmanaged_service_is_none():
    assert desired_state(ASSIGNED, service("other", ingress=("192.0.2.1",))) is None


class FakeResponse:
    """A response whose body arrives in the given segments (as chunked reads do)."""

    def __init__(self, segments):
        self.segments = segments

    def stream(self, amt=None, decode_content=True):
        yield from self.segments


@given(st.lists(st.dictionaries(st.sampled_from(["type", "object", "x"]), st.text(max_size=20), max_size=3),
                max_size=20), st.data())
def test_iter_lines_reassembles_events_split_anywhere(events, data):
    import json
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=10)))
    segments = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    assert [json.loads(line) for line in iter_lines(FakeResponse(segments))] == events


def test_iter_lines_keeps_a_last_line_without_newline_and_skips_blank_lines():
    assert list(iter_lines(FakeResponse([b'{"a":1}\n\n', b'  \n{"b"', b":2}"]))) == [b'{"a":1}', b'{"b":2}']


def test_resource_keys():
    assert SERVICES.key({"metadata": {"namespace": "ns", "name": "web"}}) == "ns/web"
    assert ENDPOINT_SLICES.key({"metadata": {"namespace": "ns", "name": "web-x"}}) == "ns/web-x"
    assert NODES.key({"metadata": {"name": "node-a"}}) == "node-a"


@pytest.mark.parametrize("kwargs", [
    dict(lease_duration=10, renew_deadline=10),  # must step down before others may take over
    dict(renew_interval=12, renew_deadline=10),
    dict(renew_interval=0),
])
def test_elector_rejects_unsafe_timings(kwargs):
    with pytest.raises(ValueError, match="renew_interval < renew_deadline < lease_duration"):
        LeaderElector(None, "node-a", **kwargs)


def test_elector_needs_an_identity():
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(None, "")


def test_event_recorder_waits_for_tokens_instead_of_spinning():
    """A backlog larger than the token budget must cost (almost) no CPU while it drains.

    Found by integration/bench: 10,000 queued Events kept the thread at 10% of a core.
    CPU time of the recorder's thread is read from the kernel, so this is a count, not a timing.
    """
    import gc
    import os
    import threading

    import kubernetes

    from bgpspeaker.kube.events import EventRecorder, ObjectRef

    recorder = EventRecorder(kubernetes.client.ApiClient(), "node-a", qps=5.0, burst=1)
    recorder._create = lambda pending: None  # no API: measure the scheduling alone
    try:
        for i in range(10_000):  # the bench's case: one start-up Event per Service
            recorder.record(ObjectRef("ns", f"svc-{i}"), "Test", "m")
        thread_id = recorder._thread.native_id

        def thread_cpu() -> float:
            fields = open(f"/proc/self/task/{thread_id}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        # The cyclic GC off for the window: a collection of this session's large heap that
        # happens to start in the recorder's thread is charged to it (seen once in a full run).
        gc.disable()
        try:
            start = thread_cpu()
            done = threading.Event()
            done.wait(2.0)  # let the backlog sit over-budget for 2 s (a window to observe, not a sync)
            spent = thread_cpu() - start
        finally:
            gc.enable()
        assert spent < 0.1, f"the recorder thread used {spent:.2f} s of CPU in 2 s while waiting for tokens"
    finally:
        recorder.stop(timeout=0.5)


def test_object_path_quotes_names_whatever_they_hold():
    from bgpspeaker.kube.client import CORE, LEASES, object_path

    assert object_path(CORE, "services", "ns", "web", "status") == "/api/v1/namespaces/ns/services/web/status"
    assert object_path(CORE, "events", "ns") == "/api/v1/namespaces/ns/events"
    assert object_path(LEASES, "leases", "kube-system", "x") == "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x"
    # a name can never leave its path segment (names are validated elsewhere; this is the last line)
    assert object_path(CORE, "services", "a/b", "../x?y#z") == "/api/v1/namespaces/a%2Fb/services/..%2Fx%3Fy%23z"


def test_views_share_the_strings_that_recur_in_every_object():
    """Memory (issue 13's RSS): the JSON decoder builds every value anew, so each view kept
    its own "LoadBalancer", "TCP", "IPv4", namespace and node name (~400 bytes per Service
    and its slice at 10,000). Parsed twice, from separately decoded JSON, they are one."""
    import json

    from integration.bench import system

    first, second = (json.loads(json.dumps(system.service_object(i))) for i in (0, system.NAMESPACES))
    a, b = SERVICES.parse(first), SERVICES.parse(second)
    assert a.name != b.name and a.namespace is b.namespace and a.type is b.type
    assert a.ports[0].protocol is b.ports[0].protocol and a.ip_families[0] is b.ip_families[0]
    assert a.external_traffic_policy is b.external_traffic_policy and a.ip_family_policy is b.ip_family_policy
    one, two = (json.loads(json.dumps(system.slice_object(i, ["east-1"], True))) for i in (0, system.NAMESPACES))
    s, t = ENDPOINT_SLICES.parse(one), ENDPOINT_SLICES.parse(two)
    assert s.namespace is t.namespace and s.endpoints[0].node_name is t.endpoints[0].node_name
