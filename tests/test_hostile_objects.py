"""Issue 14: a tenant's object must not grow every speaker's memory or flood its logs and Events.

The informer's cache holds views (views.py): a view keeps only the annotations bgpspeaker
reads, values capped; the planner lists the first few problems of an annotation, then
how many more.
"""

from __future__ import annotations

import ipaddress
import json
import sys

import pytest

from bgpspeaker.annotations import COMMUNITIES_ANNOTATION, MAX_VALUE_CHARS, READ_ANNOTATIONS
from bgpspeaker.config.schema import PoolConfig
from bgpspeaker.kube.client import iter_list_items, page_items
from bgpspeaker.planner import MAX_WARNINGS, service_communities
from bgpspeaker.views import service_from_dict


def service(annotations: dict) -> dict:
    return {"kind": "Service", "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": {"type": "ClusterIP"}}


def test_a_view_keeps_only_the_annotations_we_read():
    big = "x" * 250_000
    view = service_from_dict(service({
        "kubectl.kubernetes.io/last-applied-configuration": big, "example.com/notes": big,
        "bgpspeaker.io/cluster-preference": "east,west", "metallb.io/address-pool": "public",
        "metallb.universe.tf/allow-shared-ip": "k", "bgpspeaker.io/some-future-key": "v"}))
    assert dict(view.annotations) == {"bgpspeaker.io/cluster-preference": "east,west",
                                      "metallb.io/address-pool": "public", "metallb.universe.tf/allow-shared-ip": "k",
                                      "bgpspeaker.io/some-future-key": "v"}
    assert sum(sys.getsizeof(v) for _, v in view.annotations) < 1000


def test_every_annotation_the_code_reads_is_kept():
    import bgpspeaker.annotations as names
    read = {value for name, value in vars(names).items() if name.endswith("_ANNOTATION") and isinstance(value, str)}
    read |= {v for name, value in vars(names).items() if name.endswith("_ANNOTATIONS") for v in value}
    assert read <= READ_ANNOTATIONS | {k for k in read if k.startswith("bgpspeaker.io/")}
    assert {"metallb.io/loadBalancerIPs", "metallb.universe.tf/address-pool"} <= READ_ANNOTATIONS


def test_an_overlong_value_of_ours_is_a_short_placeholder_the_planner_refuses():
    communities = ",".join(f"64512:{i}" for i in range(20_000))
    assert len(communities) > MAX_VALUE_CHARS
    view = service_from_dict(service({COMMUNITIES_ANNOTATION: communities}))
    value = dict(view.annotations)[COMMUNITIES_ANNOTATION]
    assert len(value) < 100 and str(len(communities)) in value
    pool = PoolConfig("public", (ipaddress.ip_network("203.0.113.0/28"),))
    allowed, warnings = service_communities(view, pool)
    assert allowed == () and len(warnings) == 1


def test_warnings_are_capped_per_service():
    """20,000 communities the pool does not allow: the first few, then "N more"."""
    communities = ",".join(f"64512:{i}" for i in range(400))  # under the value cap, still hundreds
    view = service_from_dict(service({COMMUNITIES_ANNOTATION: communities}))
    pool = PoolConfig("public", (ipaddress.ip_network("203.0.113.0/28"),))
    _, warnings = service_communities(view, pool)
    assert len(warnings) == MAX_WARNINGS + 1
    assert "64512:0 is not in pool" in warnings[0][1]
    assert warnings[-1][1] == (f"annotation {COMMUNITIES_ANNOTATION}: {400 - MAX_WARNINGS} more items not added "
                               f"(only the first {MAX_WARNINGS} problems are listed)")


def _list_text(items: list, **rest) -> bytes:
    return json.dumps({"kind": "ServiceList", "apiVersion": "v1", **rest, "items": items},
                      ensure_ascii=False).encode()


def _cut(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100, 4096, 1 << 20])
def test_a_list_is_parsed_as_it_streams_whatever_the_chunks(size):
    # Multi-byte UTF-8 and numbers cut by a chunk's end; metadata before and after the items.
    items = [{"metadata": {"name": f"é{i}", "annotations": {"x": "ü" * (i * 31)}}, "n": 10 ** i, "f": 1.5e3,
              "t": True, "z": None} for i in range(12)]
    for text in (_list_text(items, metadata={"resourceVersion": "12", "continue": "c"}),
                 _list_text(items)[:-1] + b', "metadata": {"resourceVersion": "13"}, "count": 12345}'):
        # streamed, and (page_items) parsed whole when small or streamed when not
        for parse in (iter_list_items, page_items, lambda chunks, rest: page_items(chunks, rest, whole=size)):
            rest: dict = {}
            assert list(parse(_cut(text, size), rest)) == items
            assert rest["kind"] == "ServiceList" and rest["metadata"]["resourceVersion"] in ("12", "13")
    for empty in (b'{"items": []}', b'{"items": null, "metadata": {}}', b"{}", b' { "items" : [ ] } '):
        assert list(iter_list_items(_cut(empty, size), {})) == []
        assert list(page_items(_cut(empty, size), {})) == []


def test_a_list_stream_holds_one_object_not_the_page():
    # A page of 250 KB objects: the first object comes out once its own bytes have been
    # read, long before the page's end (a page read whole would read every chunk first).
    blob = "x" * 250_000
    text = _list_text([{"metadata": {"name": f"s{i}"}, "note": blob} for i in range(40)])
    read = []

    def chunks():
        for chunk in _cut(text, 64 << 10):
            read.append(len(chunk))
            yield chunk

    items = page_items(chunks(), {}, whole=1 << 20)
    assert next(items)["metadata"]["name"] == "s0"
    assert sum(read) < (1 << 20) + 2 * len(blob) < len(text) / 5


def test_a_malformed_list_is_not_read_to_its_end(monkeypatch):
    import bgpspeaker.kube.client as client
    monkeypatch.setattr(client, "MAX_VALUE_CHARS", 1000)
    read = []

    def chunks():
        yield b'{"items": [{"a": ]'  # broken at once; a 200 MB page follows
        for _ in range(200_000):
            read.append(1)
            yield b" " * 1000

    with pytest.raises(ValueError, match="no value parses in 1000 characters"):
        list(iter_list_items(chunks(), {}))
    assert len(read) <= 2


@pytest.mark.parametrize("text", [b'{"items": [{"a": 1}', b'{"items": [{"a": 1} {"b": 2}]}', b"[1, 2]",
                                  b'{"items": [{"a": tru}]}', b""])
def test_a_malformed_list_is_a_clear_error(text):
    with pytest.raises(ValueError):
        list(iter_list_items(_cut(text, 3), {}))
    with pytest.raises(ValueError):
        list(page_items(_cut(text, 3), {}))



# ---- the EndpointSlices cache keeps only the slices of Services we may announce -------------

def _services(**types: str) -> dict:
    from bgpspeaker.views import service_from_dict as parse
    return {f"shop/{name}": parse({"metadata": {"name": name, "namespace": "shop"}, "spec": {"type": type_}})
            for name, type_ in types.items()}


def test_the_announced_services_are_the_managed_ones_updated_by_what_changed():
    from bgpspeaker.allocator import is_managed
    from bgpspeaker.config.schema import ClusterConfig, Config, SpeakerConfig
    from bgpspeaker.kube.watcher import announced_services, came_and_went

    cfg = Config(cluster=ClusterConfig("east"), speaker=SpeakerConfig(my_asn=64512), pools=())
    managed = lambda s: is_managed(cfg, s)  # noqa: E731
    services = _services(web="LoadBalancer", db="ClusterIP", api="LoadBalancer")
    wanted = announced_services(services, managed)
    assert wanted == {"shop/web", "shop/api"}
    # db turned LoadBalancer, api deleted, web unchanged but listed as changed
    services.update(_services(db="LoadBalancer"))
    del services["shop/api"]
    assert came_and_went(services, managed, ["shop/db", "shop/api", "shop/web"], wanted) == ({"shop/db"}, {"shop/api"})
    assert came_and_went(services, managed, ["shop/web"], wanted) == (set(), set())
    # another class's LoadBalancer is not ours
    services.update({"shop/gold": service_from_dict({"metadata": {"name": "gold", "namespace": "shop"},
                                                     "spec": {"type": "LoadBalancer", "loadBalancerClass": "x"}})})
    assert came_and_went(services, managed, ["shop/gold"], wanted) == (set(), set())


def test_slices_are_kept_for_every_service_until_the_services_are_listed_then_only_for_the_announced():
    from bgpspeaker.kube.watcher import slices_kept
    assert slices_kept("shop/db", None)
    assert not slices_kept("shop/db", {"shop/web"})
    assert slices_kept("shop/web", {"shop/web"})
