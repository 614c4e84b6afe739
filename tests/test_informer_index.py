"""The EndpointSlice informer's index of its cache by group (Service), without a network:
the LISTs are a fake over a dict of objects, and the informer's steps (relist, watch
event, regroup) are called as its thread calls them.

The index must follow the cache through every write (a regroup of one Service drops or
keeps exactly its slices), and a regroup of a few Services must not walk the whole cache:
at 10,000 Services that walk cost ~5 ms per new Service on the informer's thread (issue 13).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from bgpspeaker.kube import informer as informer_module
from bgpspeaker.kube.informer import ENDPOINT_SLICES, Change, Informer, Resource
from bgpspeaker.metrics import Metrics
from bgpspeaker.views import SERVICE_NAME_LABEL


def endpoint_slice(name: str, service: str, ip: str = "10.1.0.1") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": "default", "labels": {SERVICE_NAME_LABEL: service}},
            "endpoints": [{"addresses": [ip], "nodeName": "node-a", "conditions": {"ready": True}}]}


class FakeAPI:
    """The slices the API holds (name -> object); Listing over it, by label selector."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.lists: list[Optional[str]] = []  # the label selector of each LIST

    def put(self, *objects: dict) -> None:
        for obj in objects:
            self.objects[obj["metadata"]["name"]] = obj

    def listing(self, client, path: str, page_size: int = 500, label_selector: Optional[str] = None):
        api = self

        class Listing:
            resource_version = "1"

            def __iter__(self):
                api.lists.append(label_selector)
                for obj in list(api.objects.values()):
                    labels = obj["metadata"]["labels"]
                    if label_selector is None or f"{SERVICE_NAME_LABEL}={labels[SERVICE_NAME_LABEL]}" == label_selector:
                        yield obj

        return Listing()


@pytest.fixture
def api(monkeypatch) -> FakeAPI:
    fake = FakeAPI()
    monkeypatch.setattr(informer_module, "Listing", fake.listing)
    return fake


class Slices:
    """An EndpointSlice informer that keeps the slices of the Services in `wanted`."""

    def __init__(self, resource: Resource = ENDPOINT_SLICES, wanted=()) -> None:
        self.wanted = set(wanted)
        self.batches: list[list[Change]] = []
        self.informer = Informer(None, resource, lambda name, changes, listed: self.batches.append(changes),
                                 Metrics(), keeps=lambda group: group in self.wanted)

    def regroup(self, *services: str) -> list[Change]:
        """What the thread does when regroup() was asked: the changes it delivers."""
        before = len(self.batches)
        self.informer.regroup(services)
        self.informer._do_regroup()
        return [c for batch in self.batches[before:] for c in batch]

    def event(self, kind: str, obj: dict) -> None:
        self.informer._handle({"type": kind, "object": obj})

    def cached(self) -> dict[str, str]:
        """slice key -> its Service's key, as cached; and the index must say the same."""
        cache = self.informer._cache
        by_group: dict[str, set[str]] = {}
        for key, view in cache.items():
            by_group.setdefault(view.service_key, set()).add(key)
        # one key as itself, several as a set (bgpspeaker/keyindex.py)
        assert self.informer._members == {g: keys if len(keys) > 1 else next(iter(keys)) for g, keys in by_group.items()}
        return {key: view.service_key for key, view in cache.items()}


def test_a_regroup_of_one_service_drops_and_keeps_exactly_its_slices(api):
    api.put(endpoint_slice("web-1", "web"), endpoint_slice("web-2", "web"), endpoint_slice("api-1", "api"),
            endpoint_slice("db-1", "db"), endpoint_slice("old-1", "old"))
    s = Slices(wanted={"default/web", "default/api", "default/db", "default/old"})
    s.informer._relist()
    assert s.cached() == {"default/web-1": "default/web", "default/web-2": "default/web",
                          "default/api-1": "default/api", "default/db-1": "default/db", "default/old-1": "default/old"}

    # A relist replaces the cache whole: old-1 moves to api, db-1 is gone.
    api.put(endpoint_slice("old-1", "api"))
    del api.objects["db-1"]
    s.informer._relist()
    assert s.cached() == {"default/web-1": "default/web", "default/web-2": "default/web",
                          "default/api-1": "default/api", "default/old-1": "default/api"}

    # Watch events: web-2 moves from web to api, a new api-2, web-1 deleted and re-added.
    api.put(endpoint_slice("web-2", "api"), endpoint_slice("api-2", "api"))
    s.event("MODIFIED", api.objects["web-2"])
    s.event("ADDED", api.objects["api-2"])
    s.event("DELETED", api.objects["web-1"])
    s.event("ADDED", endpoint_slice("web-1", "web", ip="10.1.0.7"))
    api.put(endpoint_slice("web-1", "web", ip="10.1.0.7"))
    assert s.cached() == {"default/web-1": "default/web", "default/web-2": "default/api",
                          "default/api-1": "default/api", "default/old-1": "default/api", "default/api-2": "default/api"}

    # api is not ours any more: its four slices go, web's one stays.
    s.wanted.discard("default/api")
    assert sorted(s.regroup("default/api")) == [("default/api-1", None), ("default/api-2", None),
                                                 ("default/old-1", None), ("default/web-2", None)]
    assert s.cached() == {"default/web-1": "default/web"}

    # ... and ours again: its slices, listed alone by their label; a regroup of web (still
    # ours) drops what the API no longer has.
    s.wanted.add("default/api")
    del api.objects["web-1"]
    changes = s.regroup("default/api", "default/web")
    assert sorted(key for key, view in changes if view is not None) == ["default/api-1", "default/api-2",
                                                                        "default/old-1", "default/web-2"]
    assert [key for key, view in changes if view is None] == ["default/web-1"]
    assert api.lists[-2:] == [f"{SERVICE_NAME_LABEL}=api", f"{SERVICE_NAME_LABEL}=web"]
    assert s.cached() == {"default/api-1": "default/api", "default/api-2": "default/api",
                          "default/old-1": "default/api", "default/web-2": "default/api"}

    # A watch event moving a slice to a Service we do not keep drops it, from the index too.
    api.put(endpoint_slice("web-2", "other"))
    s.event("MODIFIED", api.objects["web-2"])
    assert "default/web-2" not in s.cached()
    assert s.regroup("default/api") == []  # listed again, nothing changed


def test_regrouping_one_service_looks_at_its_slices_only(api):
    """O(members), not O(cache): counted in calls of the group function, not in time.
    Fails on a regroup that walks the whole cache (1,000 calls)."""
    calls = [0]

    def counting(view) -> str:
        calls[0] += 1
        return ENDPOINT_SLICES.group(view)

    n = 1000
    api.put(*(endpoint_slice(f"s{i}-1", f"s{i}") for i in range(n)))
    s = Slices(dataclasses.replace(ENDPOINT_SLICES, group=counting), wanted={f"default/s{i}" for i in range(n)})
    s.informer._relist()
    assert len(s.cached()) == n

    calls[0] = 0
    s.wanted.discard("default/s7")  # one Service not ours any more
    assert s.regroup("default/s7") == [("default/s7-1", None)]
    assert calls[0] <= 5

    calls[0] = 0
    s.wanted.add("default/s7")  # ... and ours again: one LIST of its one slice
    assert [key for key, _ in s.regroup("default/s7")] == ["default/s7-1"]
    assert calls[0] <= 5
    assert len(s.cached()) == n


def test_a_services_cache_key_is_the_one_string_of_its_identity():
    """The Services' cache keys are model.service_key's interned strings: the planner, the
    allocator's memo and the slices' index keep the very same object, not one each."""
    from bgpspeaker import views
    from bgpspeaker.kube.informer import SERVICES
    from bgpspeaker.model import service_key

    obj = {"metadata": {"namespace": "default", "name": "web"}, "spec": {"type": "LoadBalancer"}}
    key = SERVICES.key(obj)
    assert key == "default/web" and key is service_key("default", "web") is views.service_from_dict(obj).key
    assert ENDPOINT_SLICES.key({"metadata": {"namespace": "default", "name": "web-1"}}) == "default/web-1"
