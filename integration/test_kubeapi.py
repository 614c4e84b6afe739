"""Conformance tests for the Kubernetes API emulator, driven by the official client and kubectl.

Each test holds the emulator to one behaviour from docs/reference/kube-emulator.md (section 7
items are named in the docstrings). They need only loopback sockets; every wait is a
condition with a deadline, and each test works in its own namespace.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from integration.kubeapi import KubeEmulator, RemoteEmulator, run_emulator
from integration.lab.wait import wait_until

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- fixtures and helpers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def emu():
    with run_emulator(bookmark_interval=3600) as e:
        yield e


@pytest.fixture(scope="module")
def api_client(emu):
    return config.new_client_from_config(config_file=emu.kubeconfig)


@pytest.fixture
def core(api_client):
    return client.CoreV1Api(api_client)


@pytest.fixture
def ns(request):
    return re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")


def svc(name, namespace, labels=None, **spec):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], **spec}}


def slice_for(name, namespace, service, ip="10.0.0.1"):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}], "ports": [{"port": 80}]}


class Collector:
    """Runs Watch.stream in a thread and collects (type, raw object) pairs."""

    def __init__(self, func, *args, **kwargs):
        self.events, self.error, self.done = [], None, False
        self.watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func, args, kwargs):
        try:
            for event in self.watch.stream(func, *args, **kwargs):
                self.events.append((event["type"], event["raw_object"]))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc
        finally:
            self.done = True

    def names(self):
        return [(t, o["metadata"].get("name")) for t, o in self.events]

    def wait_for(self, n, what="events"):
        return wait_until(lambda: len(self.events) >= n, 10, f"{n} {what}, have {self.names()}")

    def stop(self):
        self.watch.stop()
        self._thread.join(10)


def kubectl(emu, *args, input=None, check=True):
    return subprocess.run(["kubectl", "--kubeconfig", emu.kubeconfig, *args], input=input,
                          capture_output=True, text=True, timeout=60, check=check)


def raw_get(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


# ---- 1 discovery and errors --------------------------------------------------------------

def test_discovery_documents(emu, api_client):
    assert raw_get(emu.url + "/version")["gitVersion"] == "v1.30.0"
    assert raw_get(emu.url + "/version/")["major"] == "1"
    assert client.VersionApi(api_client).get_code().git_version == "v1.30.0"
    assert raw_get(emu.url + "/api") ["versions"] == ["v1"]
    v1 = raw_get(emu.url + "/api/v1")
    entries = {r["name"]: r for r in v1["resources"]}
    assert v1["groupVersion"] == "v1"
    assert {"services", "services/status", "nodes", "nodes/status", "events", "namespaces",
            "endpoints"} <= set(entries)
    assert entries["services"]["shortNames"] == ["svc"] and "shortNames" not in entries["services/status"]
    groups = {g["preferredVersion"]["groupVersion"] for g in raw_get(emu.url + "/apis")["groups"]}
    assert groups == {"discovery.k8s.io/v1", "events.k8s.io/v1", "coordination.k8s.io/v1"}
    for gv in groups:
        assert raw_get(f"{emu.url}/apis/{gv}")["groupVersion"] == gv


def test_errors_are_status_objects(core, ns):
    with pytest.raises(ApiException) as err:
        core.read_namespaced_service("missing", ns)
    body = json.loads(err.value.body)
    assert (err.value.status, body["kind"], body["reason"], body["details"]["name"]) == \
        (404, "Status", "NotFound", "missing")
    core.create_namespaced_service(ns, svc("a", ns))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(ns, svc("a", ns))
    assert (err.value.status, json.loads(err.value.body)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service(ns, svc("b", "elsewhere"))
    assert (err.value.status, json.loads(err.value.body)["reason"]) == (400, "BadRequest")


# ---- section 7 items -----------------------------------------------------------------------

def test_watch_from_list_rv_has_no_duplicates(emu, core, ns):
    """7.1: list, then watch from the list's RV: only what happened after the list."""
    for name in ("a", "b", "c"):
        core.create_namespaced_service(ns, svc(name, ns))
    listed = core.list_namespaced_service(ns)
    assert [s.metadata.name for s in listed.items] == ["a", "b", "c"]
    core.create_namespaced_service(ns, svc("d", ns))
    core.delete_namespaced_service("a", ns)
    w = Collector(core.list_namespaced_service, ns, resource_version=listed.metadata.resource_version,
                  timeout_seconds=10)
    w.wait_for(2)
    core.patch_namespaced_service("b", ns, {"metadata": {"labels": {"x": "1"}}})
    w.wait_for(3)
    w.stop()
    assert w.names() == [("ADDED", "d"), ("DELETED", "a"), ("MODIFIED", "b")]
    deleted = w.events[1][1]
    assert int(deleted["metadata"]["resourceVersion"]) > int(listed.metadata.resource_version)
    # no resourceVersion: synthetic ADDED for each current object, then live events
    w = Collector(core.list_namespaced_service, ns, timeout_seconds=10)
    w.wait_for(3)
    w.stop()
    assert w.names() == [("ADDED", "b"), ("ADDED", "c"), ("ADDED", "d")]


def test_compacted_watch_gets_410_and_client_retries_once(emu, core, ns):
    """7.2: a watch below the compaction point gets an ERROR 410 event; Watch.stream
    retries once from the same RV, then raises ApiException(410)."""
    core.create_namespaced_service(ns, svc("a", ns))
    rv = core.list_namespaced_service(ns).metadata.resource_version
    emu.compact()
    before = len(emu.requests)
    w = watch.Watch()
    with pytest.raises(ApiException) as err:
        for _ in w.stream(core.list_namespaced_service, ns, resource_version=rv):
            pass
    assert err.value.status == 410 and "Expired" in err.value.reason
    watches = [r for r in emu.requests[before:] if r["query"].get("watch")]
    assert [r["query"]["resourceVersion"] for r in watches] == [rv, rv]
    # the raw event, as an informer sees it
    conn = http.client.HTTPConnection(emu.url.removeprefix("http://"), timeout=10)
    conn.request("GET", f"/api/v1/namespaces/{ns}/services?watch=1&resourceVersion={rv}")
    resp = conn.getresponse()
    event = json.loads(resp.read().decode().splitlines()[0])
    assert resp.status == 200 and event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"], event["object"]["kind"]) == (410, "Expired", "Status")
    assert event["object"]["message"].startswith(f"too old resource version: {rv}")
    # with timeout_seconds the client does not retry
    before = len(emu.requests)
    with pytest.raises(ApiException):
        for _ in watch.Watch().stream(core.list_namespaced_service, ns, resource_version=rv, timeout_seconds=5):
            pass
    assert len([r for r in emu.requests[before:] if r["query"].get("watch")]) == 1


def test_timeout_seconds_closes_stream(emu, core, ns):
    """7.3: the stream ends by itself; Watch.stream(timeout_seconds) returns."""
    core.create_namespaced_service(ns, svc("a", ns))
    w = Collector(core.list_namespaced_service, ns, timeout_seconds=1)
    wait_until(lambda: w.done, 10, "the watch to end on its own")
    assert w.error is None and w.names() == [("ADDED", "a")]


def test_label_selector_transitions(emu, core, ns):
    """7.4: an object leaving the selector is DELETED for the watcher, entering it is ADDED."""
    core.create_namespaced_service(ns, svc("a", ns, {"app": "web"}))
    core.create_namespaced_service(ns, svc("b", ns, {"app": "db"}))
    rv = core.list_namespaced_service(ns).metadata.resource_version
    w = Collector(core.list_namespaced_service, ns, label_selector="app in (web,api),!legacy",
                  resource_version=rv, timeout_seconds=10)
    core.patch_namespaced_service("a", ns, {"metadata": {"labels": {"app": "db"}}})
    core.patch_namespaced_service("b", ns, {"metadata": {"labels": {"app": "api"}}})
    core.patch_namespaced_service("b", ns, {"spec": {"ports": [{"port": 81, "protocol": "TCP"}]}})
    core.patch_namespaced_service("a", ns, {"metadata": {"labels": {"tier": "x"}}})  # still out
    core.patch_namespaced_service("b", ns, {"metadata": {"labels": {"legacy": "yes"}}})
    w.wait_for(4)
    w.stop()
    assert w.names() == [("DELETED", "a"), ("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "b")]
    assert [s.metadata.name for s in core.list_namespaced_service(ns, label_selector="app=db").items] == ["a"]
    assert [s.metadata.name for s in core.list_namespaced_service(ns, label_selector="app!=db,tier").items] == []
    assert [s.metadata.name for s in core.list_namespaced_service(ns, label_selector="app notin (db)").items] == ["b"]


def test_status_isolation_and_generation(emu, core, ns):
    """7.5: main-resource writes ignore status, /status writes ignore spec;
    generation follows spec only."""
    created = core.create_namespaced_service(ns, svc("a", ns))
    assert created.metadata.generation == 1 and created.metadata.uid and created.metadata.creation_timestamp
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}}
    out = core.patch_namespaced_service_status("a", ns, {**ingress, "spec": {"type": "ClusterIP"},
                                                         "metadata": {"labels": {"s": "1"}}})
    assert out.status.load_balancer.ingress[0].ip == "203.0.113.5"
    assert out.spec.type == "LoadBalancer" and out.metadata.labels == {"s": "1"} and out.metadata.generation == 1
    out = core.patch_namespaced_service("a", ns, {"spec": {"type": "NodePort"}, "status": {"loadBalancer": {}}})
    assert out.spec.type == "NodePort" and out.metadata.generation == 2
    assert out.status.load_balancer.ingress[0].ip == "203.0.113.5"
    body = core.read_namespaced_service("a", ns)
    body.status.load_balancer.ingress = []
    out = core.replace_namespaced_service("a", ns, body)
    assert out.status.load_balancer.ingress[0].ip == "203.0.113.5" and out.metadata.generation == 2
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{ns}-n1"}, "spec": {}}
    client.CoreV1Api(core.api_client).create_node(node)
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    out = core.patch_node_status(f"{ns}-n1", ready)
    assert out.status.conditions[0].type == "Ready" and out.metadata.generation == 1


def test_stale_resource_version_conflicts(emu, core, ns):
    """7.6: PUT or PATCH with an old resourceVersion is 409 Conflict."""
    core.create_namespaced_service(ns, svc("a", ns))
    stale = core.read_namespaced_service("a", ns)
    core.patch_namespaced_service("a", ns, {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_service("a", ns, stale)
    body = json.loads(err.value.body)
    assert (err.value.status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_service_status("a", ns, {"metadata": {"resourceVersion": stale.metadata.resource_version},
                                                       "status": {}})
    assert err.value.status == 409


def test_delete_with_a_stale_resource_version_precondition_conflicts(core, ns):
    """A DELETE whose DeleteOptions.preconditions.resourceVersion is not the object's is a
    409, and the object stays. Found by the record keeper's race test: the emulator's
    request log read the body first, and every precondition was ignored."""
    core.create_namespaced_config_map(ns, {"metadata": {"name": "pre"}, "data": {"a": "1"}})
    stale = core.read_namespaced_config_map("pre", ns).metadata.resource_version
    core.patch_namespaced_config_map("pre", ns, {"data": {"a": "2"}})
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_config_map("pre", ns, body={"preconditions": {"resourceVersion": stale}})
    assert err.value.status == 409 and "Precondition failed" in json.loads(err.value.body)["message"]
    assert core.read_namespaced_config_map("pre", ns).data == {"a": "2"}
    current = core.read_namespaced_config_map("pre", ns).metadata.resource_version
    core.delete_namespaced_config_map("pre", ns, body={"preconditions": {"resourceVersion": current}})


def test_noop_patch_emits_no_event(emu, core, ns):
    """7.7: a write that changes nothing keeps the RV and emits nothing."""
    created = core.create_namespaced_service(ns, svc("a", ns, {"app": "web"}))
    rv = created.metadata.resource_version
    w = Collector(core.list_namespaced_service, ns, resource_version=rv, timeout_seconds=10)
    out = core.patch_namespaced_service("a", ns, {"metadata": {"labels": {"app": "web"}}})
    assert out.metadata.resource_version == rv
    assert core.replace_namespaced_service("a", ns, core.read_namespaced_service("a", ns)).metadata.resource_version == rv
    emu.set_object(svc("a", ns, {"app": "web"}))
    assert core.read_namespaced_service("a", ns).metadata.resource_version == rv
    core.patch_namespaced_service("a", ns, {"metadata": {"labels": {"app": "api"}}})
    w.wait_for(1)
    w.stop()
    assert [(t, o["metadata"]["labels"]["app"]) for t, o in w.events] == [("MODIFIED", "api")]


def test_generate_name(core, ns):
    """7.8: generateName gets 5 random [a-z0-9]."""
    body = svc(None, ns)
    body["metadata"] = {"generateName": "web-", "namespace": ns}
    names = {core.create_namespaced_service(ns, body).metadata.name for _ in range(3)}
    assert len(names) == 3 and all(re.fullmatch(r"web-[a-z0-9]{5}", n) for n in names)


def test_put_replace(core, ns):
    """7.9: PUT replaces the object (labels dropped, spec replaced), keeps uid and
    creationTimestamp, bumps RV and generation."""
    old = core.create_namespaced_service(ns, svc("a", ns, {"keep": "no"}))
    new = svc("a", ns, {"fresh": "yes"}, type="ClusterIP")
    new["metadata"]["resourceVersion"] = old.metadata.resource_version
    out = core.replace_namespaced_service("a", ns, new)
    assert out.metadata.labels == {"fresh": "yes"} and out.spec.type == "ClusterIP"
    assert out.metadata.uid == old.metadata.uid and out.metadata.generation == 2
    assert int(out.metadata.resource_version) > int(old.metadata.resource_version)
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_service("missing", ns, svc("missing", ns))
    assert err.value.status == 404


def test_endpointslice_watch_by_service_label(emu, api_client, ns):
    """7.10: the informer's EndpointSlice watch, by kubernetes.io/service-name."""
    disco = client.DiscoveryV1Api(api_client)
    disco.create_namespaced_endpoint_slice(ns, slice_for("web-1", ns, "web"))
    emu.set_object(slice_for("db-1", ns, "db"))
    w = Collector(disco.list_namespaced_endpoint_slice, ns, label_selector="kubernetes.io/service-name=web",
                  timeout_seconds=10)
    w.wait_for(1)
    emu.set_object(slice_for("web-2", ns, "web", "10.0.0.2"))
    emu.set_object(slice_for("db-2", ns, "db"))
    disco.patch_namespaced_endpoint_slice("web-1", ns, [{"op": "replace", "path": "/endpoints/0/conditions/ready",
                                                         "value": False}])
    emu.delete_object("discovery.k8s.io/v1", "EndpointSlice", ns, "web-2")
    w.wait_for(4)
    w.stop()
    assert w.names() == [("ADDED", "web-1"), ("ADDED", "web-2"), ("MODIFIED", "web-1"), ("DELETED", "web-2")]
    assert w.events[2][1]["endpoints"][0]["conditions"]["ready"] is False
    listed = disco.list_endpoint_slice_for_all_namespaces(label_selector="kubernetes.io/service-name=db")
    assert sorted(s.metadata.name for s in listed.items if s.metadata.namespace == ns) == ["db-1", "db-2"]


def test_kubectl_raw_get_create_watch(emu, ns, tmp_path):
    """7.11: kubectl --raw, and plain kubectl get/create/patch/delete/watch."""
    assert json.loads(kubectl(emu, "get", "--raw", "/api/v1").stdout)["groupVersion"] == "v1"
    manifest = tmp_path / "svc.json"
    manifest.write_text(json.dumps(svc("raw", ns)))
    created = json.loads(kubectl(emu, "create", "--raw", f"/api/v1/namespaces/{ns}/services",
                                 "-f", str(manifest)).stdout)
    assert created["metadata"]["uid"]
    manifest.write_text(json.dumps(svc("web", ns, {"app": "web"})))
    kubectl(emu, "create", "-f", str(manifest))
    listed = json.loads(kubectl(emu, "get", "services", "-A", "-o", "json").stdout)
    assert {("raw", ns), ("web", ns)} <= {(i["metadata"]["name"], i["metadata"]["namespace"]) for i in listed["items"]}
    kubectl(emu, "-n", ns, "patch", "service", "web", "-p", '{"metadata":{"labels":{"x":"1"}}}')
    kubectl(emu, "-n", ns, "patch", "service", "web", "--type", "json",
            "-p", '[{"op":"add","path":"/metadata/labels/y","value":"2"}]')
    kubectl(emu, "-n", ns, "patch", "service", "web", "--subresource", "status", "--type", "merge",
            "-p", '{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.1"}]}}}')
    got = json.loads(kubectl(emu, "-n", ns, "get", "svc", "web", "-o", "json").stdout)
    assert got["metadata"]["labels"] == {"app": "web", "x": "1", "y": "2"}
    assert got["status"]["loadBalancer"]["ingress"] == [{"ip": "198.51.100.1"}]
    table = kubectl(emu, "-n", ns, "get", "svc", "web").stdout.split()     # served as a Table
    assert table[:6] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert table[6:11] == ["web", "LoadBalancer", "<none>", "198.51.100.1", "80/TCP"]
    # --raw watch: the stream ends with timeoutSeconds; each line is an event
    out = kubectl(emu, "get", "--raw", f"/api/v1/namespaces/{ns}/services?watch=true&timeoutSeconds=1").stdout
    assert sorted((e["type"], e["object"]["metadata"]["name"]) for e in map(json.loads, out.splitlines())) == \
        [("ADDED", "raw"), ("ADDED", "web")]
    # kubectl get --watch sees a later change
    proc = subprocess.Popen(["kubectl", "--kubeconfig", emu.kubeconfig, "-n", ns, "get", "svc", "--watch",
                             "-o", "name"], stdout=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: "service/web" in "".join(lines), 20, "kubectl watch to list")
        emu.set_object(svc("late", ns))
        wait_until(lambda: "service/late" in "".join(lines), 20, "kubectl watch to see a new service")
    finally:
        proc.terminate()
        proc.wait(10)
    kubectl(emu, "-n", ns, "delete", "service", "web")
    assert emu.get_object("v1", "Service", ns, "web") is None


# ---- beyond section 7 -------------------------------------------------------------------------

def test_bookmarks(emu, core, ns):
    core.create_namespaced_service(ns, svc("a", ns))
    rv = core.list_namespaced_service(ns).metadata.resource_version
    w = Collector(core.list_namespaced_service, ns, resource_version=rv, allow_watch_bookmarks=True,
                  timeout_seconds=10)
    emu.set_object(svc("other", "elsewhere-" + ns))    # moves the RV without an event for this watch
    # ask until one arrives: the watch may not be registered yet when the first bookmark goes out
    wait_until(lambda: emu.bookmark() or w.events, 10, "a bookmark")
    current = core.list_namespaced_service(ns).metadata.resource_version
    w.stop()
    kind, obj = w.events[0]
    assert kind == "BOOKMARK" and obj["kind"] == "Service" and obj["metadata"]["resourceVersion"] == current
    assert w.watch.resource_version == current
    plain = Collector(core.list_namespaced_service, ns, resource_version=rv, timeout_seconds=1)
    emu.bookmark()
    wait_until(lambda: plain.done, 10, "the plain watch to end")
    assert plain.events == []


def test_outage_refuses_connections_then_recovers(core, ns):
    with run_emulator() as emu:
        api = client.CoreV1Api(config.new_client_from_config(config_file=emu.kubeconfig))
        api.create_namespaced_service(ns, svc("a", ns))
        w = Collector(api.list_namespaced_service, ns, timeout_seconds=30)
        w.wait_for(1)
        emu.outage(3.0)
        wait_until(lambda: w.done, 10, "the open watch to be cut")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", emu.port), timeout=5).close()
        items = wait_until(lambda: api.list_namespaced_service(ns).items, 20, "the API to come back")
        assert [s.metadata.name for s in items] == ["a"]


def test_fail_next_and_delay(emu, core, ns):
    core.create_namespaced_service(ns, svc("a", ns))
    # urllib3 under the official client retries 429/503 that carry Retry-After (up to 3 times)
    before = len(emu.requests)
    emu.fail_next("GET", f"/api/v1/namespaces/{ns}/services*", 503, n=2, retry_after=0)
    assert core.read_namespaced_service("a", ns).metadata.name == "a"
    assert [r["method"] for r in emu.requests[before:]] == ["GET"] * 3
    emu.fail_next("*", f"/api/v1/namespaces/{ns}/services/a", 503)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_service("a", ns)
    assert (err.value.status, json.loads(err.value.body)["reason"]) == (503, "ServiceUnavailable")
    emu.fail_next("GET", "/api/v1/nodes", 429, retry_after=7)
    with pytest.raises(urllib.error.HTTPError) as raw:
        raw_get(emu.url + "/api/v1/nodes")
    assert (raw.value.code, raw.value.headers["Retry-After"]) == (429, "7")
    assert json.loads(raw.value.read())["reason"] == "TooManyRequests"
    emu.fail_next("PATCH", "*/services/a/status", 429)
    core.patch_namespaced_service("a", ns, {"metadata": {"labels": {"x": "1"}}})   # other path, not failed
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_service_status("a", ns, {"status": {}})
    assert err.value.status == 429
    emu.delay(f"/api/v1/namespaces/{ns}/services/a", 2.0)
    done = threading.Event()
    threading.Thread(target=lambda: (core.read_namespaced_service("a", ns), done.set()), daemon=True).start()
    wait_until(lambda: any(r["path"] == f"/api/v1/namespaces/{ns}/services/a" and r["method"] == "GET"
                           for r in emu.requests[-3:]), 10, "the delayed request to arrive")
    assert not done.is_set()
    wait_until(done.is_set, 10, "the delayed request to finish")
    emu.delay(f"/api/v1/namespaces/{ns}/services/a", 0)
    last = [r for r in emu.requests if r["method"] == "PATCH"][-1]
    assert last["content_type"] == "application/strategic-merge-patch+json" and last["body"] == {"status": {}}


def test_delete_with_finalizers(emu, core, ns):
    body = svc("a", ns)
    body["metadata"]["finalizers"] = ["bgpspeaker.io/ip"]
    created = core.create_namespaced_service(ns, body)
    w = Collector(core.list_namespaced_service, ns, resource_version=created.metadata.resource_version,
                  timeout_seconds=10)
    core.delete_namespaced_service("a", ns)
    marked = core.read_namespaced_service("a", ns)
    assert marked.metadata.deletion_timestamp is not None
    core.patch_namespaced_service("a", ns, {"metadata": {"finalizers": None}})
    w.wait_for(2)
    w.stop()
    assert [t for t, _ in w.events] == ["MODIFIED", "DELETED"]
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_service("a", ns)
    assert err.value.status == 404


def test_patch_types_and_field_selectors(emu, core, ns):
    core.create_namespaced_service(ns, svc("a", ns, {"x": "1", "y": "2"}))
    out = core.patch_namespaced_service("a", ns, {"metadata": {"labels": {"x": None}}},
                                        _content_type="application/merge-patch+json")
    assert out.metadata.labels == {"y": "2"}
    out = core.patch_namespaced_service("a", ns, [{"op": "remove", "path": "/metadata/labels/y"}])
    assert not out.metadata.labels
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_service("a", ns, {"spec": {}}, _content_type="application/apply-patch+yaml")
    assert err.value.status == 415
    core.create_namespaced_service(ns, svc("b", ns))
    names = lambda sel: [s.metadata.name for s in core.list_namespaced_service(ns, field_selector=sel).items]
    assert names("metadata.name=b") == ["b"] and names("metadata.name!=b") == ["a"]
    assert names(f"metadata.namespace=={ns},metadata.name=a") == ["a"]
    with pytest.raises(ApiException) as err:
        names("spec.ports=1")
    assert err.value.status == 400 and "field label not supported" in json.loads(err.value.body)["message"]


def test_list_paging(emu, core, ns):
    emu.load_objects([svc(f"s{i:02d}", ns) for i in range(7)])
    page = core.list_namespaced_service(ns, limit=3)
    seen = [s.metadata.name for s in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_service(ns, limit=3, _continue=page.metadata._continue)
        seen += [s.metadata.name for s in page.items]
    assert seen == [f"s{i:02d}" for i in range(7)]
    with pytest.raises(ApiException) as err:
        core.list_namespaced_service(ns, limit=3, _continue="bm9wZTow")
    assert (err.value.status, json.loads(err.value.body)["reason"]) == (410, "Expired")



def test_list_pages_come_from_the_first_pages_snapshot(emu, core, ns):
    """Later pages show the objects as they were at the first page, though each page is
    encoded only when asked for (a write in between makes a new version, not a new page)."""
    emu.load_objects([svc(f"s{i:02d}", ns) for i in range(6)])
    first = core.list_namespaced_service(ns, limit=3)
    core.patch_namespaced_service("s04", ns, {"metadata": {"labels": {"changed": "yes"}}})
    core.delete_namespaced_service("s05", ns)
    core.create_namespaced_service(ns, svc("s06", ns))
    rest = core.list_namespaced_service(ns, limit=3, _continue=first.metadata._continue)
    assert [s.metadata.name for s in rest.items] == ["s03", "s04", "s05"]
    assert "changed" not in (rest.items[1].metadata.labels or {})
    assert rest.metadata.resource_version == first.metadata.resource_version


def test_a_list_page_encodes_only_its_own_items():
    """A real API server encodes a page's items, not the whole list, per request: the
    emulator encoding all of them at the first page held a 50,000-object list back 0.45 s."""
    from integration.kubeapi.resources import resource_for
    from integration.kubeapi.store import Store
    store, services = Store(), resource_for("v1", "Service")
    for i in range(5):
        store.set_object(svc(f"s{i}", "default"))
    _, items, cont = store.list(services, None, None, None, limit=2)
    assert len(items) == 2 and cont
    encoded = [c._json is not None for c in store.matching(services, None, None, None)]
    assert encoded == [True, True, False, False, False]

def test_events_and_leases(emu, api_client, core, ns):
    event = {"metadata": {"generateName": "web.", "namespace": ns}, "reason": "IPAllocated",
             "message": "assigned 203.0.113.5", "type": "Normal", "count": 1,
             "involvedObject": {"kind": "Service", "namespace": ns, "name": "web"}}
    created = core.create_namespaced_event(ns, event)
    core.patch_namespaced_event(created.metadata.name, ns, {"count": 2})
    ev2 = {"metadata": {"name": "web.2", "namespace": ns}, "reason": "Invalid", "action": "Allocate",
           "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "bgpspeaker",
           "reportingInstance": "x", "type": "Warning", "regarding": {"kind": "Service", "namespace": ns, "name": "web"}}
    client.EventsV1Api(api_client).create_namespaced_event(ns, ev2)
    found = emu.events_for(ns, "web")
    assert sorted((e["apiVersion"], e.get("count")) for e in found) == [("events.k8s.io/v1", None), ("v1", 2)]
    listed = core.list_namespaced_event(ns, field_selector="involvedObject.name=web,reason=IPAllocated")
    assert len(listed.items) == 1
    leases = client.CoordinationV1Api(api_client)
    lease = {"metadata": {"name": "bgpspeaker-allocator", "namespace": ns},
             "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 15}}
    got = leases.create_namespaced_lease(ns, lease)
    got.spec.holder_identity = "node-2"
    renewed = leases.replace_namespaced_lease(lease["metadata"]["name"], ns, got)
    assert renewed.spec.holder_identity == "node-2"
    got.spec.holder_identity = "node-3"     # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        leases.replace_namespaced_lease(lease["metadata"]["name"], ns, got)
    assert err.value.status == 409


def test_cluster_scoped_resources_and_initial_events(emu, core, ns):
    """Namespaces and Nodes (with /status), and sendInitialEvents for newer clients."""
    created = core.create_namespace({"metadata": {"name": ns, "labels": {"team": "net"}}})
    out = core.patch_namespace_status(ns, {"status": {"phase": "Active"}, "spec": {"finalizers": ["x"]}})
    assert out.status.phase == "Active" and not out.spec and out.metadata.uid == created.metadata.uid
    assert ns in [n.metadata.name for n in core.list_namespace(label_selector="team=net").items]
    stored = emu.set_object({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": f"{ns}-n1", "namespace": "ignored", "labels": {"rack": "r1"}, "creationTimestamp": "2020-01-01T00:00:00Z"}})
    assert stored["metadata"]["creationTimestamp"] == "2020-01-01T00:00:00Z"   # hooks may set identity
    assert "namespace" not in stored["metadata"]
    url = f"/api/v1/nodes?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan" \
          f"&allowWatchBookmarks=true&labelSelector=rack%3Dr1&timeoutSeconds=1"
    with urllib.request.urlopen(emu.url + url, timeout=10) as resp:
        events = [json.loads(line) for line in resp.read().splitlines()]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == \
        [("ADDED", f"{ns}-n1"), ("BOOKMARK", None)]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    core.delete_node(f"{ns}-n1")
    assert emu.get_object("v1", "Node", None, f"{ns}-n1") is None
    with pytest.raises(OSError):
        run_emulator(port=emu.port).__enter__()      # a taken port fails loudly


def test_pause_and_resume_events(emu, core, ns):
    rv = core.create_namespaced_service(ns, svc("a", ns)).metadata.resource_version
    emu.pause_events()
    try:
        w = Collector(core.list_namespaced_service, ns, resource_version=rv, timeout_seconds=1)
        emu.set_object(svc("b", ns))
        wait_until(lambda: w.done, 10, "the paused watch to time out")
        assert w.events == []
        w = Collector(core.list_namespaced_service, ns, resource_version=rv, timeout_seconds=10)
        emu.set_object(svc("c", ns))
    finally:
        emu.resume_events()
    w.wait_for(2)
    w.stop()
    assert w.names() == [("ADDED", "b"), ("ADDED", "c")]


def test_hold_events_of_one_resource_lets_through_what_it_is_told(emu, core, ns):
    """hold_events: one resource's streams wait (others flow), but for the next
    `let_through` events, in order; release_events sends the rest."""
    rv = core.create_namespaced_service(ns, svc("a", ns)).metadata.resource_version
    cm_rv = core.create_namespaced_config_map(ns, {"metadata": {"name": "c0"}}).metadata.resource_version
    emu.hold_events("services")
    try:
        w = Collector(core.list_namespaced_service, ns, resource_version=rv, timeout_seconds=10)
        cms = Collector(core.list_namespaced_config_map, ns, resource_version=cm_rv, timeout_seconds=10)
        for name in ("b", "c", "d"):
            emu.set_object(svc(name, ns))
        core.create_namespaced_config_map(ns, {"metadata": {"name": "c1"}})
        cms.wait_for(1)  # another resource flows, written after the held ones
        assert w.events == []
        emu.hold_events("services", let_through=1)
        w.wait_for(1)
        assert w.names() == [("ADDED", "b")]
        emu.hold_events("services", let_through=1)
        w.wait_for(2)
        assert w.names() == [("ADDED", "b"), ("ADDED", "c")]
    finally:
        emu.release_events("services")
    w.wait_for(3)
    w.stop()
    cms.stop()
    assert w.names() == [("ADDED", "b"), ("ADDED", "c"), ("ADDED", "d")]


def test_a_bookmark_does_not_count_against_a_holds_let_through(emu, core, ns):
    """A bookmark queued in a held stream goes with the next change let through and is not
    counted as one: counted, a bookmark (every 30 s on a real watch) could use up a test's
    let_through=1 and the change it meant to let through would stay held (review)."""
    rv = core.create_namespaced_service(ns, svc("a", ns)).metadata.resource_version
    emu.hold_events("services")
    conn = http.client.HTTPConnection(emu.url.removeprefix("http://"), timeout=10)
    try:
        conn.request("GET", f"/api/v1/namespaces/{ns}/services?watch=true&resourceVersion={rv}"
                            "&allowWatchBookmarks=true&timeoutSeconds=2")
        resp = conn.getresponse()  # the watch is registered once its headers are sent
        emu.bookmark()
        emu.set_object(svc("b", ns))
        emu.set_object(svc("c", ns))
        emu.hold_events("services", let_through=1)
        events = [json.loads(line) for line in resp.read().splitlines()]  # until timeoutSeconds
    finally:
        emu.release_events("services")
        conn.close()
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [("BOOKMARK", None), ("ADDED", "b")]


def test_close_watches_and_slow_watcher_is_dropped(ns):
    with run_emulator(watch_buffer=10) as emu:
        api = client.CoreV1Api(config.new_client_from_config(config_file=emu.kubeconfig))
        rv = api.create_namespaced_service(ns, svc("a", ns)).metadata.resource_version
        # a watcher that does not read while 1000 events arrive in one go: dropped, writers unaffected
        conn = http.client.HTTPConnection(emu.url.removeprefix("http://"), timeout=10)
        conn.request("GET", f"/api/v1/namespaces/{ns}/services?watch=true&resourceVersion={rv}")
        resp = conn.getresponse()
        assert emu.load_objects([svc(f"s{i}", ns) for i in range(1000)]) == 1000
        assert resp.read() == b""            # the stream ended, nothing buffered was sent
        assert len(api.list_namespaced_service(ns).items) == 1001
        # close_watches ends every stream; Watch.stream without a timeout resumes from its last RV
        w = Collector(api.list_namespaced_service, ns, resource_version=api.list_namespaced_service(ns).metadata.resource_version)
        emu.set_object(svc("before", ns))
        w.wait_for(1)
        emu.close_watches()
        wait_until(lambda: len([r for r in emu.requests if r["query"].get("watch")]) >= 3, 10, "the client to re-watch")
        emu.set_object(svc("after", ns))
        w.wait_for(2)
        w.stop()
        assert w.names() == [("ADDED", "before"), ("ADDED", "after")]


def test_many_concurrent_watchers(emu, core, ns):
    rv = core.create_namespaced_service(ns, svc("a", ns)).metadata.resource_version
    watchers = [Collector(core.list_namespaced_service, ns, resource_version=rv, timeout_seconds=20)
                for _ in range(20)]
    wait_until(lambda: len([r for r in emu.requests if r["path"] == f"/api/v1/namespaces/{ns}/services"
                            and r["query"].get("watch")]) >= 20, 10, "20 watches")
    emu.set_object(svc("b", ns))
    for w in watchers:
        w.wait_for(1)
        w.stop()
        assert w.names() == [("ADDED", "b")]


def test_in_process_emulator(tmp_path):
    """KubeEmulator on the test's own event loop; the blocking client runs in a thread."""
    async def scenario():
        emu = await KubeEmulator().start()
        try:
            path = emu.write_kubeconfig(tmp_path / "kubeconfig")
            emu.set_object(svc("a", "default"))
            api = client.CoreV1Api(config.new_client_from_config(config_file=path))
            return await asyncio.to_thread(lambda: [s.metadata.name for s in api.list_namespaced_service("default").items])
        finally:
            await emu.stop()
    assert asyncio.run(scenario()) == ["a"]


def test_standalone_process_and_remote_hooks(tmp_path, ns):
    objects = tmp_path / "objects.yaml"
    objects.write_text(json.dumps({"kind": "List", "items": [svc("seed", ns)]}))
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "integration.kubeapi", "--port", "0",
                             "--kubeconfig", str(kubeconfig), "--objects", str(objects)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready http://127.0.0.1:")
        remote = RemoteEmulator(line.split()[1])
        api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        assert [s.metadata.name for s in api.list_namespaced_service(ns).items] == ["seed"]
        remote.set_object(svc("added", ns))
        assert remote.get_object("v1", "Service", ns, "added")["metadata"]["uid"]
        remote.load_objects([slice_for("added-1", ns, "added")])
        assert len(remote.snapshot()["discovery.k8s.io/v1/EndpointSlice"]) == 1
        remote.delete_object("v1", "Service", ns, "seed")
        assert remote.get_object("v1", "Service", ns, "seed") is None
        rv = api.list_namespaced_service(ns).metadata.resource_version
        remote.compact()
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(api.list_namespaced_service, ns, resource_version=rv, timeout_seconds=5):
                pass
        assert err.value.status == 410
        remote.fail_next("GET", "/api/v1/nodes", 500)
        with pytest.raises(ApiException) as err:
            api.list_node()
        assert err.value.status == 500
        assert any(r["path"] == "/api/v1/nodes" for r in remote.requests)
        remote.outage(3.0)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(line.rsplit(":", 1)[1])), timeout=5).close()
        wait_until(lambda: api.list_namespaced_service(ns).items, 20, "the standalone API to come back")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_bad_requests_answer_with_status(emu):
    for path, code in (("/api/v1/namespaces/x/services?limit=abc", 400), ("/api/v1/nope", 404),
                       ("/api/v1/services?labelSelector=a%20in%20b", 400), ("/nowhere", 404),
                       ("/api/v1/namespaces/x/services/a/scale", 404), ("/apis/apps/v1", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            raw_get(emu.url + path)
        body = json.loads(err.value.read())
        assert (err.value.code, body["kind"], body["code"]) == (code, "Status", code), path
