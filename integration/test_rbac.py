"""The shipped RBAC is exactly what the code calls: derived from the requests the API saw.

A daemon run against the emulator (the same world as test_daemon.py: a Service announced
and its status written by the leader, a refused community that makes an Event, a drain
and undrain, a SIGTERM that releases the Lease) records every request; each becomes
(apiGroup, resource, verb, namespace) the way the API server's authorizer sees it, and
must be granted by configs/kubernetes/rbac.yaml (ClusterRoles cluster-wide, Roles in
their namespace). The other way round, every granted verb must have been used, except
the few listed in NOT_EXERCISED with the code path that needs them. Nothing here is a
list of calls written by hand: when the code starts calling something new (allocation
records, say), this test asks for exactly that grant.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from integration.lab.fixtures import lab  # noqa: F401  (fixture)
from integration.lab.wait import wait_until
from integration.test_daemon import PREFIX, VIP, start_speaker, world  # noqa: F401  (fixture)

pytestmark = pytest.mark.lab

RBAC = Path(__file__).resolve().parent.parent / "configs" / "kubernetes" / "rbac.yaml"

# Granted, not seen in this run, and why the code needs them.
NOT_EXERCISED = {
    # kube/events.py: a repeated Event is a PATCH of its count (the same Event again within
    # its window); this run makes each Event once.
    ("", "events", "patch"),
    # kube/records.py: a block is patched when a second record lands in it, or a cluster
    # joins or leaves a record, and deleted when its last record goes (the last cluster
    # lets its address go); this run reads one block, creates it with one record and the
    # import marker, and deletes nothing.
    ("", "configmaps", "patch"),
    ("", "configmaps", "delete"),
}

_PATH = re.compile(r"/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)"
                   r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?")


def authorizer_view(request: dict) -> tuple[str, str, str, str | None] | None:
    """(apiGroup, resource[/subresource], verb, namespace) of a request; None for discovery."""
    match = _PATH.fullmatch(request["path"].split("?", 1)[0])
    if match is None:
        return None
    group, ns, resource, name, sub = match.group("group", "ns", "resource", "name", "sub")
    query = request.get("query") or {}
    if isinstance(query, str):
        query = parse_qs(query)
    watch = any(str(v).lower() in ("1", "true", "['1']", "['true']") for k, v in query.items() if k == "watch")
    method = request["method"].upper()
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    if verb is None:
        verb = "watch" if watch else "get" if name else "list"
    return group or "", f"{resource}/{sub}" if sub else resource, verb, ns


def grants() -> tuple[set, set]:
    """(cluster-wide grants, namespaced grants) as (group, resource, verb[, namespace])."""
    cluster, namespaced = set(), set()
    for doc in yaml.safe_load_all(RBAC.read_text()):
        if not doc or doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc["rules"]:
            for item in ((g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]):
                if doc["kind"] == "ClusterRole":
                    cluster.add(item)
                else:
                    namespaced.add((*item, doc["metadata"]["namespace"]))
    return cluster, namespaced


def test_the_authorizer_view_of_requests():
    assert authorizer_view({"method": "GET", "path": "/api/v1/services", "query": {"watch": ["true"]}}) == \
        ("", "services", "watch", None)
    assert authorizer_view({"method": "PATCH", "path": "/api/v1/namespaces/demo/services/web/status"}) == \
        ("", "services/status", "patch", "demo")
    assert authorizer_view({"method": "PUT", "path": "/apis/coordination.k8s.io/v1/namespaces/x/leases/l"}) == \
        ("coordination.k8s.io", "leases", "update", "x")
    assert authorizer_view({"method": "GET", "path": "/apis/discovery.k8s.io/v1/endpointslices"}) == \
        ("discovery.k8s.io", "endpointslices", "list", None)
    assert authorizer_view({"method": "GET", "path": "/version"}) is None


def test_rbac_is_exactly_what_a_daemon_run_calls(lab, world, tmp_path):  # noqa: F811
    router, emu, _, _ = world
    speaker = start_speaker(lab, world, tmp_path)

    def ingress():
        service = emu.get_object("v1", "Service", "demo", "web")
        return [i.get("ip") for i in (service.get("status", {}).get("loadBalancer", {}).get("ingress") or [])]
    assert wait_until(ingress, 20, "status written") == [VIP]
    # A refused community: a warning Event from this node.
    service = emu.get_object("v1", "Service", "demo", "web")
    service["metadata"].setdefault("annotations", {})["bgpspeaker.io/communities"] = "64512:999"
    emu.set_object(service)
    wait_until(lambda: any(r["method"] == "POST" and "/events" in r["path"] for r in emu.requests), 20, "an Event")
    assert speaker.control("/drain", "POST")[0] == 200
    wait_until(lambda: router.best_path(PREFIX) is None, 10, "drained")
    assert speaker.control("/undrain", "POST")[0] == 200
    wait_until(lambda: router.best_path(PREFIX), 10, "undrained")
    speaker.proc.send_signal(signal.SIGTERM)
    assert speaker.proc.wait(20) == 0

    used = {view for view in map(authorizer_view, emu.requests) if view is not None}
    cluster, namespaced = grants()
    refused = sorted(v for v in used if v[:3] not in cluster and v not in namespaced)
    assert not refused, f"the code calls what the RBAC does not grant: {refused}"
    granted = cluster | {g[:3] for g in namespaced}
    unused = granted - {v[:3] for v in used} - NOT_EXERCISED
    assert not unused, f"granted but never called (remove, or say in NOT_EXERCISED why it is needed): {unused}"
    stale = NOT_EXERCISED & {v[:3] for v in used}
    assert not stale, f"NOT_EXERCISED lists calls this run made: {stale}"
